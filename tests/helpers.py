"""Test helpers shared by core tests: envelopes, principals, effect filters, deterministic entropy."""

from __future__ import annotations

import itertools
import random
from typing import TypeVar

from protocol.base import Message
from protocol.envelope import Envelope
from protocol.messages.common import Principal
from services.runtime.effects import Effect, Publish, Reply, Request

T = TypeVar("T")
ACCOUNT = "1234567890123456"
T0 = 1_700_000_000.0  # explicit time for core tests: 2023-11-14T22:13:20Z
_ids = itertools.count(1)


def envelope(body: Message, *, src: str = "gateway", dest: str = "core", in_reply_to: int | None = None) -> Envelope:
    return Envelope(src=src, dest=dest, msg_id=next(_ids), body=body, in_reply_to=in_reply_to, trace_id="t", sent_at=T0)


def entropy(seed: int = 7):
    """A deterministic ``entropy(n) -> bytes`` for cores."""
    rng = random.Random(seed)
    return rng.randbytes


def root(account: str = ACCOUNT) -> Principal:
    return Principal(identity_type="Account", account_id=account, arn=f"acs:ram::{account}:root", principal_id=account)


def replies(effects: list[Effect]) -> list[Message]:
    return [e.body for e in effects if isinstance(e, Reply)]


def reply(effects: list[Effect]) -> Message:
    """The single reply among ``effects``."""
    found = replies(effects)
    assert len(found) == 1, f"expected one reply, got {found}"
    return found[0]


def requests(effects: list[Effect]) -> list[Request]:
    return [e for e in effects if isinstance(e, Request)]


def published(effects: list[Effect], kind: type[T]) -> list[T]:
    return [e.body for e in effects if isinstance(e, Publish) and isinstance(e.body, kind)]  # type: ignore[misc]
