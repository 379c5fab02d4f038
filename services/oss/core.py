"""Pure core: the OSS service's decisions: which bucket and object a request names, which
``oss:<Action>`` it is, what its signature signed, and whether the caller may do it.

A request is addressed path-style (``/<bucket>/<key>``; both official SDKs use it for an IP
or ``localhost`` endpoint) or virtual-hosted (``Host: <bucket>.<endpoint>``). It is signed
with OSS signature V1 (``Authorization: OSS <AccessKeyId>:<base64 HMAC-SHA1>``, or as the
``OSSAccessKeyId``/``Expires``/``Signature`` query of a presigned URL) or V4
(``Authorization: OSS4-HMAC-SHA256 Credential=<AK>/<date>/<region>/oss/aliyun_v4_request,...``).
The core builds the string to sign exactly as oss2 and alibabacloud-oss-v2 do; RAM or STS (who
hold the secrets) verify it. Decisions use the effective-policy cache
(:class:`services.ram.cache.PolicyCache`), which every RAM event invalidates.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from protocol import topics
from protocol.envelope import Envelope
from protocol.errors import Error
from protocol.messages import common, ram
from protocol.times import iso
from services.ram.cache import Entry, PolicyCache
from services.runtime import signing
from services.runtime.effects import Effect, Log, Send

NAME = "oss"
MAX_SKEW = 15 * 60
MAX_KEY_BYTES = 1023
MAX_OBJECT_SIZE = 64 * 1024 * 1024
MAX_META_BYTES = 8 * 1024
MAX_LIST_KEYS = 1000
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# What oss2 puts in the V1 canonicalized resource when present in the query (oss2/auth.py).
SUBRESOURCES = frozenset([
    'response-content-type', 'response-content-language', 'response-cache-control', 'logging',
    'response-content-encoding', 'acl', 'uploadId', 'uploads', 'partNumber', 'group', 'link', 'delete', 'website',
    'location', 'objectInfo', 'objectMeta', 'response-expires', 'response-content-disposition', 'cors', 'lifecycle',
    'restore', 'qos', 'referer', 'stat', 'bucketInfo', 'append', 'position', 'security-token', 'live', 'comp', 'status',
    'vod', 'startTime', 'endTime', 'x-oss-process', 'symlink', 'callback', 'callback-var', 'tagging', 'encryption',
    'versions', 'versioning', 'versionId', 'policy', 'requestPayment', 'x-oss-traffic-limit', 'qosInfo', 'asyncFetch',
    'x-oss-request-payer', 'sequential', 'inventory', 'inventoryId', 'continuation-token', 'worm', 'wormId',
    'wormExtend', 'replication', 'replicationLocation', 'replicationProgress', 'transferAcceleration', 'cname',
    'metaQuery', 'x-oss-ac-source-ip', 'x-oss-ac-subnet-mask', 'x-oss-ac-vpc-id', 'x-oss-ac-forward-allow',
    'resourceGroup', 'style', 'styleName', 'x-oss-async-process', 'regionList', 'x-oss-write-get-object-response',
    'bucketArchiveDirectRead', 'httpsConfig', 'redundancyTransition', 'x-oss-target-redundancy-type',
    'x-oss-redundancy-transition-taskid', 'accessPoint', 'accessPointPolicy', 'publicAccessBlock',
    'x-oss-access-point-name', 'requesterQosInfo', 'qosRequester', 'resourcePoolInfo', 'resourcePool',
    'resourcePoolBuckets'])
# Query parameters each operation understands; any other sub-resource is not implemented.
LIST_PARAMS = {"prefix", "marker", "delimiter", "max-keys", "encoding-type", "list-type", "continuation-token",
               "start-after", "fetch-owner"}
OBJECT_READ_PARAMS = {"response-content-type", "response-content-language", "response-cache-control",
                      "response-content-encoding", "response-expires", "response-content-disposition", "objectMeta"}


@dataclass(frozen=True)
class OssError:
    """An OSS error document: ``<Error><Code>…</Code><Message>…</Message>…</Error>``, and
    ``ec``, OSS's finer error code (``<EC>`` and the ``x-oss-ec`` header; with ``RecommendDoc``)."""

    code: str
    message: str
    status: int
    extra: tuple[tuple[str, str], ...] = ()
    ec: str = ""


