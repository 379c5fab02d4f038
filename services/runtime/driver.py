"""I/O shell: the driver that owns one core.

One task owns the core: bus messages are queued and fed to it one at a time with the current
time; the effects it returns are performed; one timer is re-armed at
``min(core.next_deadline(), earliest request timeout)``. A bus message is acknowledged (its
handler returns) only after the core handled it and its effects went out.

Bad input never reaches the core: bytes that do not decode are logged and counted, answered
with an ``InvalidParameter.Malformed`` error when the sender and msg id are readable, and
dropped. A direct message whose envelope ``src`` differs from its topic's ``from`` segment (the
sender the broker vouches for) is forged: logged, counted, dropped, never answered; a reply
counts only if it comes from the node the request went to. A core that raises on a message is
logged, the request gets ``InternalError``, and the service keeps running.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog

from protocol import codec, errors, topics
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages.common import ApiCommand, Ping, PingOk
from services.runtime.bus import Bus
from services.runtime.client import Endpoint, forged, reply_address
from services.runtime.clock import Clock
from services.runtime.effects import Core, Effect, Log, Publish, Reply, Request, Send
from services.runtime.entropy import Entropy


@dataclass
class _Pending:
    context: Any
    dest: str
    deadline: float  # loop time


GATEWAYS = frozenset({"gateway"})  # the nodes that authenticate API callers


def may_call(env: Envelope) -> bool:
    """May ``env.src`` (vouched for by the broker) send this API command with its ``caller``?

    The gateway speaks for the principals it authenticated; a service speaks only as itself
    (``ecs`` as ``ecs.aliyuncs.com``); nobody else may claim a caller. A command without a
    caller passes: the core refuses it as unauthenticated."""
    caller = getattr(env.body, "caller", None)
    if caller is None or env.src in GATEWAYS:
        return True
    return caller.identity_type == "Service" and caller.arn == f"{env.src}.aliyuncs.com"


@dataclass
class Counters:
    received: int = 0
    malformed: int = 0
    forged: int = 0
    failed: int = 0
    timeouts: int = 0


class Driver:
    def __init__(self, core: Core, bus: Bus, clock: Clock, entropy: Entropy, *, request_timeout: float = 5.0,
                 after_step: Callable[[], Awaitable[None]] | None = None) -> None:
        self.core = core
        self.after_step = after_step  # lets a shell reconcile its own resources with the core's state
        self.clock = clock
        self.endpoint = Endpoint(bus, core.node_id, clock, entropy)
        self.request_timeout = request_timeout
        self.counters = Counters()
        self.log = structlog.get_logger(core.node_id)
        self._inbox: asyncio.Queue[tuple[Envelope, asyncio.Future[None]]] = asyncio.Queue()
        self._pending: dict[int, _Pending] = {}
        self._started_at = clock.now()

    async def start(self) -> None:
        """Subscribe to the node's inbox and the core's topics."""
        for topic_filter in (topics.inbox_filter(self.core.node_id), *self.core.subscriptions()):
            await self.endpoint.bus.subscribe(topic_filter, self._receive)
        self.endpoint.bus.open()

    async def run(self) -> None:
        """Own the core until cancelled."""
        loop = asyncio.get_running_loop()
        await self._perform(self.core.on_timer(self.clock.now()), None)
        while True:
            delay = self._next_wakeup(loop.time())
            try:
                env, done = await asyncio.wait_for(self._inbox.get(), delay)
            except asyncio.TimeoutError:
                await self._tick(loop.time())
                continue
            try:
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
            if header is not None and topics.sender(topic) == header.src:  # a direct message from a readable sender
                await self.endpoint.reply(header, errors.malformed(exc.field, exc.reason))
            return
        if forged(topic, env.src):
            self.counters.forged += 1
            self.log.warning("message_forged", topic=topic, src=env.src, body=type(env.body).__name__)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((env, done))
        await done

    async def _dispatch(self, env: Envelope) -> None:
        now = self.clock.now()
        if env.in_reply_to is not None:
            pending = self._pending.get(env.in_reply_to)
            if pending is None or pending.dest != env.src:  # only the node asked may answer (src is vouched for)
                self.log.debug("reply_unexpected", src=env.src, in_reply_to=env.in_reply_to)
                return
            del self._pending[env.in_reply_to]
            await self._run_core(lambda: self.core.on_reply(pending.context, env.body, now), None)
            return
        if isinstance(env.body, Ping):
            if getattr(self.core, "ready", True):  # a core may not be ready to serve at once (an agent not yet registered)
                await self.endpoint.reply(env, PingOk(node=self.core.node_id, started_at=self._started_at))
            else:
                await self.endpoint.reply(env, errors.error("ServiceUnavailable", f"{self.core.node_id} is starting", 503, definite=True))
            return
        if isinstance(env.body, ApiCommand) and not may_call(env):
            self.counters.forged += 1
            caller = env.body.caller
            self.log.warning("caller_refused", src=env.src, caller=caller.arn if caller else None)
            await self.endpoint.reply(env, errors.no_permission(f"{env.src} may not make API calls on behalf of others."))
            return
        await self._run_core(lambda: self.core.handle(env, now), env)

    async def _tick(self, loop_now: float) -> None:
        expired = [msg_id for msg_id, p in self._pending.items() if p.deadline <= loop_now]
        for msg_id in expired:
            pending = self._pending.pop(msg_id)
            self.counters.timeouts += 1
            self.log.warning("request_timeout", dest=pending.dest)
            await self._run_core(lambda: self.core.on_reply(pending.context, errors.timeout(pending.dest), self.clock.now()), None)
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.clock.now():
            await self._run_core(lambda: self.core.on_timer(self.clock.now()), None)

    def _next_wakeup(self, loop_now: float) -> float | None:
        waits = [p.deadline - loop_now for p in self._pending.values()]
        deadline = self.core.next_deadline()
        if deadline is not None:
            waits.append(self.clock.real_seconds(deadline - self.clock.now()))
        return max(0.0, min(waits)) if waits else None

    # -- effects --------------------------------------------------------------------------
    async def _run_core(self, step: Any, request: Envelope | None) -> None:
        try:
            effects = step()
        except Exception:
            self.counters.failed += 1
            self.log.exception("core_failed", request=type(request.body).__name__ if request else None)
            if request is not None and request.dest != "*":
                await self.endpoint.reply(request, errors.internal_error())
            return
        await self._perform(effects, request)
        if self.after_step is not None:
            await self.after_step()

    async def _perform(self, effects: list[Effect], cause: Envelope | None) -> None:
        trace_id = cause.trace_id if cause is not None else ""
        for effect in effects:
            if isinstance(effect, Reply):
                await self.endpoint.reply(effect.request, effect.body)
            elif isinstance(effect, Send):
                await self.endpoint.send(effect.dest, effect.body, trace_id=trace_id)
            elif isinstance(effect, Request):
                env = self.endpoint.envelope(effect.dest, effect.body, trace_id=effect.trace_id or trace_id)
                self._pending[env.msg_id] = _Pending(effect.context, effect.dest, asyncio.get_running_loop().time() + self.request_timeout)
                await self.endpoint.post(env)
            elif isinstance(effect, Publish):
                await self.endpoint.publish(effect.topic, effect.body, trace_id=trace_id)
            elif isinstance(effect, Log):
                getattr(self.log, effect.level)(effect.event, **effect.fields)

