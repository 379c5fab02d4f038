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

An API command naming a caller its sender may not claim (:func:`may_call`: only the gateway
speaks for the principals it authenticated) is refused the same way by every node, a core's
driver or a bus client (the gateway, OSS): logged, answered ``NoPermission``, recorded as a
``caller_refused`` dead letter (:meth:`Endpoint.refuse_caller`).

Every message a node drops is also recorded on its dead-letter topic (``topics.deadletter``,
:meth:`Endpoint.dead_letter`): why, where it came in, its size and SHA-256, never its bytes.
Recording is best-effort: a failed publish is logged and intake goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from typing import Callable

import msgspec
import structlog

from protocol import codec, errors, topics
from protocol.base import Message
from protocol.envelope import Envelope
from protocol.errors import ProtocolError, TopicError
from protocol.messages.common import SERVICE_PRINCIPALS, ApiCommand, DeadLetter, DropReason, Ping, PingOk
from services.runtime.bus import Bus
from services.runtime.clock import Clock
from services.runtime.entropy import Entropy, SystemEntropy

log = structlog.get_logger("bus_client")
LETTER_TEXT = 200  # longest text a dead letter copies from what it describes (a src, a topic, a reason)
MAX_TRACE_ID = 64  # a longer trace id (ours are 16 hex digits) is not carried on: an answer must not outgrow its question


class _Header(msgspec.Struct):
    """Just enough of an envelope to answer one whose body is unreadable."""

    src: str
    msg_id: int
    trace_id: str = ""
    in_reply_to: int | None = None

    @property
    def answerable(self) -> bool:
        """A reply is never answered, even with an error: two nodes would trade errors forever."""
        return self.in_reply_to is None


_header_decoder = msgspec.msgpack.Decoder(_Header)


def forged(topic: str, src: str) -> bool:
    """True when a direct message's envelope names a sender other than the one its topic
    (vouched for by the broker) names. Messages on other topics (events) are not direct."""
    sender = topics.sender(topic)
    return sender is not None and sender != src


GATEWAYS = frozenset({"gateway"})  # the nodes that authenticate API callers


def may_call(env: Envelope) -> bool:
    """May ``env.src`` (vouched for by the broker) send this API command with its ``caller``?

    The gateway speaks for the principals it authenticated; a service speaks only as itself
    (``ecs`` as ``ecs.aliyuncs.com``), and only a node that is one of the cloud's services
    (:data:`~protocol.messages.common.SERVICE_PRINCIPALS`): ``operator.aliyuncs.com`` is no
    one. Nobody else may claim a caller. A command without a caller passes: the core refuses
    it as unauthenticated."""
    caller = getattr(env.body, "caller", None)
    if caller is None or env.src in GATEWAYS:
        return True
    arn = f"{env.src}.aliyuncs.com"
    return caller.identity_type == "Service" and caller.arn == arn and arn in SERVICE_PRINCIPALS


def ping_answer(node: str, started_at: float, ready: bool) -> Message:
    """What ``node`` answers a Ping: PingOk once it serves everything it offers; until then a
    definite ``ServiceUnavailable`` ("starting"), so that whoever waits for it (``ramsim up``)
    waits on (a core not yet registered, an HTTP front not yet listening)."""
    if ready:
        return PingOk(node=node, started_at=started_at)
    return errors.error("ServiceUnavailable", f"{node} is starting", 503, definite=True)


def reply_address(payload: bytes) -> _Header | None:
    """The sender and msg id of a message that failed to decode, if those parts are readable."""
    try:
        return _header_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None


def carried_trace(trace_id: str) -> str:
    """A trace id as it may be carried on (an overlong one is dropped, not echoed back)."""
    return trace_id if len(trace_id) <= MAX_TRACE_ID else ""


def _clip(text: str) -> str:
    return text if len(text) <= LETTER_TEXT else text[:LETTER_TEXT] + "..."


def dead_letter(node: str, topic: str, payload: bytes, reason: DropReason, *, field: str = "", detail: str = "",
                src: str = "", body: str = "") -> DeadLetter:
    """What ``node`` records about ``payload``, dropped for ``reason``: never the bytes themselves."""
    return DeadLetter(node=node, topic=_clip(topic), reason=reason, size=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                      field=_clip(field), detail=_clip(detail), src=_clip(src), body=_clip(body))


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
        """Answer ``request``. A sender that cannot be addressed (no topic can name it: only a message
        on a topic the broker does not vouch for can claim one) is logged and not answered."""
        try:
            await self.send(request.src, body, trace_id=carried_trace(request.trace_id), in_reply_to=request.msg_id)
        except TopicError:
            log.warning("reply_unaddressable", node=self.node_id, src=_clip(request.src), body=type(body).__name__)

    async def refuse_caller(self, env: Envelope, topic: str, payload: bytes) -> bool:
        """Refuse ``env``, an API command whose caller its sender may not claim (:func:`may_call`):
        a log line, a ``NoPermission`` answer, a ``caller_refused`` dead letter (True if published)."""
        caller = getattr(env.body, "caller", None)
        arn = caller.arn if caller is not None else ""
        log.warning("caller_refused", node=self.node_id, src=_clip(env.src), caller=_clip(arn), body=type(env.body).__name__)
        await self.reply(env, errors.no_permission(f"{env.src} may not make API calls on behalf of others."))
        letter = dead_letter(self.node_id, topic, payload, "caller_refused", src=env.src, body=type(env.body).__name__,
                             detail=f"caller {arn}")
        return await self.dead_letter(letter, trace_id=env.trace_id)

    async def dead_letter(self, letter: DeadLetter, *, trace_id: str = "") -> bool:
        """Publish ``letter`` on this node's dead-letter topic. Best-effort: False (and a log line)
        if the publish failed; never raises, so dropping a message cannot break intake."""
        try:
            await self.publish(topics.deadletter(self.node_id), letter, trace_id=carried_trace(trace_id))
            return True
        except Exception as exc:  # noqa: BLE001  # whatever the transport says, intake goes on
            log.warning("dead_letter_unpublished", node=self.node_id, reason=letter.reason, error=repr(exc)[:LETTER_TEXT])
            return False


