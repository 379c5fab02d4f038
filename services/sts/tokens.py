"""Pure core: SecurityTokens only STS can mint or read.

A token is the session itself, sealed: ``CAIS`` + base64url(version | key epoch | nonce |
AES-256-GCM(claims)). The claims hold the session's AccessKeyId, its AccessKeySecret, the
account, role, session name, expiry and session policy (with its digest); STS verifies a
request by opening the token, so it stores no session and the secret exists in plain text only
with the holder. Any change to a byte, a truncation, a token sealed under another key or
re-sealed by anyone without the master key fails authentication.

Keys rotate by epoch: the key of epoch ``n`` is HMAC-SHA256(master, "ramsim-sts-key" | n),
``n = floor(issue time / rotation)``. A token names its epoch; keys of epochs older than the
longest possible session are refused, so an old key verifies exactly until its tokens expire.
Deriving keys instead of storing them means a restarted STS (given the same master key) still
verifies every live token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "CAIS"
VERSION = 1
MAX_SESSION = 43200  # the longest session STS issues (seconds)
_HEADER = struct.Struct(">BI")  # version, key epoch
_NONCE = 12
_AAD = b"ramsim/sts/token/v1"


class Claims(msgspec.Struct, array_like=True, frozen=True):
    access_key_id: str
    access_key_secret: str
    account_id: str
    role_arn: str
    role_name: str
    role_id: str
    session_name: str
    expires_at: float
    session_policy: str = ""
    policy_digest: str = ""


_decoder = msgspec.msgpack.Decoder(Claims)


class KeyRing:
    """Epoch keys derived from one master key; ``rotation`` seconds per epoch."""

    def __init__(self, master: bytes, rotation: float) -> None:
        if len(master) < 16:
            raise ValueError("the STS master key must be at least 16 bytes")
        if rotation <= 0:
            raise ValueError("key rotation must be positive")
        self._master = master
        self.rotation = rotation
        self._keys: dict[int, AESGCM] = {}

    def epoch(self, now: float) -> int:
        return int(now // self.rotation)

    def oldest_valid_epoch(self, now: float) -> int:
        """Tokens sealed before this epoch have all expired."""
        return self.epoch(now - MAX_SESSION) - 1

    def key(self, epoch: int) -> AESGCM:
        found = self._keys.get(epoch)
        if found is None:
            raw = hmac.new(self._master, b"ramsim-sts-key|%d" % epoch, hashlib.sha256).digest()
            found = self._keys[epoch] = AESGCM(raw)
            if len(self._keys) > 64:  # keep the cache small: recent epochs only
                for old in sorted(self._keys)[:-32]:
                    del self._keys[old]
        return found


def seal(ring: KeyRing, claims: Claims, now: float, nonce: bytes) -> str:
    epoch = ring.epoch(now)
    header = _HEADER.pack(VERSION, epoch)
    sealed = ring.key(epoch).encrypt(nonce[:_NONCE], msgspec.msgpack.encode(claims), _AAD + header)
    return PREFIX + base64.urlsafe_b64encode(header + nonce[:_NONCE] + sealed).decode().rstrip("=")


def open_token(ring: KeyRing, token: str, now: float) -> Claims | None:
    """The claims of an authentic token sealed under a still-valid key, else None."""
    if not token.startswith(PREFIX) or len(token) > 16384:
        return None
    text = token[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != text:  # only the one canonical spelling
        return None
    if len(raw) < _HEADER.size + _NONCE + 16:
        return None
    version, epoch = _HEADER.unpack_from(raw)
    if version != VERSION or not ring.oldest_valid_epoch(now) <= epoch <= ring.epoch(now) + 1:
        return None
    header, nonce, sealed = raw[:_HEADER.size], raw[_HEADER.size:_HEADER.size + _NONCE], raw[_HEADER.size + _NONCE:]
    try:
        plain = ring.key(epoch).decrypt(nonce, sealed, _AAD + header)
        return _decoder.decode(plain)
    except (InvalidTag, msgspec.DecodeError, msgspec.ValidationError):
        return None


def outlived(ring: KeyRing, token: str, now: float) -> bool:
    """Was this token sealed in an epoch so old that any session from it has expired? (Such a
    token is refused as expired, whether or not it is authentic: the old key no longer counts.)"""
    epoch = sealed_epoch(token)
    return epoch is not None and epoch < ring.oldest_valid_epoch(now)


def sealed_epoch(token: str) -> int | None:
    """The key epoch a token's header names (None: no header of this version)."""
    text = token[len(PREFIX):] if token.startswith(PREFIX) else ""
    try:
        raw = base64.urlsafe_b64decode(text[:8] + "=" * (-len(text[:8]) % 4))
        version, epoch = _HEADER.unpack_from(raw)
    except (ValueError, TypeError, struct.error):
        return None
    return epoch if version == VERSION else None


def policy_digest(policy: str) -> str:
    return hashlib.sha256(policy.encode()).hexdigest()[:16] if policy else ""
