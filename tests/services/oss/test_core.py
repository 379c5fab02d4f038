"""The OSS core against the official signers: what oss2 and alibabacloud-oss-v2 sign is what
the core rebuilds, so RAM/STS verification (``signing.verify``) accepts it; and the pure
parts (addressing, names, listing, ranges, documents, decisions)."""

from __future__ import annotations

import datetime
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import alibabacloud_oss_v2 as ossv2
import msgspec
import oss2
import pytest
from alibabacloud_oss_v2.signer.v4 import SignerV4
from alibabacloud_oss_v2.types import HttpRequest as V2Request, SigningContext

from protocol.messages import common, ram
from services.oss import core, documents
from services.runtime import signing
from services.runtime.effects import Send

AK, SECRET, TOKEN = "LTAI5tExampleKey", "ExampleSecret0123456789", "CAIS-token/with+chars="
ACCOUNT = "1234567890123456"


def _as_request(method: str, url: str, headers: dict[str, str]) -> core.HttpRequest:
    parts = urllib.parse.urlsplit(url)
    return core.HttpRequest(method=method, host=parts.netloc, raw_path=parts.path or "/", raw_query=parts.query,
                            headers={k.lower(): v for k, v in headers.items()})


def _oss2_signed(auth: object, method: str, bucket: str, key: str, params: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> core.HttpRequest:
    url = f"http://127.0.0.1:9000/{bucket}/{urllib.parse.quote(key)}" if bucket else "http://127.0.0.1:9000/"
    req = oss2.http.Request(method, url, params=params or {}, headers=dict(headers or {}))
    auth._sign_request(req, bucket, key)  # type: ignore[attr-defined]
    query = urllib.parse.urlencode(req.params, quote_via=urllib.parse.quote) if req.params else ""
    return _as_request(method, url + ("?" + query if query else ""), dict(req.headers))


CASES = [
    ("GET", "my-bucket", "dir/a.txt", {}, {}),
    ("PUT", "my-bucket", "dir/中文 key+plus.txt", {}, {"Content-Type": "text/plain", "x-oss-meta-Owner": "me",
                                                       "Content-MD5": "XrY7u+Ae7tCTyyK7j1rNww=="}),
    ("GET", "my-bucket", "", {"bucketInfo": ""}, {}),
    ("GET", "my-bucket", "", {"prefix": "a/b c", "delimiter": "/", "max-keys": "10", "encoding-type": "url"}, {}),
    ("GET", "my-bucket", "", {"list-type": "2", "continuation-token": "abc=="}, {}),
    ("GET", "", "", {}, {}),
    ("HEAD", "my-bucket", "k", {"objectMeta": ""}, {}),
    ("GET", "my-bucket", "k", {"response-content-type": "text/html"}, {"Range": "bytes=0-3"}),
]


@pytest.mark.parametrize("method,bucket,key,params,headers", CASES)
@pytest.mark.parametrize("token", ["", TOKEN])
def test_v1_string_to_sign_matches_oss2(method, bucket, key, params, headers, token) -> None:  # noqa: ANN001
    auth = oss2.StsAuth(AK, SECRET, token) if token else oss2.Auth(AK, SECRET)
    req = _oss2_signed(auth, method, bucket, key, params, headers)
    cred = core.credential(req, bucket or None, key, core.parse_query(req.raw_query), time.time())
    assert isinstance(cred, common.Authenticate), cred
    assert cred.access_key_id == AK and cred.security_token == token and cred.signature_method == signing.OSS_V1
    assert signing.verify(SECRET, cred.string_to_sign, cred.signature, cred.signature_method)
    assert not signing.verify(SECRET + "x", cred.string_to_sign, cred.signature, cred.signature_method)


@pytest.mark.parametrize("method,bucket,key,params,headers", CASES)
def test_v4_string_to_sign_matches_oss2_auth_v4(method, bucket, key, params, headers) -> None:  # noqa: ANN001
    auth = oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider(AK, SECRET, TOKEN))
    url = f"http://127.0.0.1:9000/{bucket}/{urllib.parse.quote(key)}" if bucket else "http://127.0.0.1:9000/"
    req = oss2.http.Request(method, url, params=dict(params), headers=dict(headers), region="cn-hangzhou", product="oss")
    auth._sign_request(req, bucket, key)
    query = "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" if v else urllib.parse.quote(k, safe="")
                     for k, v in req.params.items())
    http = _as_request(method, url + ("?" + query if query else ""), dict(req.headers))
    cred = core.credential(http, bucket or None, key, core.parse_query(http.raw_query), time.time())
    assert isinstance(cred, common.Authenticate), cred
    assert cred.signature_method == signing.OSS_V4 and cred.security_token == TOKEN
    assert signing.verify(SECRET, cred.string_to_sign, cred.signature, cred.signature_method)