# OSS's ECs where its documentation names one for a code in every case ramsim answers it
# (help.aliyun.com/zh/oss/support/<EC>); codes whose EC depends on the situation pass ``ec=``.
EC = {"NoSuchBucket": "0015-00000101", "NoSuchKey": "0026-00000001", "SecurityTokenExpired": "0002-00000007",
      "InvalidSecurityToken": "0002-00000006"}
EC_SIGNATURE_V1, EC_SIGNATURE_V4 = "0002-00000040", "0002-00000201"
EC_URL_EXPIRED, EC_URL_NOT_YET_VALID = "0002-00000069", "0002-00000235"
EC_KEY_NOT_FOUND, EC_KEY_DISABLED = "0002-00000902", "0002-00000904"
EC_EXPLICIT_DENY = "0003-00000201"
EC_V1_SKEWED = "0002-00000504"


def oss_error(code: str, message: str, status: int, *, ec: str = "", **extra: str) -> OssError:
    return OssError(code, message, status, tuple(extra.items()), ec or EC.get(code, ""))


def expired(expires_at: float, now: float) -> OssError:
    """A presigned URL past its expiry: OSS names both times."""
    return oss_error("AccessDenied", "Request has expired.", 403, ec=EC_URL_EXPIRED,
                     Expires=iso(expires_at), ServerTime=iso(now))


def access_denied(message: str = "You have no right to access this object because of bucket acl.") -> OssError:
    return oss_error("AccessDenied", message, 403)


@dataclass(frozen=True)
class HttpRequest:
    """One request as received. ``headers`` keys are lower-case; ``raw_path`` excludes the query."""

    method: str
    host: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Operation:
    """What a request does: ``name`` (the API), ``checks`` (the ``oss:`` actions it needs)."""

    name: str
    bucket: str = ""
    key: str = ""
    checks: tuple[ram.Check, ...] = ()
    source: tuple[str, str] | None = None  # CopyObject: (bucket, key)


@dataclass(frozen=True)
class Call:
    operation: Operation
    query: dict[str, str]
    credential: common.Authenticate
    canonical_request: str = ""  # what a V4 signature signed (shown when it does not match)


