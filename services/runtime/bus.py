"""I/O shell: the ``Bus`` interface both transports implement.

Contract (checked by ``tests/services/runtime/test_bus_contract.py`` against both):

* ``subscribe(filter, handler)`` returns once the subscription is active; a message published
  afterwards to a matching topic reaches ``handler(topic, payload)``.
* Delivery is at-least-once (QoS 1); a message is acknowledged only after every matching
  handler has returned, so a crash mid-handling leads to redelivery, never loss.
* A handler that raises is logged; the bus keeps delivering.
* Messages from one publisher to one topic arrive in order.
* ``open()`` starts delivery. A bus may be connected "held" so that messages kept for it by a
  persistent session wait until every handler is subscribed; owners call ``open()`` after
  their subscriptions.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol, Sequence

import structlog

from protocol.topics import matches

Handler = Callable[[str, bytes], Awaitable[None]]
log = structlog.get_logger("bus")


class Bus(Protocol):
    client_id: str

    async def subscribe(self, topic_filter: str, handler: Handler) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None: ...

    def open(self) -> None: ...

    async def close(self) -> None: ...


class BusError(Exception):
    """The transport failed in a way the caller must see (cannot connect, subscribe refused)."""


async def deliver(handlers: Sequence[tuple[str, Handler]], topic: str, payload: bytes, client_id: str) -> None:
    """Run every handler whose filter matches ``topic``, in order; a failing one is logged."""
    for topic_filter, handler in list(handlers):
        if matches(topic_filter, topic):
            try:
                await handler(topic, payload)
            except Exception:
                log.exception("handler_failed", topic=topic, client_id=client_id)
