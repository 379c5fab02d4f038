"""The official OSS SDKs (oss2, signature V1; alibabacloud-oss-v2, signature V4) against a
running cluster's OSS, with STS credentials an instance reads from its metadata view (through
the credentials SDK, ``proxy=`` the instance's listener: never the real 100.100.100.200)."""

from __future__ import annotations

import hashlib
import uuid

import alibabacloud_oss_v2 as ossv2
import oss2
import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.models import Config as CredConfig

from services.cli import api, cluster
from tests.compat.conftest import ECS_TRUST
from tests.compat.test_sdks import metadata_proxy
from tests.e2e.conftest import wait_until


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def root(target: cluster.ClusterFile) -> api.Credential:
    return api.Credential(target.access_key_id, target.access_key_secret)


def ram_call(target: cluster.ClusterFile, action: str, **params: str) -> dict:
    return api.call(target.gateway_url, "ram", action, params, root(target))


class FromMetadata(oss2.credentials.CredentialsProvider):
    """oss2 credentials from the credentials SDK's ECS RAM role provider."""

    def __init__(self, client: CredClient) -> None:
        self.client = client

    def get_credentials(self) -> oss2.credentials.Credentials:
        c = self.client.get_credential()
        return oss2.credentials.Credentials(c.access_key_id, c.access_key_secret, c.security_token)


class FromMetadataV2(ossv2.credentials.CredentialsProvider):
    def __init__(self, client: CredClient) -> None:
        self.client = client

    def get_credentials(self) -> ossv2.credentials.Credentials:
        c = self.client.get_credential()
        return ossv2.credentials.Credentials(c.access_key_id, c.access_key_secret, c.security_token)


@pytest.fixture
def instance_role(target, imds_allowed) -> tuple[str, CredClient]:  # noqa: ANN001
    """A role trusting ECS with no policy, on a fresh instance; its credentials client."""
    role = unique("OssRole")
    ram_call(target, "CreateRole", RoleName=role, AssumeRolePolicyDocument=ECS_TRUST)
    launched = api.call(target.gateway_url, "ecs", "RunInstances", {"RegionId": target.region_id, "RamRoleName": role,
                                                                    "Amount": "1"}, root(target))
    proxy = metadata_proxy(target, launched["InstanceIdSets"]["InstanceIdSet"][0])
    client = CredClient(CredConfig(type="ecs_ram_role", role_name=role, proxy=proxy))
    wait_until(lambda: _try(client.get_credential), what="credentials from metadata")
    return role, client


def _try(fn):  # noqa: ANN001, ANN202
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def root_bucket(target: cluster.ClusterFile, prefix: str = "compat-") -> oss2.Bucket:
    bucket = oss2.Bucket(oss2.Auth(target.access_key_id, target.access_key_secret), target.oss_url, unique(prefix))
    bucket.create_bucket()
    return bucket


def v2_client(target: cluster.ClusterFile, provider: ossv2.credentials.CredentialsProvider) -> ossv2.Client:
    cfg = ossv2.config.load_default()
    cfg.credentials_provider = provider
    cfg.region = target.region_id
    cfg.endpoint = target.oss_url
    return ossv2.Client(cfg)


