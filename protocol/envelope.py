"""Pure protocol: the one envelope around every message.

Correlation lives here, not in MQTT 5 properties, so the protocol runs on any MQTT 3.1.1 or 5
broker and inside the simulator (after Maelstrom's ``src``/``dest``/``msg_id``/``in_reply_to``).
"""

from __future__ import annotations

from typing import Union

import msgspec

from protocol.messages import ALL

Body = Union[ALL]  # type: ignore[valid-type]  # the tagged union of every message body


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    src: str            # sending node ("ram", "ecs", "metadata-h1", "gateway", "cli-3f2a")
    dest: str           # receiving node, or "*" for a broadcast event
    msg_id: int         # unique per sender; (src, msg_id) identifies a message
    body: Body
    in_reply_to: int | None = None  # msg_id of the request this answers
    trace_id: str = ""  # carried unchanged through every message a request causes
    sent_at: float = 0.0  # sender's clock (simulated time), epoch seconds
