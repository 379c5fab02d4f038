"""I/O shell: the trace tap: every message on a cluster's bus, as redacted :class:`TraceEvent`s.

::

    async with Tap(cluster.broker_url(broker.TRACE)) as events:   # or Tap.for_cluster(cluster_file)
        async for event in events:                                # protocol.trace.TraceEvent
            print(event.src, "->", event.dest, event.type, event.fields)

It joins the broker as the read-only ``trace`` identity (``services/cli/broker.py``: it reads
``ramsim/#`` and may write nothing, not even its own outbox), with a client id of its own per
connection (:func:`services.cli.broker.tool_client_id`, so two taps never take each other's
session), and a clean session: it sees what is published while it is connected, no history.

The tap holds the raw messages for as long as it takes to describe them and yields only the
redacted description (:func:`protocol.trace.describe`): never a payload, never a secret, even
though the trace identity's subscription carries credentials (ECS's pushes to the agents, STS's
AssumeRoleOk). Bytes that do not decode are counted (:attr:`Tap.malformed`), not yielded; a
message delivered twice (QoS 1 is at-least-once) is yielded once. When the reader falls behind by
``max_queue`` events the newest are dropped and counted (:attr:`Tap.dropped`): a tap never slows
the bus down.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import AsyncIterator

from protocol import codec, topics
from protocol.errors import ProtocolError
from protocol.trace import TraceEvent, describe
from services.cli import broker
from services.runtime.mqtt_bus import MqttBus

DEDUPE_WINDOW = 4096  # (src, msg_id, topic) of the last messages seen


class Tap:
    """An async context manager and async iterator of :class:`TraceEvent` (see the module)."""

    def __init__(self, broker_url: str, *, identity: str = broker.TRACE, client_id: str | None = None,
                 topic_filter: str | None = None, max_queue: int = 10_000) -> None:
        self.broker_url = broker_url
        self.identity = identity
        self.client_id = client_id or broker.tool_client_id(identity)
        self.topic_filter = topic_filter or topics.everything()
        self.malformed = 0   # messages that did not decode (not yielded)
        self.dropped = 0     # events dropped because the reader fell behind
        self.seen = 0        # events queued
        self._queue: asyncio.Queue[TraceEvent] = asyncio.Queue(max_queue)
        self._recent: collections.OrderedDict[tuple[str, int, str], None] = collections.OrderedDict()
        self._bus: MqttBus | None = None

    @classmethod
    def for_cluster(cls, cluster_file: str | Path | None = None, **kwargs: object) -> "Tap":
        """A tap on the cluster of ``cluster_file`` (default: ``services.cli.cluster.locate``)."""
        return cls(cluster_url(cluster_file), **kwargs)  # type: ignore[arg-type]

    async def __aenter__(self) -> "Tap":
        self._bus = await MqttBus.connect(self.broker_url, self.client_id, persistent=False)
        try:
            await self._bus.subscribe(self.topic_filter, self._on_message)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._bus is not None:
            bus, self._bus = self._bus, None
            await bus.close()

    def __aiter__(self) -> AsyncIterator[TraceEvent]:
        return self

    async def __anext__(self) -> TraceEvent:
        return await self._queue.get()

    async def get(self, timeout: float | None = None) -> TraceEvent | None:
        """The next event, or None when none came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def drain(self) -> list[TraceEvent]:
        """Every event queued so far, without waiting."""
        out: list[TraceEvent] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    async def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            envelope = codec.decode(payload)
        except ProtocolError:
            self.malformed += 1
            return
        key = (envelope.src, envelope.msg_id, topic)
        if key in self._recent:
            return
        self._recent[key] = None
        if len(self._recent) > DEDUPE_WINDOW:
            self._recent.popitem(last=False)
        try:
            self._queue.put_nowait(describe(envelope, topic))
            self.seen += 1
        except asyncio.QueueFull:
            self.dropped += 1


def tap(broker_url: str, identity: str = broker.TRACE, **kwargs: object) -> Tap:
    """``async with tap(url) as events: async for event in events: ...`` (see :class:`Tap`)."""
    return Tap(broker_url, identity=identity, **kwargs)  # type: ignore[arg-type]


def cluster_url(cluster_file: str | Path | None = None, identity: str = broker.TRACE) -> str:
    """The broker URL of ``identity`` for the ``ramsim up`` cluster of ``cluster_file``.

    The cluster file names the broker (its tools listener) and the state directory; the
    identity's password is read from that directory's ``keys.json`` (mode 0600, the cluster
    owner's). The URL holds the password: never print it (``broker.without_password``)."""
    from services.cli import cluster, keys
    from services.cli.errors import CliError
    from services.runtime.mqtt_bus import parse_url

    file = cluster.load(cluster.locate(str(cluster_file) if cluster_file is not None else None))
    kept = keys.load(Path(file.state_dir))
    password = kept.broker_passwords.get(identity) if kept is not None else None
    if not password:
        raise CliError(f"the cluster in {file.state_dir} has no {identity!r} broker identity: restart it with this ramsim "
                       "(`ramsim up` in the same --state-dir keeps its state and adds the identity)")
    host, port, _, _ = parse_url(file.broker_url)
    return broker.url(host, port, identity, password)
