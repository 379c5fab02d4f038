"""Pure core: Alibaba OpenAPI request signing (RPC style, HMAC-SHA1, ``SignatureVersion=1.0``).

The same functions sign (the ``ramsim`` CLI) and verify (RAM and STS, which hold the
secrets), so the two can never drift. Reference test vectors: ``../shared/reference``.
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


def verify(secret: str, string_to_sign: str, signature: str, method: str = "HMAC-SHA1") -> bool:
    """Constant-time check of ``signature`` over ``string_to_sign``."""
    if method != "HMAC-SHA1":
        return False
    return hmac.compare_digest(hmac_sha1(secret, string_to_sign).encode(), signature.encode())