# -- parsing ---------------------------------------------------------------------------------
def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """``k=v&k2`` -> pairs, percent-decoded (``+`` stays ``+``, as OSS has it)."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        k, _, v = part.partition("=")
        pairs.append((urllib.parse.unquote(k), urllib.parse.unquote(v)))
    return pairs


def is_ip(hostname: str) -> bool:
    return bool(IPV4.match(hostname)) or hostname.startswith("[") or ":" in hostname


def hostname(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def locate(host: str, raw_path: str) -> tuple[str | None, str]:
    """(bucket or None for the service, key) from the Host header and the raw path."""
    name = hostname(host).lower()
    path = raw_path or "/"
    if not is_ip(name) and "." in name and not name.split(".")[0].startswith("oss-"):
        bucket = name.split(".")[0]
        return bucket, urllib.parse.unquote(path[1:])
    rest = path[1:]
    if not rest:
        return None, ""
    bucket, _, key = rest.partition("/")
    return urllib.parse.unquote(bucket), urllib.parse.unquote(key)


def bucket_name_error(name: str) -> OssError | None:
    if not BUCKET_NAME.match(name):
        return oss_error("InvalidBucketName", "The specified bucket is not valid.", 400, BucketName=name)
    return None


def key_error(key: str) -> OssError | None:
    encoded = key.encode("utf-8", "surrogateescape")
    if not key or len(encoded) > MAX_KEY_BYTES or key[0] in "/\\" or any(ord(c) < 32 and c not in "\t" for c in key):
        return oss_error("InvalidObjectName", "The specified object is not valid.", 400, ObjectName=key[:64])
    return None


def arn(account_id: str, bucket: str = "*", key: str | None = None) -> str:
    return f"acs:oss:*:{account_id}:{bucket}" + (f"/{key}" if key is not None else "")


def operation(method: str, bucket: str | None, key: str, query: dict[str, str], headers: dict[str, str],
              account_id: str) -> Operation | OssError:
    """Classify the request; validate the names it carries."""
    if bucket is None:
        if method != "GET":
            return oss_error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
        return Operation("ListBuckets", checks=(ram.Check(action="oss:ListBuckets", resource=arn(account_id)),))
    problem = bucket_name_error(bucket)
    if problem is not None:
        return problem
    params = set(query) - {"security-token", "OSSAccessKeyId", "Expires", "Signature"}
    params = {p for p in params if not p.startswith("x-oss-")}
    if not key:
        if method == "PUT" and not params:
            name = "PutBucket"
        elif method == "GET" and params == {"bucketInfo"}:
            name = "GetBucketInfo"
        elif method == "GET" and params == {"location"}:
            name = "GetBucketLocation"
        elif method == "GET" and params <= LIST_PARAMS:
            name = "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        elif method == "DELETE" and not params:
            name = "DeleteBucket"
        else:
            return oss_error("NotImplemented", f"ramsim OSS does not implement {method} on a bucket with {sorted(params)}.", 501)
        action = "oss:ListObjects" if name.startswith("ListObjects") else f"oss:{name}"
        return Operation(name, bucket, checks=(ram.Check(action=action, resource=arn(account_id, bucket)),))
    problem = key_error(key)
    if problem is not None:
        return problem
    here = arn(account_id, bucket, key)
    if method == "PUT" and not params and "x-oss-copy-source" in headers:
        source = copy_source(headers["x-oss-copy-source"])
        if isinstance(source, OssError):
            return source
        checks = (ram.Check(action="oss:GetObject", resource=arn(account_id, *source)),
                  ram.Check(action="oss:PutObject", resource=here))
        return Operation("CopyObject", bucket, key, checks, source)
    if method == "PUT" and not params:
        name, action = "PutObject", "oss:PutObject"
    elif method in ("GET", "HEAD") and params <= OBJECT_READ_PARAMS:
        name = "GetObjectMeta" if "objectMeta" in params else ("GetObject" if method == "GET" else "HeadObject")
        action = "oss:GetObject"
    elif method == "DELETE" and not params:
        name, action = "DeleteObject", "oss:DeleteObject"
    else:
        return oss_error("NotImplemented", f"ramsim OSS does not implement {method} on an object with {sorted(params)}.", 501)
    return Operation(name, bucket, key, (ram.Check(action=action, resource=here),))


def copy_source(value: str) -> tuple[str, str] | OssError:
    path = urllib.parse.unquote(value.split("?", 1)[0])
    bucket, _, key = path.lstrip("/").partition("/")
    problem = bucket_name_error(bucket) or key_error(key)
    if problem is not None:
        return oss_error("InvalidArgument", "x-oss-copy-source is not /<bucket>/<key>.", 400,
                         ArgumentName="x-oss-copy-source", ArgumentValue=value[:256])
    return bucket, key


# -- signatures ------------------------------------------------------------------------------
def v1_string_to_sign(method: str, headers: dict[str, str], bucket: str | None, key: str,
                      query: list[tuple[str, str]], date: str) -> str:
    """oss2 ``ProviderAuth``: VERB, Content-MD5, Content-Type, Date, x-oss-* headers, resource."""
    oss_headers = sorted((k, v) for k, v in headers.items() if k.startswith("x-oss-"))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in oss_headers)
    resource = "/" if bucket is None else f"/{bucket}/{key}"
    sub = sorted((k, v) for k, v in query if k in SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    return "\n".join([method, headers.get("content-md5", ""), headers.get("content-type", ""), date,
                      canonical_headers + resource])


def v4_canonical_request(method: str, headers: dict[str, str], bucket: str | None, key: str, raw_query: str,
                         additional: list[str]) -> str:
    """alibabacloud-oss-v2 ``SignerV4._calc_canonical_request``."""
    uri = "/" if bucket is None else f"/{bucket}/" + key
    pairs = sorted(part.partition("=")[::2] for part in raw_query.split("&")) if raw_query else []
    query = "&".join(f"{k}={v}" if v else k for k, v in pairs)
    names = sorted(k for k in headers if k.startswith("x-oss-") or k in ("content-type", "content-md5") or k in additional)
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in names)
    payload = headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")
    return f"{method}\n{urllib.parse.quote(uri, safe='/')}\n{query}\n{canonical_headers}\n{';'.join(additional)}\n{payload}"


def v4_string_to_sign(timestamp: str, scope: str, canonical_request: str) -> str:
    return "\n".join([signing.OSS_V4, timestamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])


def _skewed(date: str, wall_now: float) -> bool:
    try:
        when = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        return True
    return abs(when - wall_now) > MAX_SKEW


def _v4_time(stamp: str) -> float | None:
    m = re.match(r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$", stamp)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    days = _days_from_civil(y, mo, d)
    return days * 86400.0 + h * 3600 + mi * 60 + s


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def credential(req: HttpRequest, bucket: str | None, key: str, query: list[tuple[str, str]],
               wall_now: float) -> common.Authenticate | OssError:
    """What the request's signature signed, to be verified by RAM or STS."""
    found = signed(req, bucket, key, query, wall_now)
    return found if isinstance(found, OssError) else found[0]


