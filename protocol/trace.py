"""Pure protocol: what a message on the bus looks like to someone learning the system, with no secret.

:func:`describe` turns an :class:`~protocol.envelope.Envelope` into a :class:`TraceEvent`: who
sent it to whom, when (the sender's simulated clock), its body's type, its correlation (message
id, the id it answers, the trace id) and a few **key fields**, as strings under their wire
(PascalCase) names. Secrets never make it into the key fields, whatever message carries them:

* a field is left out when its name says it is secret: ``AccessKeySecret``, ``SecurityToken``,
  ``Signature``, ``SigningKey``, ``StringToSign``, any ``*Secret*``, ``*Password*``, and any
  ``*Token`` other than the paging ``NextToken`` and the metadata setting ``HttpTokens``;
* policy documents (``PolicyDocument``, ``AssumeRolePolicyDocument``, a session ``Policy``)
  are trimmed to their first :data:`DOCUMENT_CHARS` characters: a policy is not secret, but
  a line of a sequence diagram is no place for one;
* ``UserData`` (what a user gave the instance, which may hold anything) is left out too;
* nested values are flattened two levels (``View.Credentials.AccessKeyId``, ``Caller`` as its
  ARN), lists are counted, maps (``RequestContext``) left out; at most :data:`MAX_FIELDS`
  fields, those named in :data:`KEY_NAMES` first, each at most :data:`VALUE_CHARS` characters.

The tap (``services/runtime/tap.py``) yields only these, ``ramsim trace`` draws them, the tour
and the console show them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.base import Shape
from protocol.envelope import Envelope

DOCUMENT_CHARS = 48
VALUE_CHARS = 80
MAX_FIELDS = 10
MAX_DEPTH = 2
SECRET_NAMES = frozenset({"AccessKeySecret", "SecurityToken", "Signature", "SigningKey", "StringToSign", "Token",
                          "MetadataToken", "SessionPolicy", "UserData"})
# what a reader of a sequence diagram looks for first (by the last segment of a field's name)
KEY_NAMES = ("Code", "InstanceId", "InstanceIds", "RamRoleName", "RoleName", "RoleArn", "RoleSessionName", "AccessKeyId",
             "Expiration", "ExpiresAt", "PolicyName", "PolicyType", "UserName", "Caller", "NoPermissionType", "AuthAction",
             "Generation", "HostId", "Message")
NOT_SECRET_TOKENS = frozenset({"NextToken", "HttpTokens"})
DOCUMENTS = frozenset({"PolicyDocument", "AssumeRolePolicyDocument", "NewAssumeRolePolicyDocument", "Policy", "Document"})
REDACTED = "***"


class TraceEvent(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One message on the bus, redacted. ``time``: the sender's send time (simulated epoch seconds);
    ``type``: the body's tag (``AssumeRole``, ``Error``, ``RoleAttachedToInstance``); ``fields``:
    key fields by wire name, never a secret; ``topic``: where it travelled (when known)."""

    time: float
    src: str
    dest: str
    type: str
    msg_id: int
    in_reply_to: int | None = None
    trace_id: str = ""
    fields: dict[str, str] = {}
    topic: str = ""

    @property
    def is_event(self) -> bool:
        """A broadcast (``dest`` "*") rather than a direct message."""
        return self.dest == "*"


def trace_id_of(request_id: str) -> str:
    """The trace id the gateway gives the messages of the API call answered with ``request_id``
    (so a client that has the RequestId of an answer can find what the call caused on the bus)."""
    return request_id.replace("-", "")[:16].lower()


def is_secret(name: str) -> bool:
    """Whether a field of this wire name may hold a secret (and so never leaves :func:`describe`)."""
    if name in SECRET_NAMES or "Secret" in name or "Password" in name or "password" in name.lower():
        return True
    return name.endswith(("Token", "Tokens")) and name not in NOT_SECRET_TOKENS


def describe(envelope: Envelope, topic: str = "") -> TraceEvent:
    """The redacted :class:`TraceEvent` of ``envelope`` (``topic``: where it was seen, if known)."""
    body = envelope.body
    found: dict[str, str] = {}
    _collect(body, "", found, depth=0)
    return TraceEvent(time=envelope.sent_at, src=envelope.src, dest=envelope.dest, type=type(body).__name__,
                      msg_id=envelope.msg_id, in_reply_to=envelope.in_reply_to, trace_id=envelope.trace_id,
                      fields=_key_fields(found), topic=topic)


def _key_fields(found: dict[str, str]) -> dict[str, str]:
    """The fields named in :data:`KEY_NAMES` first (in that order), then the rest as they come; at most :data:`MAX_FIELDS`."""
    rank = {name: i for i, name in enumerate(KEY_NAMES)}
    order = sorted(found, key=lambda k: rank.get(k.rsplit(".", 1)[-1], len(rank)))[:MAX_FIELDS]
    return {k: found[k] for k in order}


def _collect(value: msgspec.Struct, prefix: str, out: dict[str, str], *, depth: int) -> None:
    for info in msgspec.structs.fields(value):
        if len(out) >= 8 * MAX_FIELDS:  # a bound on the work, not the answer (see _key_fields)
            return
        name = info.encode_name
        if name == "type" or is_secret(name):
            continue
        item = getattr(value, info.name)
        if item is None or item == info.default or (info.default_factory is not msgspec.NODEFAULT and item == info.default_factory()):
            continue
        key = f"{prefix}{name}"
        text = _text(name, item, key, out, depth)
        if text is not None:
            out[key] = text


def _text(name: str, item: Any, key: str, out: dict[str, str], depth: int) -> str | None:
    if name == "Caller" and isinstance(item, Shape):
        return _trim(str(getattr(item, "arn", "")), VALUE_CHARS)
    if isinstance(item, Shape):
        if depth < MAX_DEPTH:
            _collect(item, key + ".", out, depth=depth + 1)
        return None
    if isinstance(item, (list, tuple)):
        if item and all(isinstance(x, str) for x in item) and len(item) <= 3:
            return _trim(",".join(item), VALUE_CHARS)
        return f"[{len(item)}]"
    if isinstance(item, dict):
        return None
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, float):
        return f"{item:.3f}"
    text = str(item)
    return _trim(text, DOCUMENT_CHARS if name in DOCUMENTS else VALUE_CHARS)


def _trim(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