@pytest.mark.parametrize("method,bucket,key,params,headers", CASES)
def test_v4_string_to_sign_matches_oss_v2_signer(method, bucket, key, params, headers) -> None:  # noqa: ANN001
    query = "&".join(f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(v, safe='')}" if v else k for k, v in params.items())
    path = f"/{bucket}/{urllib.parse.quote(key)}" if bucket else "/"
    url = "http://127.0.0.1:9000" + path + ("?" + query if query else "")
    request = V2Request(method, url, headers=dict(headers))
    ctx = SigningContext(product="oss", region="cn-hangzhou", bucket=bucket or None, key=key or None, request=request,
                         credentials=ossv2.credentials.Credentials(AK, SECRET, TOKEN))
    SignerV4().sign(ctx)
    http = _as_request(method, request.url, dict(request.headers))
    cred = core.credential(http, bucket or None, key, core.parse_query(http.raw_query), time.time())
    assert isinstance(cred, common.Authenticate), cred
    assert cred.string_to_sign == ctx.string_to_sign
    assert signing.verify(SECRET, cred.string_to_sign, cred.signature, cred.signature_method)


def test_presigned_v1_url_verifies_and_expires() -> None:
    bucket = oss2.Bucket(oss2.StsAuth(AK, SECRET, TOKEN), "http://127.0.0.1:9000", "my-bucket")
    url = bucket.sign_url("GET", "dir/a b.txt", 60)
    http = _as_request("GET", url, {})
    bucket_name, key = core.locate(http.host, http.raw_path)
    cred = core.credential(http, bucket_name, key, core.parse_query(http.raw_query), time.time())
    assert isinstance(cred, common.Authenticate) and cred.security_token == TOKEN
    assert signing.verify(SECRET, cred.string_to_sign, cred.signature, cred.signature_method)
    late = core.credential(http, bucket_name, key, core.parse_query(http.raw_query), time.time() + 120)
    assert isinstance(late, core.OssError) and late.code == "AccessDenied" and "expired" in late.message


def test_presigned_v4_url_verifies_and_expires_and_refuses_what_oss_refuses() -> None:
    import datetime
    cfg = ossv2.config.load_default()
    cfg.credentials_provider = ossv2.credentials.StaticCredentialsProvider(AK, SECRET, TOKEN)
    cfg.region, cfg.endpoint = "cn-hangzhou", "http://127.0.0.1:9000"
    url = ossv2.Client(cfg).presign(ossv2.GetObjectRequest(bucket="my-bucket", key="dir/a b.txt"),
                                    expires=datetime.timedelta(seconds=60)).url
    http = _as_request("GET", url, {})
    bucket_name, key = core.locate(http.host, http.raw_path)

    def cred(raw: str, now: float) -> common.Authenticate | core.OssError:
        changed = _as_request("GET", raw, {})
        return core.credential(changed, bucket_name, key, core.parse_query(changed.raw_query), now)

    found = cred(url, time.time())
    assert isinstance(found, common.Authenticate) and found.security_token == TOKEN and found.access_key_id == AK
    assert signing.verify(SECRET, found.string_to_sign, found.signature, found.signature_method)
    late = cred(url, time.time() + 120)
    assert isinstance(late, core.OssError) and late.code == "AccessDenied" and "expired" in late.message
    forever = cred(re.sub(r"x-oss-expires=\d+", "x-oss-expires=604801", url), time.time())
    assert isinstance(forever, core.OssError) and forever.code == "InvalidArgument"
    future = cred(url, time.time() - 3600)  # signed an hour from now, as this clock sees it
    assert isinstance(future, core.OssError) and future.code == "RequestTimeTooSkewed"


def test_stale_dates_and_anonymous_requests_are_refused() -> None:
    req = _oss2_signed(oss2.Auth(AK, SECRET), "GET", "my-bucket", "k")
    skewed = core.credential(req, "my-bucket", "k", [], time.time() + 3600)
    assert isinstance(skewed, core.OssError) and skewed.code == "RequestTimeTooSkewed" and skewed.status == 403
    anonymous = core.credential(_as_request("GET", "http://h/my-bucket/k", {}), "my-bucket", "k", [], time.time())
    assert isinstance(anonymous, core.OssError) and anonymous.code == "AccessDenied"