Signed = tuple[common.Authenticate, str]  # the credential, and V4's canonical request ("" for V1)


def signed(req: HttpRequest, bucket: str | None, key: str, query: list[tuple[str, str]], wall_now: float) -> Signed | OssError:
    """:func:`credential`, with the canonical request a V4 signature signed (an error shows it)."""
    headers = req.headers
    auth = headers.get("authorization", "")
    params = dict(query)
    if auth.startswith("OSS "):
        access_key_id, _, signature = auth[4:].strip().rpartition(":")
        date = headers.get("x-oss-date") or headers.get("date", "")
        if not access_key_id or not signature:
            return oss_error("InvalidArgument", "Authorization header is invalid.", 400, ArgumentName="Authorization")
        if not date:
            return access_denied("Date header or x-oss-date is required.")
        if _skewed(date, wall_now):
            return oss_error("RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", 403,
                             ec=EC_V1_SKEWED)
        return common.Authenticate(access_key_id=access_key_id, signature=signature, signature_method=signing.OSS_V1,
                                   string_to_sign=v1_string_to_sign(req.method, headers, bucket, key, query, date),
                                   security_token=headers.get("x-oss-security-token", "")), ""
    if auth.startswith(signing.OSS_V4 + " "):
        return _v4_header(req, bucket, key, auth, wall_now)
    if params.get("x-oss-signature-version") == signing.OSS_V4:
        return _v4_query(req, bucket, key, params, wall_now)
    if "OSSAccessKeyId" in params and "Signature" in params and "Expires" in params:
        expires = params["Expires"]
        if not expires.isdigit():
            return oss_error("InvalidArgument", "Expires is not a number.", 400, ArgumentName="Expires")
        if int(expires) < wall_now:
            return expired(int(expires), wall_now)
        rest = [(k, v) for k, v in query if k not in ("OSSAccessKeyId", "Signature", "Expires")]
        return common.Authenticate(access_key_id=params["OSSAccessKeyId"], signature=params["Signature"],
                                   signature_method=signing.OSS_V1,
                                   string_to_sign=v1_string_to_sign(req.method, headers, bucket, key, rest, expires),
                                   security_token=params.get("security-token", "")), ""
    if auth:
        return oss_error("InvalidArgument", "Authorization header is invalid: use OSS or OSS4-HMAC-SHA256.", 400,
                         ArgumentName="Authorization")
    return access_denied("AccessDenied: anonymous access is not allowed; sign the request.")


def _v4_header(req: HttpRequest, bucket: str | None, key: str, auth: str, wall_now: float) -> Signed | OssError:
    fields = dict(part.strip().partition("=")[::2] for part in auth[len(signing.OSS_V4):].split(","))
    cred, signature = fields.get("Credential", ""), fields.get("Signature", "")
    access_key_id, _, scope = cred.partition("/")
    parts = scope.split("/")
    stamp = req.headers.get("x-oss-date", "")
    when = _v4_time(stamp)
    if not access_key_id or not signature or len(parts) != 4 or parts[2] != "oss" or parts[3] != "aliyun_v4_request":
        return oss_error("InvalidArgument", "Authorization header is invalid.", 400, ArgumentName="Authorization")
    if when is None or parts[0] != stamp[:8]:
        return access_denied("x-oss-date is required and must match the credential's date.")
    if abs(when - wall_now) > MAX_SKEW:
        return oss_error("RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", 403)
    additional = sorted(h.strip().lower() for h in fields.get("AdditionalHeaders", "").split(";") if h.strip())
    canonical = v4_canonical_request(req.method, req.headers, bucket, key, req.raw_query, additional)
    return common.Authenticate(access_key_id=access_key_id, signature=signature, signature_method=signing.OSS_V4,
                               string_to_sign=v4_string_to_sign(stamp, scope, canonical),
                               security_token=req.headers.get("x-oss-security-token", "")), canonical


