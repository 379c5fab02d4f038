"""I/O shell: the driver that owns one core.

One task owns the core: bus messages are queued and fed to it one at a time with the current
time; the effects it returns are performed; one timer is re-armed at
``min(core.next_deadline(), earliest request timeout)``. A bus message is acknowledged (its
handler returns) only after the core handled it and its effects went out.

Bad input never reaches the core: bytes that do not decode are logged and counted, answered
with an ``InvalidParameter.Malformed`` error when the sender and msg id are readable (and they
are not a reply: two nodes must not trade errors forever), and dropped. A direct message whose envelope ``src`` differs from its topic's ``from`` segment (the
sender the broker vouches for) is forged: logged, counted, dropped, never answered; a reply
counts only if it comes from the node the request went to. A core that raises on a message is
logged, the request gets ``InternalError``, and the service keeps running. Every message
dropped (malformed, forged, caller refused, core failed, unexpected reply) is also recorded as
a :class:`~protocol.messages.common.DeadLetter` on ``topics.deadletter(node)``, best-effort.

With a :class:`~services.runtime.store.Store` (a :class:`~services.runtime.effects.Durable`
core), every step that changed the core's rows is committed before its messages leave: the
changed rows, the messages it causes (outbox) and its reply (kept per sender and msg id, so a
redelivered request is answered again, not run again) in one transaction; then the messages
are published. A store that fails to commit stops the service (the supervisor restarts it
from what is on disk) rather than let memory and disk disagree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgspec
import structlog

from protocol import codec, errors, topics
from protocol.envelope import Envelope
from protocol.errors import ProtocolError, TopicError
from protocol.messages.common import ApiCommand, DropReason, Ping
from services.runtime.bus import Bus
from services.runtime.client import Endpoint, carried_trace, dead_letter, forged, may_call, ping_answer, reply_address
from services.runtime.clock import Clock
from services.runtime.effects import Core, Durable, Effect, Log, Publish, Reply, Request, Send
from services.runtime.entropy import Entropy
from services.runtime.store import DEDUPE_WINDOW, Store


@dataclass
class _Pending:
    context: Any
    dest: str
    deadline: float  # loop time
    trace_id: str = ""  # the request's: what its answer (or timeout) causes carries it on


@dataclass
class Counters:
    received: int = 0
    malformed: int = 0
    forged: int = 0
    failed: int = 0
    timeouts: int = 0
    duplicates: int = 0
    unexpected: int = 0    # replies to nothing pending from their sender
    dead_letters: int = 0  # dead letters published (one per message dropped, unless the publish failed)


class Driver:
    def __init__(self, core: Core, bus: Bus, clock: Clock, entropy: Entropy, *, request_timeout: float = 5.0,
                 after_step: Callable[[], Awaitable[None]] | None = None, store: Store | None = None,
                 share_group: str = "") -> None:
        self.core = core
        # A stateless worker (``ramsim up --sts-workers``): the inbox is a shared subscription, so each
        # request reaches one worker of the group; the replies to the requests the core makes come to
        # every worker (one plain subscription per node it asks, ``core.REPLIES_FROM``), and a worker
        # ignores, quietly, those to requests another worker made.
        self.share_group = share_group
        self.store = store
        self._written: dict[str, dict[str, bytes]] = {}  # the rows as last committed
        self._replies: dict[tuple[str, int], tuple[str, bytes]] = {}  # (src, msg id) -> the reply sent
        self._sent: list[int] = []  # outbox rows published, forgotten at the next commit
        self._restored: list[Effect] = []  # what the core said to do about its restored state
        self._encoder = msgspec.msgpack.Encoder()
        self.after_step = after_step  # lets a shell reconcile its own resources with the core's state
        self.clock = clock
        self.endpoint = Endpoint(bus, core.node_id, clock, entropy)
        self.request_timeout = request_timeout
        self.counters = Counters()
        self.log = structlog.get_logger(core.node_id)
        self._inbox: asyncio.Queue[tuple[Envelope | None, asyncio.Future[None]]] = asyncio.Queue()  # None: reconnected
        self._pending: dict[int, _Pending] = {}
        self._started_at = clock.now()
        self._arrivals: dict[int, tuple[str, bytes]] = {}  # id(envelope) -> (topic, payload), while it is queued or handled
        self._dispatching: Envelope | None = None  # the message the core is handling (for a dead letter if it raises)

    async def start(self) -> None:
        """Restore the core from its store (if any), then subscribe to the node's inbox and the
        core's topics."""
        if self.store is not None:
            self._restored = await self._restore()
        inbox = [topics.inbox_filter(self.core.node_id)]
        if self.share_group:
            inbox = [topics.shared(self.share_group, inbox[0]),
                     *(topics.inbox(self.core.node_id, src) for src in getattr(self.core, "REPLIES_FROM", ()))]
        for topic_filter in (*inbox, *self.core.subscriptions()):
            await self.endpoint.bus.subscribe(topic_filter, self._receive)
        self.endpoint.bus.open()
        if hasattr(self.endpoint.bus, "on_reconnect"):
            self.endpoint.bus.on_reconnect = self._reconnected  # type: ignore[attr-defined]

    def _reconnected(self) -> None:
        """The bus is back after a disconnect: let the core resync (from the driver's task)."""
        self._inbox.put_nowait((None, asyncio.get_running_loop().create_future()))

    async def run(self) -> None:
        """Own the core until cancelled."""
        loop = asyncio.get_running_loop()
        await self._perform(self._restored, None)
        await self._perform(self.core.on_timer(self.clock.now()), None)
        while True:
            delay = self._next_wakeup(loop.time())
            try:
                env, done = await asyncio.wait_for(self._inbox.get(), delay)
            except asyncio.TimeoutError:
                await self._tick(loop.time())
                continue
            try:
                if env is None:
                    hook = getattr(self.core, "on_reconnect", None)
                    if hook is not None:
                        await self._run_core(lambda: hook(self.clock.now()), None)
                else:
                    await self._dispatch(env)
            finally:
                done.set_result(None)
            await self._tick(loop.time())

    # -- intake ---------------------------------------------------------------------------
    async def _receive(self, topic: str, payload: bytes) -> None:
        self.counters.received += 1
        try:
            env = codec.decode(payload)
        except ProtocolError as exc:
            self.counters.malformed += 1
            header = reply_address(payload)
            self.log.warning("message_malformed", topic=topic, field=exc.field, reason=exc.reason,
                             src=header.src if header else None)
            if header is not None and header.answerable and topics.sender(topic) == header.src:  # a direct request, readable sender
                await self.endpoint.reply(header, errors.malformed(exc.field, exc.reason))
            await self._drop("malformed", None, topic, payload, field=exc.field, detail=exc.reason,
                             src=header.src if header else "")
            return
        if forged(topic, env.src):
            self.counters.forged += 1
            self.log.warning("message_forged", topic=topic, src=env.src, body=type(env.body).__name__)
            await self._drop("forged", env, topic, payload)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals[id(env)] = (topic, payload)
        try:
            self._inbox.put_nowait((env, done))
            await done
        finally:
            self._arrivals.pop(id(env), None)

    async def _dispatch(self, env: Envelope) -> None:
        self._dispatching = env  # if the core raises on it, its dead letter names it
        try:
            now = self.clock.now()
            if env.in_reply_to is not None:
                pending = self._pending.get(env.in_reply_to)
                if pending is None and self.share_group:  # another worker's reply (or a second copy of ours)
                    self.log.debug("reply_for_another_worker", src=env.src, in_reply_to=env.in_reply_to)
                    return
                if pending is None or pending.dest != env.src:  # only the node asked may answer (src is vouched for)
                    self.counters.unexpected += 1
                    self.log.info("reply_unexpected", src=env.src, in_reply_to=env.in_reply_to, body=type(env.body).__name__)
                    await self._drop("unexpected_reply", env, detail=f"in reply to {env.in_reply_to}")
                    return
                del self._pending[env.in_reply_to]
                await self._run_core(lambda: self.core.on_reply(pending.context, env.body, now), None,
                                     trace_id=env.trace_id or pending.trace_id)
                return
            if isinstance(env.body, Ping):
                # a core may not be ready to serve at once (an agent not yet registered)
                await self.endpoint.reply(env, ping_answer(self.core.node_id, self._started_at, getattr(self.core, "ready", True)))
                return
            if isinstance(env.body, ApiCommand) and not may_call(env):
                self.counters.forged += 1
                if await self.endpoint.refuse_caller(env, *self._arrivals.get(id(env), ("", b""))):
                    self.counters.dead_letters += 1
                return
            await self._run_core(lambda: self.core.handle(env, now), env)
        finally:
            self._dispatching = None

    async def _drop(self, reason: DropReason, env: Envelope | None, topic: str = "", payload: bytes = b"", **fields: str) -> None:
        """Record a message dropped for ``reason`` on this node's dead-letter topic (best-effort;
        never raises). A decoded ``env`` brings its own topic, bytes, sender and body type; with
        neither an envelope nor a topic (a timer step failed) nothing was dropped."""
        if env is not None:
            topic, payload = self._arrivals.get(id(env), (topic, payload))
            fields = {"src": env.src, "body": type(env.body).__name__, **fields}
        elif not topic:
            return
        letter = dead_letter(self.core.node_id, topic, payload, reason, **fields)
        if await self.endpoint.dead_letter(letter, trace_id=env.trace_id if env is not None else ""):
            self.counters.dead_letters += 1

    async def _tick(self, loop_now: float) -> None:
        expired = [msg_id for msg_id, p in self._pending.items() if p.deadline <= loop_now]
        for msg_id in expired:
            pending = self._pending.pop(msg_id)
            self.counters.timeouts += 1
            self.log.warning("request_timeout", dest=pending.dest)
            await self._run_core(lambda: self.core.on_reply(pending.context, errors.timeout(pending.dest), self.clock.now()), None,
                                 trace_id=pending.trace_id)
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.clock.now():
            # a timer step (a credential refresh) starts a trace of its own
            await self._run_core(lambda: self.core.on_timer(self.clock.now()), None, trace_id=self.endpoint.new_trace_id())

    def _next_wakeup(self, loop_now: float) -> float | None:
        waits = [p.deadline - loop_now for p in self._pending.values()]
        deadline = self.core.next_deadline()
        if deadline is not None:
            waits.append(self.clock.real_seconds(deadline - self.clock.now()))
        return max(0.0, min(waits)) if waits else None

    # -- effects --------------------------------------------------------------------------
    async def _run_core(self, step: Any, request: Envelope | None, *, trace_id: str = "") -> None:
        """Run one step of the core and apply its effects. Its messages carry ``request``'s trace
        id, or (a reply's or a timer's step, with no request) ``trace_id``."""
        if request is not None and request.dest != "*" and (request.src, request.msg_id) in self._replies:
            self.counters.duplicates += 1  # redelivered after its effects were committed: answer again, do not run again
            self.log.info("request_duplicate", src=request.src, body=type(request.body).__name__)
            await self.endpoint.bus.publish(*self._replies[(request.src, request.msg_id)])
            return
        try:
            effects = step()
        except Exception:
            self.counters.failed += 1
            self.log.exception("core_failed", request=type(request.body).__name__ if request else None)
            if request is not None and request.dest != "*":
                await self.endpoint.reply(request, errors.internal_error())
            await self._drop("core_failed", self._dispatching)
            return
        if self.store is not None and not (request is not None and type(request.body) in self.core.READ_ONLY):  # type: ignore[attr-defined]
            effects = await self._persist(effects, request, trace_id)
        await self._perform(effects, request, trace_id)
        if self.after_step is not None:
            await self.after_step()

    # -- durability -----------------------------------------------------------------------
    async def _restore(self) -> list[Effect]:
        """Load the core's rows, republish what the outbox still holds (a crash came between a
        commit and its publishing) and remember the replies kept for dedupe."""
        store, core = self.store, self.core
        assert store is not None and isinstance(core, Durable)
        tables = store.rows()
        self._written = {t: dict(tables.get(t, {})) for t in core.ROWS}
        rows = {t: {k: msgspec.msgpack.decode(v, type=kind) for k, v in self._written[t].items()} for t, kind in core.ROWS.items()}
        effects = core.load(rows, self.clock.now())
        self._replies = store.replies()
        pending = store.outbox()
        for _, topic, payload in pending:
            await self.endpoint.bus.publish(topic, payload)
        self._sent = [i for i, _, _ in pending]
        self.log.info("state_restored", rows=sum(len(r) for r in rows.values()), outbox=len(pending), replies=len(self._replies))
        return effects

    def _changes(self) -> dict[str, dict[str, bytes | None]]:
        """The rows whose bytes differ from the ones last committed (None: deleted). A core with
        ``changed_rows()`` names the rows a step may have changed (a missing table there is
        unchanged, a row given as None is deleted), so only those are encoded and compared;
        otherwise every row of ``dump()`` is."""
        partial = getattr(self.core, "changed_rows", None)
        dump = partial() if partial is not None else self.core.dump()  # type: ignore[attr-defined]
        changes: dict[str, dict[str, bytes | None]] = {}
        for table in self.core.ROWS:  # type: ignore[attr-defined]
            old = self._written.setdefault(table, {})
            rows = dump.get(table)
            if rows is None:
                continue
            encode = self._encoder.encode
            diff: dict[str, bytes | None] = {}
            for key, row in rows.items():
                if row is None:
                    if key in old:
                        diff[key] = None
                    continue
                b = encode(row)
                if old.get(key) != b:
                    diff[key] = b
            if partial is None:
                diff.update({k: None for k in old.keys() - rows.keys()})
            if diff:
                changes[table] = diff
        return changes

    async def _persist(self, effects: list[Effect], cause: Envelope | None, caused_by: str = "") -> list[Effect]:
        """Commit the step (changed rows, its messages, its replies); publish; return the rest."""
        assert self.store is not None
        changes = self._changes()
        if not changes and not any(isinstance(e, (Publish, Send)) for e in effects):
            return effects
        trace_id = cause.trace_id if cause is not None else caused_by
        node = self.core.node_id
        outbox: list[tuple[str, bytes]] = []
        replies: list[tuple[str, int, str, bytes]] = []
        rest: list[Effect] = []
        for effect in effects:
            if isinstance(effect, Reply):
                req = effect.request
                try:
                    topic = topics.inbox(req.src, node)
                except TopicError:  # a sender no topic can name (see Endpoint.reply): not answered
                    rest.append(Log("reply_unaddressable", "warning", {"body": type(effect.body).__name__}))
                    continue
                env = self.endpoint.envelope(req.src, effect.body, in_reply_to=req.msg_id, trace_id=carried_trace(req.trace_id))
                outbox.append((topic, codec.encode(env)))
                replies.append((req.src, req.msg_id, topic, outbox[-1][1]))
            elif isinstance(effect, Send):
                outbox.append((topics.inbox(effect.dest, node), codec.encode(self.endpoint.envelope(effect.dest, effect.body, trace_id=trace_id))))
            elif isinstance(effect, Publish):
                outbox.append((effect.topic, codec.encode(self.endpoint.envelope("*", effect.body, trace_id=trace_id))))
            else:
                rest.append(effect)
        try:
            ids = self.store.commit(changes, outbox, replies, sent=self._sent)
        except Exception:
            self.log.critical("store_commit_failed", path=str(self.store.path))
            raise SystemExit(3)  # memory is ahead of disk: stop, and restart from disk
        for table, rows in changes.items():
            written = self._written[table]
            for key, value in rows.items():
                if value is None:
                    written.pop(key, None)
                else:
                    written[key] = value
        for src, msg_id, topic, payload in replies:
            self._replies[(src, msg_id)] = (topic, payload)
        while len(self._replies) > DEDUPE_WINDOW:
            del self._replies[next(iter(self._replies))]
        for topic, payload in outbox:
            await self.endpoint.bus.publish(topic, payload)
        self._sent = ids
        return rest

    def close(self) -> None:
        """Forget what was published and close the store (at shutdown)."""
        if self.store is not None:
            self.store.sent(self._sent)
            self._sent = []
            self.store.close()

    async def _perform(self, effects: list[Effect], cause: Envelope | None, caused_by: str = "") -> None:
        trace_id = cause.trace_id if cause is not None else caused_by
        for effect in effects:
            if isinstance(effect, Reply):
                await self.endpoint.reply(effect.request, effect.body)
            elif isinstance(effect, Send):
                await self.endpoint.send(effect.dest, effect.body, trace_id=trace_id)
            elif isinstance(effect, Request):
                env = self.endpoint.envelope(effect.dest, effect.body, trace_id=effect.trace_id or trace_id)
                self._pending[env.msg_id] = _Pending(effect.context, effect.dest, asyncio.get_running_loop().time() + self.request_timeout,
                                                     env.trace_id)
                await self.endpoint.post(env)
            elif isinstance(effect, Publish):
                await self.endpoint.publish(effect.topic, effect.body, trace_id=trace_id)
            elif isinstance(effect, Log):
                getattr(self.log, effect.level)(effect.event, **effect.fields)