def test_v4_scope_is_required_for_a_signature() -> None:
    assert not signing.verify(SECRET, "OSS4-HMAC-SHA256\n20240101T000000Z\nbad\nabc", "", signing.OSS_V4)


def test_addressing_path_and_virtual_host() -> None:
    assert core.locate("127.0.0.1:9000", "/") == (None, "")
    assert core.locate("127.0.0.1:9000", "/b-1/") == ("b-1", "")
    assert core.locate("127.0.0.1:9000", "/b-1/dir/a%20b%2Bc.txt") == ("b-1", "dir/a b+c.txt")
    assert core.locate("localhost:9000", "/b-1/k") == ("b-1", "k")
    assert core.locate("b-1.localhost:9000", "/dir/k") == ("b-1", "dir/k")
    assert core.locate("b-1.oss-cn-hangzhou.aliyuncs.com", "/k") == ("b-1", "k")
    assert core.locate("oss-cn-hangzhou.aliyuncs.com", "/b-1/k") == ("b-1", "k")


@pytest.mark.parametrize("name,ok", [("abc", True), ("a-b-c", True), ("a" * 63, True), ("ab", False), ("a" * 64, False),
                                     ("-abc", False), ("abc-", False), ("ABC", False), ("a_b", False), ("a.b", False)])
def test_bucket_names(name: str, ok: bool) -> None:
    assert (core.bucket_name_error(name) is None) == ok


def test_object_names() -> None:
    assert core.key_error("a/b/c.txt") is None
    assert core.key_error("x" * 1023) is None
    for bad in ("", "x" * 1024, "/abs", "\\abs", "é" * 600):
        problem = core.key_error(bad)
        assert problem is not None and problem.code == "InvalidObjectName"


def test_operations_and_their_actions() -> None:
    def op(method: str, bucket: str | None, key: str = "", query: dict | None = None, headers: dict | None = None):
        return core.operation(method, bucket, key, query or {}, headers or {}, ACCOUNT)

    assert op("GET", None).checks[0] == ram.Check(action="oss:ListBuckets", resource=f"acs:oss:*:{ACCOUNT}:*")
    assert op("GET", "b-1", query={"prefix": "x"}).checks[0].action == "oss:ListObjects"
    assert op("GET", "b-1", query={"list-type": "2"}).name == "ListObjectsV2"
    assert op("GET", "b-1", query={"bucketInfo": ""}).checks[0].action == "oss:GetBucketInfo"
    assert op("PUT", "b-1").name == "PutBucket" and op("DELETE", "b-1").name == "DeleteBucket"
    assert op("HEAD", "b-1", "k").checks[0] == ram.Check(action="oss:GetObject", resource=f"acs:oss:*:{ACCOUNT}:b-1/k")
    assert op("DELETE", "b-1", "k").checks[0].action == "oss:DeleteObject"
    copy = op("PUT", "b-1", "k", headers={"x-oss-copy-source": "/src-b/dir/s%20k"})
    assert copy.name == "CopyObject" and copy.source == ("src-b", "dir/s k")
    assert [c.action for c in copy.checks] == ["oss:GetObject", "oss:PutObject"]
    assert op("PUT", "b-1", query={"acl": ""}).code == "NotImplemented"
    assert op("GET", "Bad_Bucket").code == "InvalidBucketName"
    assert op("POST", None).code == "MethodNotAllowed"


@dataclass
class Row:
    key: str


def _page(keys: list[str], **kw: object) -> core.Page:
    prefix, after = kw.get("prefix", ""), kw.get("after", "")
    rows = [Row(k) for k in sorted(keys) if k > after and k.startswith(prefix)]  # type: ignore[operator]
    return core.list_page(rows, prefix=prefix, delimiter=kw.get("delimiter", ""), after=after,  # type: ignore[arg-type]
                          max_keys=kw.get("max_keys", 100))  # type: ignore[arg-type]


