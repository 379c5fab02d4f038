"""I/O shell: an in-memory bus with MQTT semantics, for the simulator and fast unit tests.

One :class:`MemoryBroker` holds the subscriptions; each :class:`MemoryBus` is one client.
Delivery is asynchronous (a queue per client), in order per client, and acknowledged after the
handlers return, as over MQTT. Never used by the tests that claim end-to-end behaviour.
"""

from __future__ import annotations

import asyncio

from protocol.topics import matches
from services.runtime.bus import Handler, deliver


class MemoryBroker:
    def __init__(self) -> None:
        self._clients: dict[str, MemoryBus] = {}

    def client(self, client_id: str) -> "MemoryBus":
        bus = MemoryBus(self, client_id)
        self._clients[client_id] = bus
        return bus

    def _route(self, topic: str, payload: bytes) -> None:
        for bus in list(self._clients.values()):
            if any(matches(f, topic) for f, _ in bus._handlers):
                bus._inbox.put_nowait((topic, payload))

    def _forget(self, client_id: str) -> None:
        self._clients.pop(client_id, None)


class MemoryBus:
    def __init__(self, broker: MemoryBroker, client_id: str) -> None:
        self.client_id = client_id
        self._broker = broker
        self._handlers: list[tuple[str, Handler]] = []
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._deliver(), name=f"memory-bus:{client_id}")

    async def __aenter__(self) -> "MemoryBus":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def subscribe(self, topic_filter: str, handler: Handler) -> None:
        self._handlers.append((topic_filter, handler))

    def open(self) -> None:
        """Delivery starts at once in memory (there is no session to replay)."""

    async def publish(self, topic: str, payload: bytes) -> None:
        self._broker._route(topic, bytes(payload))

    async def close(self) -> None:
        self._broker._forget(self.client_id)
        self._pump.cancel()
        try:
            await self._pump
        except asyncio.CancelledError:
            pass

    async def _deliver(self) -> None:
        while True:
            topic, payload = await self._inbox.get()
            await deliver(self._handlers, topic, payload, self.client_id)
