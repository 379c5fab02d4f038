"""Pure protocol: the base class every message body derives from.

Bodies are msgspec Structs tagged by their class name in a ``type`` field. Field names are
snake_case in Python and PascalCase on the wire (``role_name`` travels as ``RoleName``), so
a message is spelled exactly like the Alibaba API parameters it carries and an API call can be
converted straight from its query parameters.

Naming: commands are imperative (``AssumeRole``), replies add ``Ok`` (``AssumeRoleOk``),
broadcast events are past tense (``PolicyAttachedToRole``), and every failure is the single
:class:`protocol.errors.Error` body.
"""

from __future__ import annotations

import msgspec


class Message(msgspec.Struct, tag_field="type", rename="pascal", kw_only=True, omit_defaults=True):
    """A message body. Subclasses are tagged with their class name."""


class Shape(msgspec.Struct, rename="pascal", kw_only=True, omit_defaults=True):
    """A nested value inside a message (not a message itself, so untagged)."""