def test_listing_folds_common_prefixes_and_pages() -> None:
    keys = ["a/1", "a/2", "b", "c/x/1", "c/y", "d"]
    page = _page(keys, delimiter="/")
    assert [r.key for r in page.contents] == ["b", "d"] and page.prefixes == ["a/", "c/"] and not page.truncated
    first = _page(keys, delimiter="/", max_keys=2)
    assert first.prefixes == ["a/"] and [r.key for r in first.contents] == ["b"] and first.truncated
    second = _page(keys, delimiter="/", max_keys=2, after=first.next_marker)
    assert second.prefixes == ["c/"] and [r.key for r in second.contents] == ["d"] and not second.truncated
    after_prefix = _page(keys, delimiter="/", after="a/")
    assert after_prefix.prefixes == ["c/"]
    nested = _page(keys, prefix="c/", delimiter="/")
    assert nested.prefixes == ["c/x/"] and [r.key for r in nested.contents] == ["c/y"]


def test_ranges() -> None:
    assert core.byte_range("bytes=0-4", 10, False) == (0, 4)
    assert core.byte_range("bytes=5-", 10, False) == (5, 9)
    assert core.byte_range("bytes=-3", 10, False) == (7, 9)
    assert core.byte_range("bytes=8-100", 10, False) == (8, 9)
    assert core.byte_range("bytes=20-30", 10, False) is None
    assert core.byte_range("bytes=20-30", 10, True).code == "InvalidRange"  # type: ignore[union-attr]
    assert core.byte_range("nonsense", 10, True) is None


def test_error_document_shape() -> None:
    doc = ET.fromstring(documents.error(core.oss_error("NoSuchKey", "The specified key does not exist.", 404, Key="k"),
                                        "ABC", "b.host"))
    assert [c.tag for c in doc] == ["Code", "Message", "RequestId", "HostId", "Key", "EC", "RecommendDoc"]
    assert doc.findtext("Code") == "NoSuchKey" and doc.findtext("RequestId") == "ABC"
    assert doc.findtext("EC") == "0026-00000001"
    assert doc.findtext("RecommendDoc") == "https://api.aliyun.com/troubleshoot?q=0026-00000001"
    undocumented = ET.fromstring(documents.error(core.oss_error("MalformedXML", "m", 400), "ABC", "b.host"))
    assert undocumented.find("EC") is None  # no EC is invented


def test_expired_and_mismatch_documents() -> None:
    doc = ET.fromstring(documents.error(core.expired(1_700_000_000, 1_700_000_061), "ABC", "b.host"))
    assert (doc.findtext("Code"), doc.findtext("Message")) == ("AccessDenied", "Request has expired.")
    assert (doc.findtext("Expires"), doc.findtext("ServerTime")) == ("2023-11-14T22:13:20Z", "2023-11-14T22:14:21Z")
    assert doc.findtext("EC") == core.EC_URL_EXPIRED
    from protocol.errors import error
    v1 = common.Authenticate(access_key_id="LTAIk", signature="c2ln", string_to_sign="GET\n\n\nd\n/b/k",
                             signature_method=signing.OSS_V1)
    problem = core.authentication_error(error("SignatureDoesNotMatch", "m"), core.Call(core.Operation("GetObject"), {}, v1))
    shown = dict(problem.extra)
    assert (shown["OSSAccessKeyId"], shown["SignatureProvided"], shown["StringToSign"]) == ("LTAIk", "c2ln", v1.string_to_sign)
    assert shown["StringToSignBytes"].startswith("47 45 54 0A ") and "CanonicalRequest" not in shown
    assert problem.ec == core.EC_SIGNATURE_V1
    v4 = msgspec.structs.replace(v1, signature_method=signing.OSS_V4)
    problem = core.authentication_error(error("SignatureDoesNotMatch", "m"), core.Call(core.Operation("GetObject"), {}, v4, "GET\n/b/k"))
    assert dict(problem.extra)["CanonicalRequest"] == "GET\n/b/k" and problem.ec == core.EC_SIGNATURE_V4


def test_documents_parse_with_oss2() -> None:
    from oss2 import models, xml_utils

    @dataclass
    class B:
        name: str = "b-1"
        created_at: float = 0.0
        storage_class: str = "Standard"

    @dataclass
    class O:
        key: str
        size: int = 3
        etag: str = "5d41402abc4b2a76b9719d911017c592"
        last_modified: float = 0.0

    info = xml_utils.parse_get_bucket_info(models.GetBucketInfoResult.__new__(models.GetBucketInfoResult),
                                           documents.bucket_info(B(), ACCOUNT, "cn-hangzhou"))
    assert info.name == "b-1" and info.location == "oss-cn-hangzhou" and info.owner.id == ACCOUNT
    page = core.Page(contents=[O("a b/ü")], prefixes=["p q/"])
    listed = models.ListObjectsResult.__new__(models.ListObjectsResult)
    listed.object_list, listed.prefix_list = [], []
    xml_utils.parse_list_objects(listed, documents.list_objects("b-1", page, prefix="", marker="", delimiter="/",
                                                                max_keys=100, url=True, account_id=ACCOUNT))
    assert [o.key for o in listed.object_list] == ["a b/ü"] and listed.prefix_list == ["p q/"]
    assert listed.object_list[0].etag == "5D41402ABC4B2A76B9719D911017C592"


