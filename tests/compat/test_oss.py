"""The official OSS SDKs (oss2, signature V1; alibabacloud-oss-v2, signature V4) against a
running cluster's OSS, with STS credentials an instance reads from its metadata view (through
the credentials SDK, ``proxy=`` the instance's listener: never the real 100.100.100.200)."""

from __future__ import annotations

import datetime
import hashlib
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

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
    got = bucket.get_object("dir/a.txt")
    assert got.read() == b"0123456789" and len(got.request_id) == 24  # a streamed answer carries its request id too
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


def test_v4_requests_verified_locally_see_every_policy_change_at_once(target, instance_role) -> None:  # noqa: ANN001
    """OSS verifies V4 signatures itself (with keys STS derived) and decides from its cache: no
    bus round trip per request. It still sees each change on the very next request because RAM
    answers a change only after OSS acknowledged its event (OSS watches RAM's decisions)."""
    role, creds = instance_role
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
    client = v2_client(target, FromMetadataV2(creds))
    name = unique("watch-")
    client.put_bucket(ossv2.PutBucketRequest(bucket=name))
    client.put_object(ossv2.PutObjectRequest(bucket=name, key="k", body=b"v"))
    logs = Path(target.state_dir) / "logs"
    wait_until(lambda: "watching_decisions" in (logs / "oss.log").read_text(), what="OSS watching RAM's decisions")
    for _ in range(10):
        ram_call(target, "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
        with pytest.raises(ossv2.exceptions.OperationError) as denied:
            client.get_object(ossv2.GetObjectRequest(bucket=name, key="k"))
        assert denied.value.unwrap().code == "AccessDenied"
        ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)
        assert client.get_object(ossv2.GetObjectRequest(bucket=name, key="k")).body.read() == b"v"
    assert "watcher_dropped" not in (logs / "ram.log").read_text()  # every change was acknowledged in time
    ram_call(target, "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunOSSFullAccess", RoleName=role)


def test_tampered_signatures_and_bad_credentials_are_refused(target) -> None:  # noqa: ANN001
    name = root_bucket(target).bucket_name
    wrong = oss2.Bucket(oss2.Auth(target.access_key_id, target.access_key_secret + "x"), target.oss_url, name)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as v1:
        wrong.list_objects()
    shown = v1.value.details  # what OSS signed, as oss2 surfaces it: a wrong secret, not a changed request
    assert v1.value.status == 403 and v1.value.ec == "0002-00000040" and shown["OSSAccessKeyId"] == target.access_key_id
    assert shown["StringToSign"].startswith("GET\n") and shown["StringToSign"].endswith(f"/{name}/")
    assert bytes.fromhex(shown["StringToSignBytes"]).decode() == shown["StringToSign"] and shown["SignatureProvided"]
    assert shown["RecommendDoc"].endswith("0002-00000040") and shown["RequestId"] == v1.value.request_id
    wrong4 = oss2.Bucket(oss2.AuthV4(target.access_key_id, target.access_key_secret + "x"), target.oss_url, name,
                         region=target.region_id)
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch) as v4_oss2:
        wrong4.list_objects()
    assert v4_oss2.value.details["StringToSign"].startswith("OSS4-HMAC-SHA256\n") and v4_oss2.value.ec == "0002-00000201"
    assert v4_oss2.value.details["CanonicalRequest"].startswith(f"GET\n/{name}/\n")
    unknown = oss2.Bucket(oss2.Auth("LTAI" + "0" * 20, "secret"), target.oss_url, name)
    with pytest.raises(oss2.exceptions.ServerError) as no_key:
        unknown.list_objects()
    assert no_key.value.code == "InvalidAccessKeyId" and no_key.value.status == 403 and no_key.value.ec == "0002-00000902"
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
    refused = v4.value.unwrap()
    assert refused.code == "SignatureDoesNotMatch" and refused.ec == "0002-00000201" and refused.headers["x-oss-ec"] == refused.ec
    assert refused.error_fileds["StringToSign"].startswith("OSS4-HMAC-SHA256\n")
    assert refused.error_fileds["CanonicalRequest"].startswith(f"GET\n/{name}/\n")
    assert refused.error_fileds["OSSAccessKeyId"] == target.access_key_id


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


