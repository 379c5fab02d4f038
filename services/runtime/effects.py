"""Pure core: what cores return. Effects are values, never calls; the driver performs them.

A core implements :class:`Core`. Its shell (the :class:`~services.runtime.driver.Driver`)
feeds it messages and timer ticks with the current time, performs the effects it returns,
correlates replies to its :class:`Request` effects and re-arms one timer at
``next_deadline()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from protocol import errors
from protocol.base import Message
from protocol.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer ``request`` (to its sender, correlated by its msg_id)."""

    request: Envelope
    body: Message


@dataclass(frozen=True, slots=True)
class Send:
    """A one-way message to ``dest``'s node topic."""

    dest: str
    body: Message


@dataclass(frozen=True, slots=True)
class Request:
    """Ask ``dest``; its reply (or a timeout :class:`~protocol.errors.Error`) comes back
    through ``Core.on_reply(context, body, now)``."""

    dest: str
    body: Message
    context: Any
    trace_id: str = ""


@dataclass(frozen=True, slots=True)
class Publish:
    """Broadcast ``body`` on ``topic`` (an event, or a push to an instance topic)."""

    topic: str
    body: Message


@dataclass(frozen=True, slots=True)
class Log:
    event: str
    level: str = "info"
    fields: dict[str, Any] = field(default_factory=dict)


Effect = Reply | Send | Request | Publish | Log


class Core(Protocol):
    node_id: str

    def subscriptions(self) -> Sequence[str]:
        """Topic filters to receive besides the node's own topic."""

    def handle(self, msg: Envelope, now: float) -> list[Effect]: ...

    def on_reply(self, context: Any, body: Message, now: float) -> list[Effect]: ...

    def on_timer(self, now: float) -> list[Effect]: ...

    def next_deadline(self) -> float | None: ...

    # Optional: ``on_reconnect(now) -> list[Effect]``, called after the bus reconnected to the
    # broker (messages may have been missed while away: a core that mirrors another's state resyncs).


@runtime_checkable
class Durable(Protocol):
    """A core whose state survives restarts (the driver persists it; see ``runtime/store.py``).

    ``ROWS`` names each table and the type of its rows; ``dump`` returns every row (the driver
    writes only those whose bytes changed); ``load`` restores a dump at start and returns what to
    do about it (overdue work, logs). ``READ_ONLY`` lists the message types that never change
    state, so the driver need not look for changes after them (the hot path stays cheap).
    ``SEALED`` tables hold secrets and are encrypted at rest."""

    ROWS: dict[str, type]
    SEALED: frozenset[str]
    READ_ONLY: frozenset[type]

    def dump(self) -> dict[str, dict[str, Any]]: ...

    def load(self, rows: dict[str, dict[str, Any]], now: float) -> list[Effect]: ...


Handler = Callable[[Envelope, float], list[Effect]]


def dispatch(table: dict[type, Handler], msg: Envelope, now: float, *, product: str) -> list[Effect]:
    """Route ``msg`` by body type; an unknown type gets ``InvalidApi.NotFound`` (if it is a
    request) or is logged and dropped (if it is an event)."""
    handler = table.get(type(msg.body))
    if handler is not None:
        return handler(msg, now)
    name = type(msg.body).__name__
    if msg.dest == "*":
        return [Log("event_ignored", "debug", {"type": name})]
    return [Reply(msg, errors.unknown_action(product, name)), Log("unknown_action", "warning", {"type": name, "src": msg.src})]