def test_malformed_create_bucket_configuration() -> None:
    assert documents.create_bucket_configuration(b"") == "Standard"
    ok = b"<CreateBucketConfiguration><StorageClass>IA</StorageClass></CreateBucketConfiguration>"
    assert documents.create_bucket_configuration(ok) == "IA"
    bad = documents.create_bucket_configuration(b"<CreateBucketConfiguration><Storage")
    assert isinstance(bad, core.OssError) and bad.code == "MalformedXML" and bad.status == 400


def _principal(kind: str = "AssumedRoleUser", account: str = ACCOUNT) -> common.Principal:
    return common.Principal(identity_type=kind, account_id=account, arn=f"acs:ram::{account}:assumed-role/R/i-1",  # type: ignore[arg-type]
                            principal_id="x", role_name="R")


def _policies(actions: list[str], generation: int) -> ram.GetEffectivePoliciesOk:
    doc = '{"Version":"1","Statement":[{"Effect":"Allow","Action":%s,"Resource":"*"}]}' % str(actions).replace("'", '"')
    return ram.GetEffectivePoliciesOk(policies=[ram.PolicyDocument(name="System:P", version="v1", document=doc)] if actions else [],
                                      generation=generation)


def test_authorization_follows_ram_events() -> None:
    oss = core.OssCore(account_id=ACCOUNT, region_id="cn-hangzhou")
    who = _principal()
    get = (ram.Check(action="oss:GetObject", resource=core.arn(ACCOUNT, "b-1", "k")),)
    put = (ram.Check(action="oss:PutObject", resource=core.arn(ACCOUNT, "b-1", "k")),)
    assert oss.cached(who) is None
    entry = oss.learn(who, _policies(["oss:Get*", "oss:List*"], 5))
    assert oss.authorize(who, entry, get, 0.0).allowed
    denied = oss.authorize(who, entry, put, 0.0)
    assert not denied.allowed and denied.action == "oss:PutObject"
    assert oss.cached(who) is not None
    from protocol.envelope import Envelope
    event = Envelope(src="ram", dest="*", msg_id=1, body=ram.PolicyAttachedToRole(role_name="R", policy_type="System",
                                                                                policy_name="AliyunOSSFullAccess", generation=6))
    assert oss.handle(event, 0.0) == [Send("ram", ram.EventApplied(generation=6))]  # acknowledged to RAM
    assert oss.cached(who) is None  # stale: ask RAM again
    root = _principal("Account")
    assert oss.authorize(root, oss.cached(root), put, 0.0).allowed  # type: ignore[arg-type]
    stranger = _principal("Account", "9999999999999999")
    assert not oss.authorize(stranger, oss.cached(stranger), put, 0.0).allowed  # type: ignore[arg-type]


def test_verifier_and_authentication_errors() -> None:
    from protocol.errors import error
    assert core.verifier("STS.abc") == "sts" and core.verifier("LTAI") == "ram"
    cases = {"InvalidAccessKeyId.NotFound": "InvalidAccessKeyId", "SignatureDoesNotMatch": "SignatureDoesNotMatch",
             "InvalidSecurityToken.Expired": "SecurityTokenExpired", "InvalidSecurityToken.Malformed": "InvalidSecurityToken",
             "MissingSecurityToken": "InvalidSecurityToken"}
    for code, expected in cases.items():
        call = core.Call(core.Operation("GetObject"), {}, common.Authenticate(access_key_id="LTAIk", signature="s", string_to_sign="sts"))
        problem = core.authentication_error(error(code, "m"), call)
        assert problem.code == expected and problem.status == 403


def test_v4_time_parse() -> None:
    stamp = datetime.datetime(2024, 2, 29, 12, 34, 56, tzinfo=datetime.timezone.utc)
    assert core._v4_time(stamp.strftime("%Y%m%dT%H%M%SZ")) == stamp.timestamp()


