"""I/O shell: a node's address on the bus, and request/response for code that is not a core.

:class:`Endpoint` stamps envelopes (msg ids unique per sender, trace ids, send time) and
publishes them; the driver of a core and :class:`BusClient` both use it. :class:`BusClient`
is for shells that await answers directly (the gateway, ``ramsim up``, tests): replies are
matched to requests by ``in_reply_to``, and a request without a reply in time gets an
indefinite :func:`protocol.errors.timeout` error, never a guess.

A direct message travels on ``topics.inbox(dest, src)``; over a broker with ramsim's ACLs the
``from`` segment is the sender's broker identity, so a node's id must be its broker username.
:func:`forged` is the receiving side's rule: an envelope whose ``src`` is not the
topic's ``from`` segment is forged and dropped. A reply counts only from the node asked.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable

import msgspec
import structlog

from protocol import codec, errors, topics
from protocol.base import Message
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages.common import Ping, PingOk
from services.runtime.bus import Bus
from services.runtime.clock import Clock
from services.runtime.entropy import Entropy, SystemEntropy

log = structlog.get_logger("bus_client")


class _Header(msgspec.Struct):
    """Just enough of an envelope to answer one whose body is unreadable."""

    src: str
    msg_id: int
    trace_id: str = ""


_header_decoder = msgspec.msgpack.Decoder(_Header)


def forged(topic: str, src: str) -> bool:
    """True when a direct message's envelope names a sender other than the one its topic
    (vouched for by the broker) names. Messages on other topics (events) are not direct."""
    sender = topics.sender(topic)
    return sender is not None and sender != src


def reply_address(payload: bytes) -> _Header | None:
    """The sender and msg id of a message that failed to decode, if those parts are readable."""
    try:
        return _header_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Endpoint:
    def __init__(self, bus: Bus, node_id: str, clock: Clock, entropy: Entropy | None = None) -> None:
        self.bus = bus
        self.node_id = node_id
        self.clock = clock
        self._entropy = entropy or SystemEntropy()
        # Start msg ids at a random point so a restarted node does not reuse recent ids.
        self._ids = itertools.count(int.from_bytes(self._entropy.token_bytes(6), "big") << 8)

    def new_trace_id(self) -> str:
        return self._entropy.token_bytes(8).hex()

    def envelope(self, dest: str, body: Message, *, in_reply_to: int | None = None, trace_id: str = "") -> Envelope:
        return Envelope(src=self.node_id, dest=dest, msg_id=next(self._ids), body=body,
                        in_reply_to=in_reply_to, trace_id=trace_id, sent_at=self.clock.now())

    async def send(self, dest: str, body: Message, *, trace_id: str = "", in_reply_to: int | None = None) -> Envelope:
        env = self.envelope(dest, body, in_reply_to=in_reply_to, trace_id=trace_id)
        await self.post(env)
        return env

    async def post(self, env: Envelope) -> None:
        """Publish a direct message this node stamped, on its ``dest``'s inbox from this node."""
        await self.bus.publish(topics.inbox(env.dest, self.node_id), codec.encode(env))

    async def publish(self, topic: str, body: Message, *, trace_id: str = "") -> Envelope:
        env = self.envelope("*", body, trace_id=trace_id)
        await self.bus.publish(topic, codec.encode(env))
        return env

    async def reply(self, request: Envelope | _Header, body: Message) -> None:
        await self.send(request.src, body, trace_id=request.trace_id, in_reply_to=request.msg_id)


