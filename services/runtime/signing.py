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


def oss4_hmac_sha256(secret: str, string_to_sign: str) -> str:
    """OSS signature V4: the key derives from ``aliyun_v4 + secret`` through the scope
    (``date/region/product/aliyun_v4_request``, the third line of the string to sign)."""
    lines = string_to_sign.split("\n")
    scope = lines[2].split("/") if len(lines) == 4 else []
    if len(scope) != 4 or scope[3] != "aliyun_v4_request":
        return ""
    key = ("aliyun_v4" + secret).encode()
    for part in (*scope[:3], "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


SCHEMES = {"HMAC-SHA1": hmac_sha1, ACS3: hmac_sha256_hex, OSS_V1: oss_hmac_sha1, OSS_V4: oss4_hmac_sha256}


def verify(secret: str, string_to_sign: str, signature: str, method: str = "HMAC-SHA1") -> bool:
    """Constant-time check of ``signature`` over ``string_to_sign`` with scheme ``method``."""
    sign = SCHEMES.get(method)
    if sign is None:
        return False
    expected = sign(secret, string_to_sign)
    return bool(expected) and hmac.compare_digest(expected.encode(), signature.encode())