# -- V4 derived keys: verified once by RAM/STS, then locally -------------------------------------
def _v4_credential(secret: str = SECRET, token: str = TOKEN, key: str = "k.txt") -> common.Authenticate:
    auth = oss2.ProviderAuthV4(oss2.credentials.StaticCredentialsProvider(AK, secret, token))
    url = f"http://127.0.0.1:9000/bkt/{key}"
    req = oss2.http.Request("GET", url, params={}, headers={}, region="cn-hangzhou", product="oss")
    auth._sign_request(req, "bkt", key)
    cred = core.credential(_as_request("GET", url, dict(req.headers)), "bkt", key, {}, time.time())
    assert isinstance(cred, common.Authenticate)
    return cred


PRINCIPAL = common.Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT, arn="arn", principal_id="p", role_name="R")


def _remembered(oss: core.OssCore, cred: common.Authenticate, valid_until: float) -> None:
    scope = signing.oss4_scope(cred.string_to_sign)
    assert scope is not None
    key = signing.oss4_signing_key(SECRET, *scope).hex()
    oss.remember_key(cred, common.AuthenticateOk(principal=PRINCIPAL, signing_key=key, valid_until=valid_until))


def test_a_v4_request_verifies_locally_with_the_scoped_key_it_was_handed() -> None:
    oss = core.OssCore(account_id=ACCOUNT, region_id="cn-hangzhou")
    first = _v4_credential()
    assert oss.verify_locally(first, time.time()) is None  # nothing known yet: ask the verifier
    _remembered(oss, first, time.time() + 3600)
    later = _v4_credential(key="other.txt")  # another request, same session and scope
    assert oss.verify_locally(later, time.time()) == PRINCIPAL
    forged = msgspec.structs.replace(later, signature="0" * 64)
    assert oss.verify_locally(forged, time.time()) is None  # falls back to the verifier, which refuses it
    other_token = _v4_credential(token="another-token")
    assert oss.verify_locally(other_token, time.time()) is None
    assert oss.verify_locally(later, time.time() + 7200) is None  # past the key's validity


def test_a_disabled_access_key_drops_its_derived_keys_at_once() -> None:
    from protocol import topics
    from protocol.envelope import Envelope

    oss = core.OssCore(account_id=ACCOUNT, region_id="cn-hangzhou")
    cred = _v4_credential()
    _remembered(oss, cred, time.time() + 3600)
    event = Envelope(src="ram", dest="*", msg_id=1, body=ram.AccessKeyChanged(access_key_id=AK, user_name="u", status="Inactive",
                                                                              generation=9))
    assert oss.handle(event, time.time()) == [Send("ram", ram.EventApplied(generation=9))]
    assert oss.verify_locally(cred, time.time()) is None
    assert topics.events("ram") in oss.subscriptions()


def test_verifiers_hand_out_scoped_keys_only_to_oss_and_only_for_v4() -> None:
    cred = msgspec.structs.replace(_v4_credential(), want_signing_key=True)
    key, until = signing.scoped_key(SECRET, cred, "oss")
    scope = signing.oss4_scope(cred.string_to_sign)
    assert key == signing.oss4_signing_key(SECRET, *scope).hex() and SECRET not in key  # type: ignore[misc]
    assert until == signing.oss4_scope_end(scope[0])  # type: ignore[index]
    assert signing.scoped_key(SECRET, cred, "gateway") == ("", 0.0)
    assert signing.scoped_key(SECRET, msgspec.structs.replace(cred, want_signing_key=False), "oss") == ("", 0.0)
    assert signing.scoped_key(SECRET, msgspec.structs.replace(cred, signature_method=signing.OSS_V1), "oss") == ("", 0.0)


def test_watching_starts_clean_and_ends_when_ram_drops_us() -> None:
    from protocol.envelope import Envelope
    oss = core.OssCore(account_id=ACCOUNT, region_id="cn-hangzhou")
    who = _principal()
    oss.learn(who, _policies(["oss:Get*"], 5))
    assert not oss.watching
    oss.watched(ram.WatchDecisionsOk(generation=7))
    assert oss.watching and oss.cached(who) is None  # entries from before watching may have missed events
    dropped = Envelope(src="ram", dest="oss", msg_id=2, body=ram.WatchDropped(waited_for=8))
    oss.handle(dropped, 0.0)
    assert not oss.watching
    forged = Envelope(src="gateway", dest="oss", msg_id=3, body=ram.WatchDropped(waited_for=8))
    oss.watched(ram.WatchDecisionsOk(generation=8))
    oss.handle(forged, 0.0)
    assert oss.watching  # only RAM can end it
