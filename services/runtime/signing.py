"""Pure core: Alibaba OpenAPI request signing, both schemes the SDKs use.

* V1, RPC style: ``HMAC-SHA1`` over ``METHOD&%2F&pct(sorted params)``, base64, key
  ``secret + "&"`` (``SignatureVersion=1.0``; aliyun-python-sdk-core, tea-openapi with
  ``signature_algorithm='v2'``, the ``ramsim`` CLI).
* V3: ``ACS3-HMAC-SHA256`` over the canonical request (method, path, sorted query, the headers
  named in ``SignedHeaders``, the body hash), hex (tea-openapi's default).
* OSS V1 (``OSS-HMAC-SHA1``, oss2's default) and OSS V4 (``OSS4-HMAC-SHA256``,
  alibabacloud-oss-v2's default): only the keyed hash lives here; ``services/oss/core.py``
  builds what they sign.

The same functions sign and verify (RAM and STS, which hold the secrets), so the two can never
drift. Test vectors: ``../shared/reference/alibaba.md`` section 8.5.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import urllib.parse
from typing import Iterable, Mapping


def pct(value: str) -> str:
    """RFC 3986 percent-encoding keeping only ``A-Z a-z 0-9 - _ . ~`` (space -> %20)."""
    return urllib.parse.quote(value, safe="-_.~")


def rpc_string_to_sign(method: str, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``METHOD&%2F&pct(canonicalized)`` over every parameter but ``Signature``."""
    pairs = params.items() if isinstance(params, Mapping) else params
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted((k, v) for k, v in pairs if k != "Signature"))
    return f"{method.upper()}&{pct('/')}&{pct(canonical)}"


def hmac_sha1(secret: str, string_to_sign: str) -> str:
    digest = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


ACS3 = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def acs3_canonical_request(method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str],
                           signed_headers: Iterable[str], body_sha256: str) -> str:
    """``headers`` keys are lower-case; only those in ``signed_headers`` take part."""
    names = sorted(h.lower() for h in signed_headers)
    canonical_query = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{n}:{headers.get(n, '').strip()}\n" for n in names)
    return "\n".join([method.upper(), path or "/", canonical_query, canonical_headers, ";".join(names), body_sha256])


def acs3_string_to_sign(canonical_request: str) -> str:
    return f"{ACS3}\n{sha256_hex(canonical_request.encode())}"


def hmac_sha256_hex(secret: str, string_to_sign: str) -> str:
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def acs3_authorization(access_key_id: str, signed_headers: Iterable[str], signature: str) -> str:
    return f"{ACS3} Credential={access_key_id},SignedHeaders={';'.join(sorted(signed_headers))},Signature={signature}"


def parse_acs3_authorization(value: str) -> tuple[str, list[str], str] | None:
    """``ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`` -> (AK, headers, signature)."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ACS3:
        return None
    fields = dict(part.strip().partition("=")[::2] for part in rest.split(","))
    credential, names, signature = fields.get("Credential", ""), fields.get("SignedHeaders", ""), fields.get("Signature", "")
    if not credential or not names or not signature:
        return None
    return credential, [n.strip().lower() for n in names.split(";") if n.strip()], signature


OSS_V1 = "OSS-HMAC-SHA1"
OSS_V4 = "OSS4-HMAC-SHA256"


def oss_hmac_sha1(secret: str, string_to_sign: str) -> str:
    """OSS signature V1: base64 HMAC-SHA1 keyed with the secret itself (no ``&``)."""
    return base64.b64encode(hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()).decode()


def oss4_scope(string_to_sign: str) -> tuple[str, str, str] | None:
    """(date, region, product) of an OSS V4 string to sign (its third line), or None."""
    lines = string_to_sign.split("\n")
    scope = lines[2].split("/") if len(lines) == 4 else []
    if len(scope) != 4 or scope[3] != "aliyun_v4_request" or not all(scope[:3]):
        return None
    return scope[0], scope[1], scope[2]


def oss4_signing_key(secret: str, date: str, region: str, product: str) -> bytes:
    """The V4 signing key: derived from ``aliyun_v4 + secret`` through the scope. It verifies
    only requests of that day, region and product, so a service may hold it without holding
    the secret (as AWS services hold SigV4 derived keys)."""
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def oss4_scope_end(date: str) -> float:
    """When a scope's day ends (epoch seconds, UTC); 0 for a malformed date."""
    try:
        day = datetime.datetime.strptime(date, "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return 0.0
    return (day + datetime.timedelta(days=1)).timestamp()


def scoped_key(secret: str, body: object, src: str) -> tuple[str, float]:
    """What a verifier (RAM, STS) hands back with an authenticated OSS V4 request when the OSS
    service asks for it: the derived key of the request's scope, and until when it may be used.
    Anyone else, or any other scheme, gets nothing."""
    if src != "oss" or not getattr(body, "want_signing_key", False) or getattr(body, "signature_method", "") != OSS_V4:
        return "", 0.0
    scope = oss4_scope(getattr(body, "string_to_sign", ""))
    if scope is None or scope[2] != "oss":
        return "", 0.0
    return oss4_signing_key(secret, *scope).hex(), oss4_scope_end(scope[0])


def oss4_sign_with_key(key: bytes, string_to_sign: str) -> str:
    return hmac.digest(key, string_to_sign.encode(), "sha256").hex()  # the one-shot C path: on OSS's hot path


def oss4_hmac_sha256(secret: str, string_to_sign: str) -> str:
    """OSS signature V4 over ``string_to_sign`` (whose scope names the key's derivation)."""
    scope = oss4_scope(string_to_sign)
    if scope is None:
        return ""
    return oss4_sign_with_key(oss4_signing_key(secret, *scope), string_to_sign)


SCHEMES = {"HMAC-SHA1": hmac_sha1, ACS3: hmac_sha256_hex, OSS_V1: oss_hmac_sha1, OSS_V4: oss4_hmac_sha256}


def verify(secret: str, string_to_sign: str, signature: str, method: str = "HMAC-SHA1") -> bool:
    """Constant-time check of ``signature`` over ``string_to_sign`` with scheme ``method``."""
    sign = SCHEMES.get(method)
    if sign is None:
        return False
    expected = sign(secret, string_to_sign)
    return bool(expected) and hmac.compare_digest(expected.encode(), signature.encode())
