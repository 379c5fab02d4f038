"""Pure core: SecurityTokens that STS alone can mint and check.

A token is ``CAIS`` + base64url(msgpack(claims) + HMAC-SHA256(key, claims)): it carries the
AccessKeyId, role ARN, session name and expiry, and any change to a byte is detected.
(Rotating keys and sealed secrets come with the security issue.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec

PREFIX = "CAIS"
_MAC = 32


class Claims(msgspec.Struct, array_like=True):
    access_key_id: str
    role_arn: str
    session_name: str
    expires_at: float
    policy_digest: str = ""


_decoder = msgspec.msgpack.Decoder(Claims)


def mint(key: bytes, claims: Claims) -> str:
    body = msgspec.msgpack.encode(claims)
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def open_token(key: bytes, token: str) -> Claims | None:
    """The claims of an authentic token, or None for anything forged, altered or malformed."""
    if not token.startswith(PREFIX):
        return None
    text = token[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != text:  # only the one canonical spelling
        return None
    body, mac = raw[:-_MAC], raw[-_MAC:]
    if len(raw) <= _MAC or not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        return None
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def policy_digest(policy: str) -> str:
    return hashlib.sha256(policy.encode()).hexdigest()[:16] if policy else ""