MAX_PRESIGN = 7 * 24 * 3600  # the longest x-oss-expires OSS accepts


def _v4_query(req: HttpRequest, bucket: str | None, key: str, params: dict[str, str], wall_now: float) -> Signed | OssError:
    """A V4 presigned URL (alibabacloud-oss-v2 ``SignerV4._auth_query``): the credential, date,
    expiry and token are query parameters, signed with the rest of the query (all but
    ``x-oss-signature``, as they appear in the URL)."""
    access_key_id, _, scope = params.get("x-oss-credential", "").partition("/")
    parts = scope.split("/")
    stamp, expires, signature = params.get("x-oss-date", ""), params.get("x-oss-expires", ""), params.get("x-oss-signature", "")
    when = _v4_time(stamp)
    if not access_key_id or not signature or len(parts) != 4 or parts[2] != "oss" or parts[3] != "aliyun_v4_request":
        return oss_error("InvalidArgument", "x-oss-credential or x-oss-signature is invalid.", 400, ArgumentName="x-oss-credential")
    if when is None or parts[0] != stamp[:8]:
        return access_denied("x-oss-date is required and must match the credential's date.")
    if not expires.isdigit() or not 0 < int(expires) <= MAX_PRESIGN:
        return oss_error("InvalidArgument", f"x-oss-expires must be 1-{MAX_PRESIGN} seconds.", 400, ArgumentName="x-oss-expires")
    if when - MAX_SKEW > wall_now:
        return oss_error("RequestTimeTooSkewed", "The difference between the request time and the current time is too large.", 403,
                         ec=EC_URL_NOT_YET_VALID)
    if when + int(expires) < wall_now:
        return expired(when + int(expires), wall_now)
    signed_query = "&".join(p for p in req.raw_query.split("&") if p.partition("=")[0] != "x-oss-signature")
    additional = sorted(h.strip().lower() for h in params.get("x-oss-additional-headers", "").split(";") if h.strip())
    canonical = v4_canonical_request(req.method, req.headers, bucket, key, signed_query, additional)
    return common.Authenticate(access_key_id=access_key_id, signature=signature, signature_method=signing.OSS_V4,
                               string_to_sign=v4_string_to_sign(stamp, scope, canonical),
                               security_token=params.get("x-oss-security-token", "")), canonical


def parse(req: HttpRequest, account_id: str, wall_now: float) -> Call | OssError:
    """Address, classify and extract the credential of one request."""
    bucket, key = locate(req.host, req.raw_path)
    pairs = parse_query(req.raw_query)
    op = operation(req.method, bucket, key, dict(pairs), req.headers, account_id)
    if isinstance(op, OssError):
        return op
    found = signed(req, bucket, key, pairs, wall_now)
    if isinstance(found, OssError):
        return found
    return Call(op, dict(pairs), *found)


def verifier(access_key_id: str) -> str:
    return "sts" if access_key_id.startswith("STS.") else "ram"


