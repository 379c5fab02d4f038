"""Pure protocol: the shapes of Alibaba identifiers, made from entropy the caller supplies."""

from __future__ import annotations

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_UPPER_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


_TABLES: dict[str, bytes] = {}


def _chars(entropy: bytes, alphabet: str) -> str:
    """Each byte as ``alphabet[byte % len(alphabet)]`` (one translate: ids are minted on hot paths)."""
    table = _TABLES.get(alphabet)
    if table is None:
        table = _TABLES[alphabet] = bytes(ord(alphabet[b % len(alphabet)]) for b in range(256))
    return bytes(entropy).translate(table).decode("ascii")


def instance_id(entropy: bytes) -> str:
    """``i-`` and 20 lower-case alphanumerics, like ``i-bp13znx0m0me8cquu8a1``."""
    return "i-" + _chars(entropy[:20], _ALNUM)


def access_key_id(entropy: bytes, *, sts: bool = False) -> str:
    """``LTAI`` + 20 chars for AccessKeys; ``STS.`` + 24 chars for STS credentials."""
    return ("STS." + _chars(entropy[:24], _UPPER_ALNUM)) if sts else ("LTAI" + _chars(entropy[:20], _UPPER_ALNUM))


def secret(entropy: bytes) -> str:
    """30 characters, as Alibaba's AccessKeySecrets."""
    return _chars(entropy[:30], _UPPER_ALNUM)


def numeric_id(entropy: bytes, digits: int = 16) -> str:
    """A decimal id (account ids, user ids, role ids) of ``digits`` digits, no leading zero."""
    value = int.from_bytes(entropy, "big")
    low = 10 ** (digits - 1)
    return str(low + value % (9 * low))
