"""Pure protocol: msgpack encoding and one typed decoder, built once.

The bytes are plain msgpack maps (any msgpack library reads them). Decoding never raises
anything but :class:`protocol.errors.ProtocolError`, which names the failing field.
"""

from __future__ import annotations

import re

import msgspec

from protocol.envelope import Envelope
from protocol.errors import ProtocolError

MAX_MESSAGE_BYTES = 256 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)
_AT = re.compile(r" - at `([^`]*)`$")


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(data: bytes) -> Envelope:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError("$", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _AT.search(text)
        field = found.group(1) if found else "$"
        reason = text[: found.start()] if found else text
        raise ProtocolError(field, reason) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("$", f"not msgpack: {exc}") from None
    except RecursionError:  # msgspec's depth limit (deeply nested arrays or maps, even in skipped fields)
        raise ProtocolError("$", "nested too deeply") from None
    except UnicodeDecodeError as exc:  # msgspec lets a string that is not UTF-8 through as this, not as a DecodeError
        raise ProtocolError("$", f"a string is not UTF-8: {exc.reason}") from None
