"""Pure core: the gateway's translation between Alibaba RPC-style HTTP calls and bus commands.

A call is ``GET|POST /?<params>`` (parameters in the query string or a form body), signed one of
two ways: V1 (``Action``, ``Version``, ``Signature``, ``SignatureNonce``, ``Timestamp`` among
the parameters; HMAC-SHA1) or V3 (``x-acs-action``, ``x-acs-version``, ``x-acs-date``,
``x-acs-signature-nonce`` headers and ``Authorization: ACS3-HMAC-SHA256 ...``). The product is
chosen by the version; the command type by the action; parameters convert straight into the
command (message fields are spelled like Alibaba's parameters).

The gateway never holds a secret: it computes what was signed and asks RAM (AccessKeys) or
STS (``STS.`` keys) to verify it. It refuses stale timestamps and reused nonces itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from protocol import errors
from protocol.base import Message
from protocol.errors import Error, error
from protocol.messages import common, ecs, ram, sts
from protocol.products import VERSIONS
from protocol.times import parse_iso
from services.runtime import signing

COMMANDS: dict[str, dict[str, type[Message]]] = {
    product: {c.__name__: c for c in module.COMMANDS} for product, module in (("ram", ram), ("sts", sts), ("ecs", ecs))}
PRODUCTS: dict[str, tuple[str, dict[str, type[Message]]]] = {VERSIONS[p]: (p, commands) for p, commands in COMMANDS.items()}
SIGNATURE_PARAMS = ("AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp")
COMMON_PARAMS = frozenset({"Action", "Version", "Format", "SecurityToken", "SignatureType", "RegionId"} | set(SIGNATURE_PARAMS))
# Message fields a client may never set: the gateway fills them in.
RESERVED = frozenset({"Caller", "RequestContext", "type"})
MAX_SKEW = 15 * 60  # seconds a request's timestamp may differ from the server's clock
_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT = re.compile(r"at `\$\.([^`]+)`")


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request as the gateway received it. Header names are lower-case."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""
    form: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    """A signed call. ``command`` is an Error when the parameters are wrong: the caller is
    authenticated first all the same, so an unauthenticated client learns nothing of the API."""

    product: str
    command: Message | Error
    credential: common.Authenticate


class Gateway:
    """Turns HTTP calls into commands plus the proof of who sent them.

    Holds the one piece of state the gateway needs: the nonces seen within the timestamp
    window (a reused nonce is ``SignatureNonceUsed``). ``now`` is wall time, since clients
    stamp requests with real time. The shell keeps the window on disk: it takes each newly
    seen nonce from :attr:`seen` and hands a restarted gateway the window back with
    :meth:`restore`, so a restart opens no window for replays.
    """

    def __init__(self, *, max_skew: float = MAX_SKEW) -> None:
        self.max_skew = max_skew
        self._nonces: dict[str, float] = {}
        self._oldest = 0.0
        self.seen: list[tuple[str, float]] = []  # (nonce, its request's timestamp) since the shell last took them

    def restore(self, nonces: dict[str, float], now: float) -> None:
        """Take back the nonces a previous run saw; those whose requests can no longer pass are dropped."""
        self._nonces.update({n: t for n, t in nonces.items() if now - t <= self.max_skew})
        self._oldest = min(self._nonces.values(), default=now)

    def parse(self, call: HttpCall, now: float) -> Call | Error:
        authorization = call.headers.get("authorization", "")
        if authorization.startswith(signing.ACS3):
            return self._parse_v3(call, authorization, now)
        return self._parse_v1(call, now)

    # -- the two schemes ------------------------------------------------------------------
    def _parse_v1(self, call: HttpCall, now: float) -> Call | Error:
        pairs = call.query + call.form
        params = dict(pairs)
        for name in ("Action", "Version", *SIGNATURE_PARAMS):
            if not params.get(name):
                return errors.missing_parameter(name)
        if params["SignatureMethod"] != "HMAC-SHA1":
            return error("InvalidParameter.SignatureMethod", f"SignatureMethod {params['SignatureMethod']} is not supported; use HMAC-SHA1.")
        problem = self._fresh(params["Timestamp"], params["SignatureNonce"], now)
        if problem is not None:
            return problem
        credential = common.Authenticate(access_key_id=params["AccessKeyId"], signature=params["Signature"],
                                         string_to_sign=signing.rpc_string_to_sign(call.method, pairs),
                                         signature_method="HMAC-SHA1", security_token=params.get("SecurityToken", ""))
        return self._command(params["Version"], params["Action"], params, credential)

    def _parse_v3(self, call: HttpCall, authorization: str, now: float) -> Call | Error:
        parsed = signing.parse_acs3_authorization(authorization)
        if parsed is None:
            return error("IncompleteSignature", "The Authorization header is not a valid ACS3-HMAC-SHA256 signature.")
        access_key_id, signed, signature = parsed
        headers = call.headers
        unsigned = sorted(h for h in headers if (h == "host" or h.startswith("x-acs-")) and h not in signed)
        if unsigned:
            return error("IncompleteSignature", f"These headers must be signed: {', '.join(unsigned)}.")
        for name in ("x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"):
            if not headers.get(name):
                return error("MissingParameter", f'The header "{name}" that is mandatory for processing this request is not supplied.')
        body_hash = signing.sha256_hex(call.body)
        if headers["x-acs-content-sha256"] != body_hash:
            return error("SignatureDoesNotMatch", "The x-acs-content-sha256 header does not match the body.")
        problem = self._fresh(headers["x-acs-date"], headers["x-acs-signature-nonce"], now)
        if problem is not None:
            return problem
        canonical = signing.acs3_canonical_request(call.method, call.path, call.query, headers, signed, body_hash)
        credential = common.Authenticate(access_key_id=access_key_id, signature=signature,
                                         string_to_sign=signing.acs3_string_to_sign(canonical),
                                         signature_method=signing.ACS3,
                                         security_token=headers.get("x-acs-security-token", ""))
        return self._command(headers["x-acs-version"], headers["x-acs-action"], dict(call.query + call.form), credential)

    # -- shared checks --------------------------------------------------------------------
    def _fresh(self, timestamp: str, nonce: str, now: float) -> Error | None:
        """The request is recent and its nonce unused within the window."""
        try:
            stamp = parse_iso(timestamp)
        except ValueError:
            return error("InvalidTimeStamp.Format", f"Specified time stamp {timestamp!r} is not in YYYY-MM-DDThh:mm:ssZ (UTC).")
        if abs(now - stamp) > self.max_skew:
            return error("InvalidTimeStamp.Expired", f"Specified time stamp or date value is expired; it must be within {int(self.max_skew // 60)} minutes of the server time.")
        if now - self._oldest > self.max_skew:  # forget nonces whose timestamps can no longer pass
            self._nonces = {n: t for n, t in self._nonces.items() if now - t <= self.max_skew}
            self._oldest = min(self._nonces.values(), default=now)
        if nonce in self._nonces:
            return nonce_used()
        self._nonces[nonce] = stamp  # by its timestamp: it can be replayed until stamp + max_skew
        self.seen.append((nonce, stamp))
        return None

    def _command(self, version: str, action: str, params: dict[str, str], credential: common.Authenticate) -> Call:
        product = PRODUCTS.get(version)
        if product is None:
            return Call("gateway", error("InvalidVersion", f"Specified parameter Version {version} is not valid.", 400), credential)
        name, commands = product
        command_type = commands.get(action)
        if command_type is None:
            return Call(name, errors.unknown_action(name, action), credential)
        fields = repeated({k: v for k, v in params.items() if k not in COMMON_PARAMS and k not in RESERVED})
        if "RegionId" in params and "region_id" in command_type.__struct_fields__:
            fields["RegionId"] = params["RegionId"]
        try:
            command = msgspec.convert(fields, command_type, strict=False)
        except msgspec.ValidationError as exc:
            text = str(exc)
            missing = _MISSING.search(text)
            at = _AT.search(text)
            problem = errors.missing_parameter(missing.group(1)) if missing else \
                errors.invalid_parameter(at.group(1) if at else "?", text.split(" - at ")[0] + ".")
            return Call(name, problem, credential)
        return Call(name, command, credential)


_REPEATED = re.compile(r"^([A-Za-z]+)\.([1-9][0-9]{0,2})(?:\.([A-Za-z]+))?$")


def repeated(fields: dict[str, str]) -> dict[str, object]:
    """RPC's flattened lists back into lists: ``Tag.1.Key=a&Tag.1.Value=b`` is
    ``Tag=[{"Key": "a", "Value": "b"}]`` and ``Name.1=x`` is ``Name=["x"]`` (in N's order)."""
    out: dict[str, object] = {}
    lists: dict[str, dict[int, object]] = {}
    for name, value in fields.items():
        match = _REPEATED.match(name)
        if match is None:
            out[name] = value
            continue
        head, index, member = match.group(1), int(match.group(2)), match.group(3)
        slot = lists.setdefault(head, {})
        if member:
            item = slot.setdefault(index, {})
            if isinstance(item, dict):
                item[member] = value
        else:
            slot[index] = value
    out.update({head: [slot[i] for i in sorted(slot)] for head, slot in lists.items()})
    return out


READ_PREFIXES = ("Get", "List", "Describe", "Simulate")


def idempotent(command: object) -> bool:
    """May the gateway ask again after a timeout? Only when asking twice cannot do twice: reads
    and authentication. A write that timed out stays an indefinite error (it may or may not have
    taken effect); the caller decides, never the gateway."""
    name = type(command).__name__
    return name == "Authenticate" or name.startswith(READ_PREFIXES)


SIGNATURE_MISMATCH = "Specified signature is not matched with our calculation. server string to sign is:"


def unauthenticated(problem: Message, credential: common.Authenticate) -> Message:
    """RAM's or STS's refusal as Alibaba's RPC endpoints word it. A signature mismatch carries
    the string to sign the server computed (``...server string to sign is:<string>``), both
    schemes: SDKs compare it with their own (aliyunsdkcore turns an equal one into
    ``InvalidAccessKeySecret``; a different one means the request was changed on its way)."""
    if isinstance(problem, Error) and problem.code == "SignatureDoesNotMatch":
        return msgspec.structs.replace(problem, message=SIGNATURE_MISMATCH + credential.string_to_sign)
    return problem


def nonce_used() -> Error:
    """A request whose nonce was used within the window (by this gateway or, seen on disk, another worker)."""
    return error("SignatureNonceUsed", "Specified signature nonce was used already.")


def verifier(access_key_id: str) -> str:
    """Who holds the secret of this AccessKeyId."""
    return "sts" if access_key_id.startswith("STS.") else "ram"


def render(body: Message, request_id: str, product: str) -> tuple[int, dict[str, object]]:
    """An Alibaba JSON response: the reply's fields plus RequestId, or the error shape."""
    if isinstance(body, Error):
        shaped: dict[str, object] = {"RequestId": request_id, "HostId": f"{product}.aliyuncs.com", "Code": body.code,
                                     "Message": body.message, "Recommend": f"https://api.aliyun.com/troubleshoot?q={body.code}"}
        if body.access_denied_detail is not None:
            shaped["AccessDeniedDetail"] = answered(body.access_denied_detail)  # every field, PolicyType's default too
        return body.http_status, shaped
    data = answered(body)
    assert isinstance(data, dict)
    return 200, {"RequestId": request_id, **data}


def answered(value: object) -> object:
    """A reply as Alibaba's JSON: every field, defaults included (``IsTruncated: false``,
    ``DefaultVersion: "v1"``, empty lists), except optional text never set (``""`` whose
    default is ``""``: a context's field such as ``AttachDate``, or a ``Marker`` with nothing
    after it) and ``None``. The bus keeps leaving defaults out (``omit_defaults``)."""
    if isinstance(value, msgspec.Struct):
        shown = {}
        for name, shown_as, optional_text in _shape(type(value)):
            v = getattr(value, name)
            if v is None or (optional_text and v == ""):
                continue
            shown[shown_as] = v if type(v) in _PLAIN else answered(v)
        return shown
    if isinstance(value, (list, tuple)):
        return [answered(v) for v in value]
    if isinstance(value, dict):
        return {k: answered(v) for k, v in value.items()}
    return value


_PLAIN = frozenset({str, int, float, bool})
_SHAPES: dict[type, tuple[tuple[str, str, bool], ...]] = {}


def _shape(kind: type) -> tuple[tuple[str, str, bool], ...]:
    """(field name, JSON name, optional text?) of each field of a reply type, looked up once per
    type (``msgspec.structs.fields`` builds its answer on every call: a page of 100 instances
    took 100 ms to render with it, 5 ms with this)."""
    shape = _SHAPES.get(kind)
    if shape is None:
        shape = _SHAPES[kind] = tuple((f.name, f.encode_name, f.default == "") for f in msgspec.structs.fields(kind))
    return shape