class BusClient(Endpoint):
    """Request/response over the bus for shells that are not cores."""

    def __init__(self, bus: Bus, node_id: str, clock: Clock, *, on_message: Callable[[Envelope], None] | None = None) -> None:
        super().__init__(bus, node_id, clock)
        self._waiting: dict[int, tuple[str, asyncio.Future[Message]]] = {}  # msg id -> (who was asked, answer)
        self._echoes: dict[int, asyncio.Future[None]] = {}  # our own markers, on their way through the broker
        self._started_at = clock.now()
        self._on_message = on_message
        self.forged = 0  # direct messages dropped because their src was not the topic's sender

    async def start(self) -> "BusClient":
        await self.bus.subscribe(topics.inbox_filter(self.node_id), self._receive)
        self.bus.open()
        return self

    async def request(self, dest: str, body: Message, *, timeout: float = 5.0, trace_id: str = "") -> Message:
        """Send ``body`` to ``dest`` and return its reply body (an ``Error`` is returned, not raised)."""
        env = self.envelope(dest, body, trace_id=trace_id or self.new_trace_id())
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[env.msg_id] = (dest, future)
        try:
            await self.post(env)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return errors.timeout(dest)
        finally:
            self._waiting.pop(env.msg_id, None)

    async def echo(self, *, timeout: float = 5.0) -> bool:
        """Send a marker to ourselves through the broker and wait for it to come back: one hop,
        queued behind everything the broker received for us before it. False on a timeout."""
        env = self.envelope(self.node_id, Ping())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echoes[env.msg_id] = future
        try:
            await self.bus.publish(topics.inbox(self.node_id, self.node_id), codec.encode(env))
            await asyncio.wait_for(future, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._echoes.pop(env.msg_id, None)

    async def _receive(self, topic: str, payload: bytes) -> None:
        try:
            env = codec.decode(payload)
        except ProtocolError as exc:
            header = reply_address(payload)
            log.warning("message_malformed", topic=topic, field=exc.field, reason=exc.reason, src=header.src if header else None)
            if header is not None and not forged(topic, header.src):
                await self.reply(header, errors.malformed(exc.field, exc.reason))
            return
        if forged(topic, env.src):
            log.warning("message_forged", topic=topic, src=env.src, body=type(env.body).__name__)
            self.forged += 1
            return
        waiting = self._waiting.get(env.in_reply_to) if env.in_reply_to is not None else None
        future = waiting[1] if waiting is not None and waiting[0] == env.src else None  # only the node asked may answer
        if isinstance(env.body, Ping) and env.src == self.node_id and env.msg_id in self._echoes:
            echo = self._echoes.pop(env.msg_id)
            if not echo.done():
                echo.set_result(None)
        elif isinstance(env.body, Ping):
            await self.reply(env, PingOk(node=self.node_id, started_at=self._started_at))
        elif future is not None and not future.done():
            future.set_result(env.body)
        elif self._on_message is not None:
            self._on_message(env)


class BusBarrier:
    """Wait until everything the broker received for this client before now has been handled.

    A request that reaches a service by another road (HTTP) can overtake an event already on its
    way over the bus: the client saw RAM's reply to a policy change, so RAM's event was at the
    broker before the client's next HTTP request was sent. A marker sent to ourselves through the broker
    queues behind that event in our one ordered inbox; once its answer is back, the event has been
    handled. Concurrent waiters share a ping sent after they arrived, so under load the cost is
    one round trip per batch, not per request.
    """

    def __init__(self, client: BusClient, *, timeout: float = 5.0) -> None:
        self.client = client
        self.timeout = timeout
        self._arrivals = 0
        self._covers = 0
        self._ping: asyncio.Future[bool] | None = None

    async def wait(self) -> bool:
        """True once the bus has caught up; False if the ping timed out (the broker is away)."""
        self._arrivals += 1
        me = self._arrivals
        while True:
            ping = self._ping
            if ping is not None and self._covers >= me:
                return await asyncio.shield(ping)
            if ping is None:
                self._covers = self._arrivals
                ping = self._ping = asyncio.ensure_future(self.client.echo(timeout=self.timeout))
                ping.add_done_callback(self._done)
            else:
                await asyncio.shield(ping)  # sent before we arrived: wait it out, then join a newer one

    def _done(self, ping: asyncio.Future[bool]) -> None:
        if self._ping is ping:
            self._ping = None