def test_oss2_with_instance_credentials_follows_policy_changes(target, instance_role) -> None:  # noqa: ANN001
    role, creds = instance_role
    name = root_bucket(target).bucket_name
    bucket = oss2.Bucket(oss2.ProviderAuth(FromMetadata(creds)), target.oss_url, name)
    with pytest.raises(oss2.exceptions.AccessDenied) as denied:
        bucket.put_object("a.txt", b"nope")
    assert denied.value.status == 403 and denied.value.request_id
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSReadOnlyAccess", RoleName=role)
    assert bucket.list_objects().object_list == []  # allowed at once
    with pytest.raises(oss2.exceptions.AccessDenied):
        bucket.put_object("a.txt", b"still no")
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
    assert bucket.put_object("dir/a.txt", b"0123456789").etag == "781E5E245D69B566979B86E28D23F2C7"
    bucket.put_object("dir/b.txt", b"b")
    bucket.put_object("top.txt", b"t")
    assert bucket.get_object("dir/a.txt").read() == b"0123456789"
    assert bucket.get_object("dir/a.txt", byte_range=(2, 5)).read() == b"2345"
    assert bucket.head_object("dir/a.txt").content_length == 10
    listed = bucket.list_objects(delimiter="/")
    assert [o.key for o in listed.object_list] == ["top.txt"] and listed.prefix_list == ["dir/"]
    assert [o.key for o in oss2.ObjectIterator(bucket, prefix="dir/", max_keys=1)] == ["dir/a.txt", "dir/b.txt"]
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, max_keys=2)] == ["dir/a.txt", "dir/b.txt", "top.txt"]
    bucket.copy_object(name, "dir/a.txt", "copy.txt")
    assert bucket.get_object("copy.txt").read() == b"0123456789"
    assert bucket.get_bucket_info().name == name
    bucket.delete_object("copy.txt")
    with pytest.raises(oss2.exceptions.NoSuchKey) as missing:
        bucket.get_object("copy.txt")
    assert missing.value.status == 404 and missing.value.code == "NoSuchKey"
    ram_call(target, "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
    with pytest.raises(oss2.exceptions.AccessDenied):
        bucket.delete_object("top.txt")  # denied at once
    assert bucket.get_object("top.txt").read() == b"t"  # read-only still applies


def test_oss_v2_with_instance_credentials(target, instance_role) -> None:  # noqa: ANN001
    role, creds = instance_role
    client = v2_client(target, FromMetadataV2(creds))
    name = unique("v2-")
    with pytest.raises(ossv2.exceptions.OperationError) as denied:
        client.put_bucket(ossv2.PutBucketRequest(bucket=name))
    assert denied.value.unwrap().code == "AccessDenied" and denied.value.unwrap().status_code == 403
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
    client.put_bucket(ossv2.PutBucketRequest(bucket=name))
    assert name in [b.name for b in client.list_buckets(ossv2.ListBucketsRequest()).buckets]
    put = client.put_object(ossv2.PutObjectRequest(bucket=name, key="dir/x y+z.txt", body=b"hello v2"))
    assert put.etag == '"%s"' % hashlib.md5(b"hello v2").hexdigest().upper()
    got = client.get_object(ossv2.GetObjectRequest(bucket=name, key="dir/x y+z.txt"))
    assert got.body.read() == b"hello v2"
    part = client.get_object(ossv2.GetObjectRequest(bucket=name, key="dir/x y+z.txt", range_header="bytes=6-"))
    assert part.body.read() == b"v2" and part.status_code == 206
    assert client.head_object(ossv2.HeadObjectRequest(bucket=name, key="dir/x y+z.txt")).content_length == 8
    v2 = client.list_objects_v2(ossv2.ListObjectsV2Request(bucket=name, prefix="dir/"))
    assert [o.key for o in v2.contents] == ["dir/x y+z.txt"]
    v1 = client.list_objects(ossv2.ListObjectsRequest(bucket=name, delimiter="/"))
    assert [p.prefix for p in v1.common_prefixes] == ["dir/"]
    assert client.get_bucket_info(ossv2.GetBucketInfoRequest(bucket=name)).bucket_info.name == name
    client.copy_object(ossv2.CopyObjectRequest(bucket=name, key="c", source_bucket=name, source_key="dir/x y+z.txt"))
    with pytest.raises(ossv2.exceptions.OperationError) as not_empty:
        client.delete_bucket(ossv2.DeleteBucketRequest(bucket=name))
    assert not_empty.value.unwrap().code == "BucketNotEmpty" and not_empty.value.unwrap().status_code == 409
    for key in ("c", "dir/x y+z.txt"):
        client.delete_object(ossv2.DeleteObjectRequest(bucket=name, key=key))
    with pytest.raises(ossv2.exceptions.OperationError) as missing:
        client.get_object(ossv2.GetObjectRequest(bucket=name, key="c"))
    assert missing.value.unwrap().code == "NoSuchKey" and missing.value.unwrap().status_code == 404
    client.delete_bucket(ossv2.DeleteBucketRequest(bucket=name))
    with pytest.raises(ossv2.exceptions.OperationError) as gone:
        client.get_bucket_info(ossv2.GetBucketInfoRequest(bucket=name))
    assert gone.value.unwrap().code == "NoSuchBucket"


def test_tampered_signatures_and_bad_credentials_are_refused(target) -> None:  # noqa: ANN001
    name = root_bucket(target).bucket_name
    wrong = oss2.Bucket(oss2.Auth(target.access_key_id, target.access_key_secret + "x"), target.oss_url, name)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as v1:
        wrong.list_objects()
    assert v1.value.status == 403
    wrong4 = oss2.Bucket(oss2.AuthV4(target.access_key_id, target.access_key_secret + "x"), target.oss_url, name,
                         region=target.region_id)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        wrong4.list_objects()
    unknown = oss2.Bucket(oss2.Auth("LTAI" + "0" * 20, "secret"), target.oss_url, name)
    with pytest.raises(oss2.exceptions.ServerError) as no_key:
        unknown.list_objects()
    assert no_key.value.code == "InvalidAccessKeyId" and no_key.value.status == 403
    forged = oss2.Bucket(oss2.StsAuth("STS." + "A" * 20, "secret", "CAISforged"), target.oss_url, name)
    with pytest.raises(oss2.exceptions.ServerError) as token:
        forged.list_objects()
    assert token.value.code == "InvalidSecurityToken" and token.value.status == 403
    # A valid request whose signature was changed in transit.
    req = oss2.http.Request("GET", f"{target.oss_url}/{name}/", params={}, headers={})
    oss2.Auth(target.access_key_id, target.access_key_secret)._sign_request(req, name, "")
    good = oss2.http.Session().do_request(req, timeout=5)
    assert good.status == 200
    req.headers["authorization"] = req.headers["authorization"][:-2] + ("AA" if not req.headers["authorization"].endswith("AA") else "BB")
    assert oss2.http.Session().do_request(req, timeout=5).status == 403
    v2 = v2_client(target, ossv2.credentials.StaticCredentialsProvider(target.access_key_id, target.access_key_secret + "x"))
    with pytest.raises(ossv2.exceptions.OperationError) as v4:
        v2.list_objects_v2(ossv2.ListObjectsV2Request(bucket=name))
    assert v4.value.unwrap().code == "SignatureDoesNotMatch"


def test_bad_names_missing_objects_and_malformed_xml(target) -> None:  # noqa: ANN001
    auth = oss2.Auth(target.access_key_id, target.access_key_secret)
    session = oss2.http.Session()

    def raw(method: str, bucket: str, key: str = "", data: bytes | None = None) -> tuple[int, str]:
        req = oss2.http.Request(method, f"{target.oss_url}/{bucket}/{key}", data=data, params={}, headers={})
        auth._sign_request(req, bucket, key)
        resp = session.do_request(req, timeout=5)
        body = resp.read().decode()
        return resp.status, body

    for bad in ("Bad_Bucket", "ab", "-abc", "a" * 64):
        status, body = raw("PUT", bad)
        assert status == 400 and "<Code>InvalidBucketName</Code>" in body, (bad, body)
    status, body = raw("PUT", "x" + uuid.uuid4().hex[:8], data=b"<CreateBucketConfiguration><StorageClass>")
    assert status == 400 and "<Code>MalformedXML</Code>" in body
    status, body = raw("GET", "no-such-bucket-" + uuid.uuid4().hex[:8], "k")
    assert status == 404 and "<Code>NoSuchBucket</Code>" in body and "<RequestId>" in body
    name = root_bucket(target).bucket_name
    status, body = raw("PUT", name, "k" * 1024, data=b"x")
    assert status == 400 and "<Code>InvalidObjectName</Code>" in body
    status, body = raw("GET", name, "missing")
    assert status == 404 and "<Code>NoSuchKey</Code>" in body
    with pytest.raises(oss2.exceptions.ServerError) as dup:
        oss2.Bucket(auth, target.oss_url, name).create_bucket()
    assert dup.value.status == 409