class BusClient(Endpoint):
    """Request/response over the bus for shells that are not cores."""

    def __init__(self, bus: Bus, node_id: str, clock: Clock, *, on_message: Callable[[Envelope], None] | None = None,
                 ready: bool = True, share_group: str = "", replies_from: tuple[str, ...] = ()) -> None:
        super().__init__(bus, node_id, clock)
        # A stateless worker (``ramsim up --gateway-workers``), as a core's driver does it: the inbox is a
        # shared subscription (a request, a Ping, reaches one worker of the group); the replies from the
        # nodes it asks (``replies_from``) come to every worker on plain subscriptions, and a worker
        # ignores, quietly, those to requests another worker made (msg ids start at a random point per process).
        self.share_group = share_group
        self.replies_from = replies_from
        self.ready = ready  # False until its shell serves (an HTTP front listening): Pings are answered "starting"
        self._waiting: dict[int, tuple[str, asyncio.Future[Message]]] = {}  # msg id -> (who was asked, answer)
        self._echoes: dict[int, asyncio.Future[None]] = {}  # our own markers, on their way through the broker
        self._started_at = clock.now()
        self._on_message = on_message
        self.forged = 0  # direct messages dropped: their src was not the topic's sender, or they named a caller it may not claim
        self.malformed = 0  # messages dropped because they did not decode
        self.unexpected = 0  # replies to nothing this client is waiting for (late, duplicated, or from the wrong node)
        self.failed = 0  # messages whose on_message handler raised

    async def start(self) -> "BusClient":
        inbox = [topics.inbox_filter(self.node_id)]
        if self.share_group:
            inbox = [topics.shared(self.share_group, inbox[0]), *(topics.inbox(self.node_id, src) for src in self.replies_from)]
        for topic_filter in inbox:
            await self.bus.subscribe(topic_filter, self._receive)
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
            self.malformed += 1
            header = reply_address(payload)
            log.warning("message_malformed", topic=topic, field=exc.field, reason=exc.reason, src=header.src if header else None)
            if header is not None and header.answerable and not forged(topic, header.src):
                await self.reply(header, errors.malformed(exc.field, exc.reason))
            await self.dead_letter(dead_letter(self.node_id, topic, payload, "malformed", field=exc.field, detail=exc.reason,
                                               src=header.src if header else ""))
            return
        if forged(topic, env.src):
            log.warning("message_forged", topic=topic, src=env.src, body=type(env.body).__name__)
            self.forged += 1
            await self.dead_letter(dead_letter(self.node_id, topic, payload, "forged", src=env.src, body=type(env.body).__name__))
            return
        waiting = self._waiting.get(env.in_reply_to) if env.in_reply_to is not None else None
        future = waiting[1] if waiting is not None and waiting[0] == env.src else None  # only the node asked may answer
        if isinstance(env.body, Ping) and env.src == self.node_id and env.msg_id in self._echoes:
            echo = self._echoes.pop(env.msg_id)
            if not echo.done():
                echo.set_result(None)
        elif isinstance(env.body, Ping):
            await self.reply(env, ping_answer(self.node_id, self._started_at, self.ready))
        elif future is not None and not future.done():
            future.set_result(env.body)
        elif env.in_reply_to is not None and self.share_group:  # another worker's reply (or a second copy of ours)
            log.debug("reply_for_another_worker", node=self.node_id, src=env.src, in_reply_to=env.in_reply_to)
        elif env.in_reply_to is not None:
            self.unexpected += 1
            log.info("reply_unexpected", node=self.node_id, src=env.src, in_reply_to=env.in_reply_to, body=type(env.body).__name__)
            await self.dead_letter(dead_letter(self.node_id, topic, payload, "unexpected_reply", src=env.src, body=type(env.body).__name__,
                                               detail=f"in reply to {env.in_reply_to}"), trace_id=env.trace_id)
        elif isinstance(env.body, ApiCommand) and not may_call(env):
            self.forged += 1  # as a driver counts it
            await self.refuse_caller(env, topic, payload)
        elif self._on_message is not None:
            try:
                self._on_message(env)
            except Exception:  # noqa: BLE001  # a failing handler drops this message, not the client
                self.failed += 1
                log.exception("message_handler_failed", node=self.node_id, src=env.src, body=type(env.body).__name__)
                await self.dead_letter(dead_letter(self.node_id, topic, payload, "core_failed", src=env.src, body=type(env.body).__name__),
                                       trace_id=env.trace_id)


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