def authentication_error(problem: Error, call: Call) -> OssError:
    """RAM's or STS's refusal, as OSS words it. A signature mismatch shows what OSS signed (the
    string to sign, its bytes, V4's canonical request) and what the caller sent, so a client can
    tell a wrong secret from a request changed on its way."""
    code, cred = problem.code, call.credential
    if code.startswith("InvalidAccessKeyId"):
        if code.endswith("Inactive"):
            return oss_error("InvalidAccessKeyId", "The OSS Access Key Id you provided is disabled.", 403,
                             ec=EC_KEY_DISABLED, OSSAccessKeyId=cred.access_key_id)
        return oss_error("InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.", 403,
                         ec=EC_KEY_NOT_FOUND, OSSAccessKeyId=cred.access_key_id)
    if code == "SignatureDoesNotMatch":
        v4 = cred.signature_method == signing.OSS_V4
        shown = {"OSSAccessKeyId": cred.access_key_id, "SignatureProvided": cred.signature,
                 "StringToSign": cred.string_to_sign,
                 "StringToSignBytes": "".join(f"{b:02X} " for b in cred.string_to_sign.encode())}
        if v4:
            shown["CanonicalRequest"] = call.canonical_request
        return oss_error("SignatureDoesNotMatch", "The request signature we calculated does not match the signature you "
                         "provided. Check your key and signing method.", 403,
                         ec=EC_SIGNATURE_V4 if v4 else EC_SIGNATURE_V1, **shown)
    if code == "InvalidSecurityToken.Expired":
        return oss_error("SecurityTokenExpired", "The security token you provided has expired.", 403)
    if code.startswith("InvalidSecurityToken") or code == "MissingSecurityToken":
        return oss_error("InvalidSecurityToken", "The security token you provided is invalid.", 403)
    return oss_error("ServiceUnavailable", f"Authentication is unavailable: {code}.", 503)


# -- authorization ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    action: str = ""
    decision: str = "ImplicitDeny"  # or ExplicitDeny (RAM's Decision.decision)


def policy_denied(verdict: Verdict) -> OssError:
    """A request the caller's policies do not allow (an explicit Deny has its own EC)."""
    return oss_error("AccessDenied", f"You are not authorized to do {verdict.action} on this resource: {verdict.reason}.", 403,
                     ec=EC_EXPLICIT_DENY if verdict.decision == "ExplicitDeny" else "")


MAX_KEYS = 10_000


@dataclass(frozen=True)
class _Key:
    key: bytes
    valid_until: float
    principal: common.Principal


class OssCore:
    """The OSS enforcement point: its cache follows RAM's events.

    Requests arrive over HTTP, not the bus, so a RAM event can still be on its way when the
    caller's next request arrives. While ``watching`` (RAM answers each change only after we
    acknowledged its event: :class:`~protocol.messages.ram.WatchDecisions`) that cannot
    happen; while not, the shell must first let the bus catch up (a barrier) before deciding
    from anything cached."""

    node_id = NAME

    def __init__(self, *, account_id: str, region_id: str) -> None:
        self.account_id = account_id
        self.region_id = region_id
        self.cache = PolicyCache()
        self._keys: dict[tuple[str, str, tuple[str, str, str]], _Key] = {}
        self.watching = False

    def subscriptions(self) -> list[str]:
        return [topics.events("ram")]

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        if self.cache.observed(msg):  # a RAM change: cached decisions may be stale
            if isinstance(msg.body, ram.AccessKeyChanged):  # disabled or deleted: its derived keys go too
                self._keys = {k: v for k, v in self._keys.items() if k[0] != msg.body.access_key_id}
            # Acknowledged even before RAM's WatchDecisionsOk is handled: an event can overtake it
            # on its way to us, and RAM ignores acknowledgements from nodes that do not watch.
            return [Send("ram", ram.EventApplied(generation=getattr(msg.body, "generation", 0)))]
        if isinstance(msg.body, ram.WatchDropped) and msg.src == "ram":
            self.watching = False
            return [Log("watch_dropped", "warning", {"waited_for": msg.body.waited_for})]
        return [Log("message_ignored", "debug", {"type": type(msg.body).__name__, "src": msg.src})]

    def watched(self, answer: ram.WatchDecisionsOk) -> None:
        """RAM now waits for our acknowledgements. Whatever is cached may have missed events
        while we were not watching: forget it all, then decide locally again."""
        self.cache.clear(answer.generation)
        self._keys.clear()
        self.watching = True

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        return []

    def on_timer(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self) -> float | None:
        return None

    # -- V4 derived keys: verify locally what RAM/STS already verified once -------------------
    def verify_locally(self, credential: common.Authenticate, now: float) -> common.Principal | None:
        """The principal of a V4 request whose scope's derived key RAM/STS handed over earlier, if
        the signature checks out with it; None means: ask the verifier (who knows why not)."""
        if credential.signature_method != signing.OSS_V4:
            return None
        scope = signing.oss4_scope(credential.string_to_sign)
        found = self._keys.get((credential.access_key_id, credential.security_token, scope)) if scope else None
        if found is None or now >= found.valid_until:
            return None
        expected = signing.oss4_sign_with_key(found.key, credential.string_to_sign)
        return found.principal if hmac.compare_digest(expected, credential.signature) else None

    def remember_key(self, credential: common.Authenticate, answer: common.AuthenticateOk) -> None:
        scope = signing.oss4_scope(credential.string_to_sign)
        if not answer.signing_key or scope is None:
            return
        if len(self._keys) >= MAX_KEYS:
            self._keys.clear()
        self._keys[(credential.access_key_id, credential.security_token, scope)] = _Key(
            bytes.fromhex(answer.signing_key), answer.valid_until, answer.principal)

    def cached(self, principal: common.Principal) -> Entry | None:
        """The principal's effective policies if known (``None``: ask RAM ``GetEffectivePolicies``)."""
        if principal.identity_type == "Account":
            return Entry(self.cache.generation, True, ())
        return self.cache.get(principal)

    def learn(self, principal: common.Principal, answer: ram.GetEffectivePoliciesOk) -> Entry:
        return self.cache.put(principal, answer)

    def authorize(self, principal: common.Principal, entry: Entry, checks: tuple[ram.Check, ...], now: float) -> Verdict:
        if principal.account_id != self.account_id:
            return Verdict(False, "the principal belongs to another account", checks[0].action if checks else "")
        for check in checks:
            decision = self.cache.decide(entry, principal, check, now)
            if not decision.allowed:
                return Verdict(False, decision.reason, check.action, decision.decision)
        return Verdict(True, "allowed")