# -- expiry: STS tokens and presigned URLs -----------------------------------------------------
TIME_SCALE = 120  # simulated seconds per real second: a 900 s STS session ends 7.5 real seconds after it is minted


@pytest.fixture(scope="module")
def fast_clock(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A cluster whose simulated clock runs TIME_SCALE times faster than the wall. Request
    signatures (Date, x-oss-date, presigned Expires) are still checked against the wall clock,
    which the SDKs sign with; STS sessions live and die in simulated time."""
    from tests.e2e.conftest import ramsim_up
    with ramsim_up(tmp_path_factory.mktemp("fastclock"), "--instances", "0", "--time-scale", str(TIME_SCALE)) as (_, path):
        yield cluster.load(path)


def assumed_session(target: cluster.ClusterFile, policy: str, duration: int = 900) -> dict[str, str]:
    """A RAM user allowed sts:AssumeRole mints a session of a role holding ``policy``, through the gateway."""
    import json as _json
    user, role = unique("reader-"), unique("Readable")
    ram_call(target, "CreateUser", UserName=user)
    ram_call(target, "AttachPolicyToUser", PolicyType="System", PolicyName="AliyunSTSAssumeRoleAccess", UserName=user)
    key = ram_call(target, "CreateAccessKey", UserName=user)["AccessKey"]
    trust = _json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"RAM": [f"acs:ram::{target.account_id}:root"]}}]})
    ram_call(target, "CreateRole", RoleName=role, AssumeRolePolicyDocument=trust)
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName=policy, RoleName=role)
    answer = api.call(target.gateway_url, "sts", "AssumeRole",
                      {"RoleArn": f"acs:ram::{target.account_id}:role/{role}", "RoleSessionName": "reader",
                       "DurationSeconds": str(duration)},
                      api.Credential(key["AccessKeyId"], key["AccessKeySecret"]))
    return answer["Credentials"]


def _refusal(fn) -> str:  # noqa: ANN001
    """'' when ``fn`` succeeds, else the OSS error code it raised."""
    try:
        fn()
        return ""
    except oss2.exceptions.ServerError as exc:
        return f"{exc.status} {exc.code}"


def test_a_token_past_its_expiry_is_refused(fast_clock) -> None:  # noqa: ANN001
    import time
    name = root_bucket(fast_clock).bucket_name
    oss2.Bucket(oss2.Auth(fast_clock.access_key_id, fast_clock.access_key_secret), fast_clock.oss_url, name).put_object("k", b"v")
    creds = assumed_session(fast_clock, "AliyunOSSReadOnlyAccess")
    minted = time.monotonic()
    bucket = oss2.Bucket(oss2.StsAuth(creds["AccessKeyId"], creds["AccessKeySecret"], creds["SecurityToken"]),
                         fast_clock.oss_url, name)
    assert bucket.get_object("k").read() == b"v"  # valid now
    refused = wait_until(lambda: _refusal(lambda: bucket.get_object("k").read()), timeout=900 / TIME_SCALE + 20,
                         what="the session to expire")
    assert refused == "403 SecurityTokenExpired"
    assert time.monotonic() - minted > 900 / TIME_SCALE - 3  # refused for its expiry, not before
    v2 = v2_client(fast_clock, ossv2.credentials.StaticCredentialsProvider(creds["AccessKeyId"], creds["AccessKeySecret"],
                                                                           creds["SecurityToken"]))
    with pytest.raises(ossv2.exceptions.OperationError) as v4:  # signature V4: the same refusal
        v2.get_object(ossv2.GetObjectRequest(bucket=name, key="k"))
    assert v4.value.unwrap().code == "SecurityTokenExpired" and v4.value.unwrap().status_code == 403


def _fetch(url: str, method: str = "GET", data: bytes | None = None, content_type: str = "") -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    headers = {"Content-Type": content_type} if content_type else {}  # urllib's default for a body is form-encoded
    try:
        with api.opener.open(urllib.request.Request(url, method=method, data=data, headers=headers), timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_v4_presigned_urls_of_oss_v2_work_until_they_expire(target) -> None:  # noqa: ANN001
    bucket = root_bucket(target, "v4sign-")
    bucket.put_object("dir/shared v4.txt", b"v4 presigned body")
    client = v2_client(target, ossv2.credentials.StaticCredentialsProvider(target.access_key_id, target.access_key_secret))
    get = client.presign(ossv2.GetObjectRequest(bucket=bucket.bucket_name, key="dir/shared v4.txt"),
                         expires=datetime.timedelta(seconds=2))
    assert "x-oss-signature-version=OSS4-HMAC-SHA256" in get.url and "x-oss-signature=" in get.url
    assert _fetch(get.url) == (200, b"v4 presigned body")
    put = client.presign(ossv2.PutObjectRequest(bucket=bucket.bucket_name, key="up.txt", content_type="text/plain"),
                         expires=datetime.timedelta(minutes=5))
    assert put.signed_headers.get("Content-Type") == "text/plain"  # a V4 signature covers it: send exactly that
    assert _fetch(put.url, "PUT", b"via a V4 presigned PUT", "text/plain")[0] == 200
    assert bucket.get_object("up.txt").read() == b"via a V4 presigned PUT"
    status, body = _fetch(get.url.replace("shared%20v4.txt", "other.txt"))  # the signature covers the key
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    longer = re.sub(r"x-oss-expires=\d+", "x-oss-expires=3600", get.url)
    assert longer != get.url and _fetch(longer)[0] == 403  # and its own lifetime
    expired = wait_until(lambda: _fetch(get.url)[0] == 403 and _fetch(get.url), timeout=10, what="the URL to expire")
    doc = ET.fromstring(expired[1])
    assert (doc.findtext("Code"), doc.findtext("Message"), doc.findtext("EC")) == ("AccessDenied", "Request has expired.", "0002-00000069")
    signed_at = datetime.datetime.strptime(re.search(r"x-oss-date=(\w+)", get.url).group(1), "%Y%m%dT%H%M%SZ")
    lifetime = datetime.timedelta(seconds=int(re.search(r"x-oss-expires=(\d+)", get.url).group(1)))
    assert doc.findtext("Expires") == (signed_at + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert doc.findtext("ServerTime") >= doc.findtext("Expires")


def test_presigned_urls_work_until_they_expire(target) -> None:  # noqa: ANN001
    import time
    bucket = root_bucket(target)
    bucket.put_object("shared.txt", b"presigned body")
    lifetime = 3
    signed_at = time.time()
    url = bucket.sign_url("GET", "shared.txt", lifetime)
    put_url = bucket.sign_url("PUT", "uploaded.txt", lifetime, headers={"Content-Type": "text/plain"})
    assert "OSSAccessKeyId=" in url and "Signature=" in url and "Expires=" in url
    assert _fetch(url) == (200, b"presigned body")
    status, _ = _fetch(put_url, "PUT", b"via presigned PUT", "text/plain")
    assert status == 200 and bucket.get_object("uploaded.txt").read() == b"via presigned PUT"
    tampered = url.replace("shared.txt", "uploaded.txt")  # the signature covers the key
    status, body = _fetch(tampered)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    longer = url.replace(f"Expires={int(signed_at) + lifetime}", f"Expires={int(signed_at) + 3600}")  # nor can Expires move
    if longer != url:
        status, body = _fetch(longer)
        assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    status, body = wait_until(lambda: (answer := _fetch(url))[0] != 200 and answer, timeout=lifetime + 10,
                              what="the presigned URL to expire")
    assert time.time() >= signed_at + lifetime - 1
    assert status == 403 and b"<Code>AccessDenied</Code>" in body and b"expired" in body
    with pytest.raises(oss2.exceptions.AccessDenied) as late:  # as oss2 reads it: the URL's expiry and the server's time
        bucket.get_object_with_url(url)
    expires = datetime.datetime.fromtimestamp(int(re.search(r"Expires=(\d+)", url).group(1)), datetime.timezone.utc)
    assert late.value.details["Expires"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ") and late.value.ec == "0002-00000069"
    assert late.value.details["ServerTime"] >= late.value.details["Expires"]
    assert late.value.headers["x-oss-ec"] == "0002-00000069"
    status, body = _fetch(put_url, "PUT", b"too late", "text/plain")
    assert status == 403 and bucket.get_object("uploaded.txt").read() == b"via presigned PUT"


def test_an_instance_sessions_presigned_url_carries_its_token(target, instance_role) -> None:  # noqa: ANN001
    role, creds = instance_role
    ram_call(target, "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunOSSReadOnlyAccess", RoleName=role)
    bucket = root_bucket(target)
    bucket.put_object("k", b"for the instance")
    as_instance = oss2.Bucket(oss2.ProviderAuth(FromMetadata(creds)), target.oss_url, bucket.bucket_name)
    url = as_instance.sign_url("GET", "k", 60)
    assert "security-token=" in url
    assert _fetch(url) == (200, b"for the instance")
    ram_call(target, "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunOSSReadOnlyAccess", RoleName=role)
    status, body = _fetch(url)  # a presigned URL grants no more than its signer holds now
    assert status == 403 and b"<Code>AccessDenied</Code>" in body


# -- bad input on the wire: raw sockets ----------------------------------------------------------
def _signed_head(target: cluster.ClusterFile, method: str, bucket: str, key: str, extra: dict[str, str]) -> bytes:
    """A V1-signed (as the root, by oss2) request head with ``extra`` headers, as raw bytes."""
    req = oss2.http.Request(method, f"{target.oss_url}/{bucket}/{key}", params={}, headers={})
    oss2.Auth(target.access_key_id, target.access_key_secret)._sign_request(req, bucket, key)
    headers = {k: v for k, v in req.headers.items() if k.lower() in ("date", "authorization")}
    lines = [f"{method} /{bucket}/{key} HTTP/1.1", f"Host: {target.oss_url.split('//', 1)[1]}",
             *(f"{k}: {v}" for k, v in {**headers, **extra}.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(target: cluster.ClusterFile, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; read one response, or until the server closes (bounded by the timeout)."""
    import socket
    host, port = target.oss_url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        if half_close:  # the client is gone: the body ends here
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while not _complete(answer) and (chunk := sock.recv(65536)):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def _complete(answer: bytes) -> bool:
    """One whole response (head and Content-Length bytes of body) has arrived."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    return len(body) >= length


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def _serving(bucket: oss2.Bucket) -> list[str]:
    """The service still answers: the bucket's listing (also what the test compares)."""
    return sorted(o.key for o in oss2.ObjectIterator(bucket))


def test_uploads_without_a_length_or_with_a_short_body_leave_nothing(target) -> None:  # noqa: ANN001
    bucket = root_bucket(target, "wire-")
    name = bucket.bucket_name
    bucket.put_object("kept", b"old body")
    before = _serving(bucket)

    # No Content-Length and not chunked: 411 MissingContentLength.
    answer = _exchange(target, _signed_head(target, "PUT", name, "no-length", {"Connection": "close"}))
    assert _status(answer) == 411 and b"<Code>MissingContentLength</Code>" in answer and b"x-oss-request-id" in answer
    # Chunked is how OSS takes a body of unknown length: stored whole.
    answer = _exchange(target, _signed_head(target, "PUT", name, "chunked", {"Transfer-Encoding": "chunked",
                                                                            "Connection": "close"})
                       + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert _status(answer) == 200 and bucket.get_object("chunked").read() == b"hello world"
    bucket.delete_object("chunked")
    # Content-Length 1000, 10 bytes, then the client goes away: no answer is owed, nothing is stored.
    for key in ("short", "kept"):
        answer = _exchange(target, _signed_head(target, "PUT", name, key, {"Content-Length": "1000"}) + b"0123456789",
                           half_close=True)
        assert answer == b"" or _status(answer) == 400, answer[:300]
    # A chunked body cut off inside a chunk: the same.
    answer = _exchange(target, _signed_head(target, "PUT", name, "short-chunked", {"Transfer-Encoding": "chunked"})
                       + b"50\r\nhello", half_close=True)
    assert answer == b"" or _status(answer) == 400, answer[:300]
    for key in ("no-length", "short", "short-chunked"):
        assert not bucket.object_exists(key)
    assert bucket.get_object("kept").read() == b"old body"  # the object a failed upload aimed at is intact
    # A declared length over the limit is refused before any byte of the body.
    answer = _exchange(target, _signed_head(target, "PUT", name, "huge", {"Content-Length": str(65 * 2**20),
                                                                         "Connection": "close"}))
    assert _status(answer) == 400 and b"<Code>EntityTooLarge</Code>" in answer
    # A Content-Length that is not a number never reaches OSS: the HTTP parser answers 400.
    answer = _exchange(target, _signed_head(target, "PUT", name, "nan", {"Content-Length": "ten"}))
    assert _status(answer) == 400
    # A body whose MD5 is not its Content-MD5.
    with pytest.raises(oss2.exceptions.ServerError) as digest:
        bucket.put_object("bad-md5", b"body", headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert digest.value.code == "InvalidDigest" and digest.value.status == 400
    assert not bucket.object_exists("bad-md5")
    assert _serving(bucket) == before == ["kept"]


def test_bad_names_and_malformed_xml_create_nothing(target) -> None:  # noqa: ANN001
    auth = oss2.Auth(target.access_key_id, target.access_key_secret)
    service = oss2.Service(auth, target.oss_url)
    buckets_before = sorted(b.name for b in oss2.BucketIterator(service))
    for bad in ("Bad_Bucket", "ab", "-abc", "abc-", "a" * 64, "a.b", "caf%C3%A9"):  # oss2 refuses these itself: raw
        answer = _exchange(target, _signed_head(target, "PUT", bad, "", {"Content-Length": "0", "Connection": "close"}))
        assert _status(answer) == 400 and b"<Code>InvalidBucketName</Code>" in answer, (bad, answer[-300:])
    malformed = "x" + uuid.uuid4().hex[:8]
    for body in (b"<CreateBucketConfiguration><StorageClass>", b"not xml at all", b"<a></b>"):
        answer = _exchange(target, _signed_head(target, "PUT", malformed, "", {"Content-Length": str(len(body)),
                                                                               "Connection": "close"}) + body)
        assert _status(answer) == 400 and b"<Code>MalformedXML</Code>" in answer, answer[-300:]
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        oss2.Bucket(auth, target.oss_url, malformed).get_bucket_info()
    assert sorted(b.name for b in oss2.BucketIterator(service)) == buckets_before

    bucket = root_bucket(target, "names-")
    longest = "k" * 1023
    bucket.put_object(longest, b"fits")
    for bad in ("k" * 1024, "\u00e9" * 512, "/leading-slash", "ctl\x01char"):
        with pytest.raises(oss2.exceptions.ServerError) as caught:
            bucket.put_object(bad, b"x")
        assert caught.value.code == "InvalidObjectName" and caught.value.status == 400, bad
    assert _serving(bucket) == [longest]