# -- listing ---------------------------------------------------------------------------------
@dataclass
class Page:
    contents: list = field(default_factory=list)  # the store's object rows
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_marker: str = ""


def list_page(rows, *, prefix: str, delimiter: str, after: str, max_keys: int) -> Page:  # noqa: ANN001
    """One page of a listing from ``rows`` (objects with ``.key``, sorted, ``key > after``,
    starting with ``prefix``): keys sharing a delimited prefix fold into one CommonPrefix."""
    page = Page()
    last_prefix = ""
    for row in rows:
        key = row.key
        if delimiter and after.endswith(delimiter) and key.startswith(after) and after.startswith(prefix):
            continue  # inside the common prefix the previous page ended with
        folded = ""
        if delimiter:
            cut = key.find(delimiter, len(prefix))
            if cut >= 0:
                folded = key[: cut + len(delimiter)]
        if folded and folded == last_prefix:
            continue
        if len(page.contents) + len(page.prefixes) >= max_keys:
            page.truncated = True
            break
        if folded:
            page.prefixes.append(folded)
            last_prefix = page.next_marker = folded
        else:
            page.contents.append(row)
            page.next_marker = key
    if not page.truncated:
        page.next_marker = ""
    return page


def max_keys(query: dict[str, str], default: int = 100) -> int | OssError:
    raw = query.get("max-keys", "")
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= MAX_LIST_KEYS:
        return oss_error("InvalidArgument", f"max-keys must be between 1 and {MAX_LIST_KEYS}.", 400,
                         ArgumentName="max-keys", ArgumentValue=raw[:32])
    return int(raw)


def byte_range(header: str, size: int, standard: bool) -> tuple[int, int] | OssError | None:
    """``Range: bytes=a-b`` -> inclusive (start, end); ``None``: the whole object (OSS ignores
    a malformed or unsatisfiable range unless ``x-oss-range-behavior: standard``)."""
    m = re.match(r"^bytes=(\d*)-(\d*)$", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        n = int(last)
        if n == 0:
            return _unsatisfiable(size) if standard else None
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return _unsatisfiable(size) if standard else None
    return start, end


def _unsatisfiable(size: int) -> OssError:
    return oss_error("InvalidRange", "The requested range cannot be satisfied.", 416, ActualObjectSize=str(size))
