"""I/O shell: a deterministic discrete-event simulator that drives the pure cores on virtual time.

One process, one event heap ordered by ``(time, sequence number)``: nothing depends on dict or set
order, wall time or the OS's entropy, so one seed replays a run exactly. It drives cores through
the same contract as :class:`~services.runtime.driver.Driver` (``handle``, ``on_reply``,
``on_timer``, ``next_deadline``, ``on_reconnect``; Durable ``dump``/``load``) and performs their
effects (Reply, Send, Request, Publish, Log) over a simulated bus:

* **Bus.** A Publish reaches every node whose filters match the topic (:func:`protocol.topics.matches`,
  cached per topic); Send/Reply/Request go to the destination's inbox. Every message takes the
  base ``latency`` (plus up to ``jitter``, uniform) plus its sender's up-link and its receiver's down-link delays. A message for a
  node that is down waits at the broker (a persistent session) until it is back; one for a
  paused node queues in its inbox. A Request with no reply within ``request_timeout`` is answered
  by :func:`protocol.errors.timeout` (an indefinite error), as the driver does.
* **Link faults** (per node, see :class:`Link`): latency with jitter (uniform, normal or pareto),
  loss, bandwidth (bytes over bits per second), a partition (nothing passes either way; when it
  heals the node reconnects: ``on_reconnect`` runs, as after an MQTT reconnect), one direction only.
* **Message faults** (:class:`MessageRule`): by body type and/or topic filter (and sender or
  receiver): drop, delay with jitter, duplicate, reorder (held back so later ones overtake),
  corrupt (one byte of the msgpack flipped; a receiver that cannot decode it drops it, as the
  driver drops malformed bytes).
* **Process faults.** :meth:`Simulation.kill` drops the core's memory (its pending requests,
  timers, caches); :meth:`Simulation.start` builds a new core and, if it is Durable, loads
  what its store had committed. A step is atomic and, as in the driver, commits before its
  messages leave, so a kill (which lands between steps) loses only what was not committed: the
  in-flight requests and the non-durable memory. The committed rows go through msgpack like the
  store's bytes. :meth:`Simulation.pause` freezes a node (nothing handled or fired; its inbox
  queues) until :meth:`Simulation.resume`.
* **Clock skew** per node: the core is told ``now + skew`` and its deadlines are read back the same way.
* **API errors** (:class:`ApiRule`): an API command reaching the node is answered
  ``Throttling.User`` / ``ServiceUnavailable`` at a rate, never reaching the core.

Randomness: one seed, split by purpose (:meth:`Simulation.stream`): "bus" (latency, loss, message
faults), "entropy/<node>/<incarnation>" (what cores are handed), and whatever the caller asks for
(the workload's schedule). Virtual time is epoch seconds from :data:`EPOCH`.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from protocol import codec, errors, topics
from protocol.base import Message
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages.common import ApiCommand, Ping, PingOk
from services.runtime.chaos import THROTTLED, UNAVAILABLE
from services.runtime.driver import may_call
from services.runtime.effects import Durable, Effect, Publish, Reply, Request, Send
from services.runtime.store import DEDUPE_WINDOW

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: where every simulation's clock starts
BROKER = "broker"


class SeededEntropy:
    """``token_bytes(n)`` from a seeded stream (what a core is handed in the simulator)."""

    def __init__(self, rng: random.Random) -> None:
        self.token_bytes = rng.randbytes


@dataclass
class Link:
    """One node's link to the broker. ``direction``: both, up (what it sends), down (what it receives)."""

    latency: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    loss: float = 0.0
    bandwidth: float = 0.0  # bits per second; 0: unlimited
    partition: bool = False
    direction: str = "both"


@dataclass
class MessageRule:
    """A message fault: which messages (all of types/topics/node that are given must match) and what befalls them."""

    types: frozenset[str] = frozenset()
    topics: tuple[str, ...] = ()
    node: str = ""  # sent by or to this node ("": any)
    drop: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    acted: int = 0  # messages this rule changed (tests see that it acts)

    def chooses(self, topic: str, env: Envelope) -> bool:
        if self.types and type(env.body).__name__ not in self.types:
            return False
        if self.topics and not any(topics.matches(f, topic) for f in self.topics):
            return False
        return not self.node or self.node in (env.src, env.dest) or (env.dest == "*" and topic.endswith("/" + self.node))


@dataclass
class ApiRule:
    throttle: float = 0.0
    error_5xx: float = 0.0
    acted: int = 0


@dataclass
class Counters:
    events: int = 0
    delivered: int = 0
    dropped: int = 0
    malformed: int = 0
    timeouts: int = 0
    unexpected: int = 0
    forged: int = 0
    failed: int = 0


@dataclass
class Node:
    """One core in the simulation, with what its shell would hold (pending requests, one timer)."""

    node_id: str
    build: Callable[[SeededEntropy], Any]
    core: Any = None
    incarnation: int = 0
    up: bool = False
    paused: bool = False
    skew: float = 0.0
    filters: tuple[str, ...] = ()
    pending: dict[int, tuple[Any, str]] = field(default_factory=dict)
    inbox: list[tuple[str, Envelope]] = field(default_factory=list)   # queued while paused
    parked: list[tuple[str, Envelope]] = field(default_factory=list)  # waiting at the broker while down
    stalled: list[int] = field(default_factory=list)  # request timeouts that fell due while paused
    replies: dict[tuple[str, int], tuple[str, Envelope]] = field(default_factory=dict)  # committed replies (dedupe)
    timer_at: float | None = None
    timer_token: int = 0
    committed: dict[str, dict[str, bytes]] | None = None
    durable: bool = False
    link: Link | None = None
    api: list[ApiRule] = field(default_factory=list)


class Simulation:
    def __init__(self, seed: int, *, latency: float = 0.001, jitter: float = 0.001, request_timeout: float = 5.0,
                 origin: float = EPOCH) -> None:
        self.seed = seed
        self.now = origin
        self.origin = origin
        self.latency = latency
        self.jitter = jitter
        self.request_timeout = request_timeout
        self.nodes: dict[str, Node] = {}
        self.rules: list[MessageRule] = []
        self.broker_up = True
        self.broker_paused = False
        self._held: list[tuple[str, Envelope]] = []  # published while the broker was paused
        self.counters = Counters()
        self._heap: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = 0
        self._msg_ids = 0
        self._routes: dict[str, list[Node]] = {}
        self._inboxes: dict[tuple[str, str], str] = {}
        self._bus = self.stream("bus")
        self._encoder = msgspec.msgpack.Encoder()
        self.observers: list[Callable[[str, Envelope], None]] = []  # see every publish as it is made (the recorder)
        self.after_step: list[Callable[[Node, Envelope | None], None]] = []  # after a node handled something

    # -- randomness and time --------------------------------------------------------------
    def stream(self, purpose: str) -> random.Random:
        """An independent random stream for one purpose, derived from the seed."""
        digest = hashlib.sha256(f"{self.seed}/{purpose}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` at virtual time ``when`` (never earlier than now)."""
        self._seq += 1
        heapq.heappush(self._heap, (when if when > self.now else self.now, self._seq, action, args))

    def run(self, until: float) -> None:
        """Process every event up to ``until``; the clock ends there."""
        heap, pop, counters = self._heap, heapq.heappop, self.counters
        while heap and heap[0][0] <= until:
            when, _, action, args = pop(heap)
            self.now = when
            counters.events += 1
            action(*args)
        if self.now < until:
            self.now = until

    @property
    def pending_events(self) -> int:
        return len(self._heap)

    # -- nodes ----------------------------------------------------------------------------
    def add(self, node_id: str, build: Callable[[SeededEntropy], Any]) -> Node:
        node = self.nodes[node_id] = Node(node_id, build)
        self.start(node_id)
        return node

    def start(self, node_id: str) -> None:
        """Build the node's core (a new incarnation), restore what its store committed, run its first timer."""
        node = self.nodes[node_id]
        node.incarnation += 1
        node.core = node.build(SeededEntropy(self.stream(f"entropy/{node_id}/{node.incarnation}")))
        node.up, node.paused, node.pending, node.inbox, node.stalled = True, False, {}, [], []
        node.filters = (topics.inbox_filter(node_id), *node.core.subscriptions())
        node.durable = isinstance(node.core, Durable)
        self._routes.clear()
        effects: list[Effect] = []
        if node.committed is not None and node.durable:
            rows = {t: {k: msgspec.msgpack.decode(v, type=kind) for k, v in node.committed.get(t, {}).items()}
                    for t, kind in node.core.ROWS.items()}
            effects += node.core.load(rows, self.clock(node))
        effects += node.core.on_timer(self.clock(node))
        self._perform(node, effects, None)
        node.timer_at = None
        node.timer_token += 1
        self._arm(node)
        parked, node.parked = node.parked, []
        for topic, env in parked:
            self._arrive(node, topic, env)

    def kill(self, node_id: str) -> None:
        """The process dies: its memory is gone; its committed rows stay."""
        node = self.nodes[node_id]
        if not node.up:
            return
        self.commit(node)
        node.up, node.core, node.pending, node.inbox, node.timer_at = False, None, {}, [], None
        node.timer_token += 1
        self._routes.clear()

    def commit(self, node: Node) -> None:
        """What the node's store holds now (the driver commits every step that changed rows)."""
        if node.core is not None and node.durable:
            encode = self._encoder.encode
            node.committed = {t: {k: encode(v) for k, v in rows.items()} for t, rows in node.core.dump().items()}

    def pause(self, node_id: str) -> None:
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if not node.paused:
            return
        node.paused = False
        queued, node.inbox = node.inbox, []
        for topic, env in queued:
            self._arrive(node, topic, env)
        if node.up:
            stalled, node.stalled = node.stalled, []
            for msg_id in stalled:  # requests that timed out while it was frozen
                self._timeout(node, node.incarnation, msg_id)
            node.timer_at = None
            node.timer_token += 1
            self._arm(node)

    def reconnect(self, node_id: str) -> None:
        """The node's bus reconnected: let the core resync (``on_reconnect``)."""
        node = self.nodes[node_id]
        hook = getattr(node.core, "on_reconnect", None) if node.up else None
        if hook is not None:
            self._step(node, hook, None)

    def set_skew(self, node_id: str, skew: float) -> None:
        """The node's clock is off by ``skew`` seconds from now on (its timer re-read on its clock)."""
        node = self.nodes[node_id]
        node.skew = skew
        if node.up:
            node.timer_at = None
            node.timer_token += 1
            self._arm(node)

    def clock(self, node: Node) -> float:
        return self.now + node.skew

    def step(self, node_id: str, action: Callable[[float], list[Effect]]) -> bool:
        """Run ``action(now)`` on a node as one of its steps (a shell calling into its core: an HTTP
        request to a metadata agent, a workload's call). False when the node is down or paused."""
        node = self.nodes[node_id]
        if not node.up or node.paused:
            return False
        self._step(node, action, None)
        return True

    # -- the broker -----------------------------------------------------------------------
    def broker_down(self) -> None:
        self.broker_up = False

    def broker_back(self) -> None:
        """The broker restarted: every node reconnects and resyncs."""
        self.broker_up = True
        for node_id in list(self.nodes):
            self.reconnect(node_id)

    def broker_resume(self) -> None:
        self.broker_paused = False
        held, self._held = self._held, []
        for topic, env in held:
            self._fan_out(topic, env, self.latency)

    # -- sending --------------------------------------------------------------------------
    def envelope(self, node: Node, dest: str, body: Message, in_reply_to: int | None = None, trace_id: str = "") -> Envelope:
        self._msg_ids += 1
        return Envelope(src=node.node_id, dest=dest, msg_id=self._msg_ids, body=body, in_reply_to=in_reply_to,
                        trace_id=trace_id, sent_at=self.clock(node))

    def _perform(self, node: Node, effects: list[Effect], cause: Envelope | None) -> None:
        trace = cause.trace_id if cause is not None else ""
        for effect in effects:
            kind = type(effect)
            if kind is Publish:
                env = self.envelope(node, "*", effect.body, trace_id=trace)
                for observe in self.observers:
                    observe(effect.topic, env)
                self._publish(node, effect.topic, env)
            elif kind is Reply:
                request = effect.request
                reply = (self._inbox(request.src, node.node_id), self.envelope(node, request.src, effect.body, request.msg_id, request.trace_id))
                if request is cause and node.durable and type(request.body) not in node.core.READ_ONLY:
                    node.replies[(request.src, request.msg_id)] = reply
                    if len(node.replies) > DEDUPE_WINDOW:
                        del node.replies[next(iter(node.replies))]
                self._publish(node, *reply)
            elif kind is Send:
                self._publish(node, self._inbox(effect.dest, node.node_id), self.envelope(node, effect.dest, effect.body, trace_id=trace))
            elif kind is Request:
                env = self.envelope(node, effect.dest, effect.body, trace_id=effect.trace_id or trace)
                node.pending[env.msg_id] = (effect.context, effect.dest)
                self.at(self.now + self.request_timeout, self._timeout, node, node.incarnation, env.msg_id)
                self._publish(node, self._inbox(effect.dest, node.node_id), env)

    def _inbox(self, dest: str, src: str) -> str:
        topic = self._inboxes.get((dest, src))
        if topic is None:
            topic = self._inboxes[(dest, src)] = topics.inbox(dest, src)
        return topic

    def _publish(self, node: Node, topic: str, env: Envelope) -> None:
        """``node`` sends ``env``: its up-link, the broker, each receiver's down-link; one event per
        delivery (the broker's hop is no event of its own: the broker's state at sending decides)."""
        delay = self.latency + self.jitter * self._bus.random()
        link = node.link
        if link is not None and link.direction != "down":
            extra = self._link_delay(link, env)
            if extra is None:
                self.counters.dropped += 1
                return
            delay += extra
        self._fan_out(topic, env, delay)

    def _fan_out(self, topic: str, env: Envelope, delay: float) -> None:
        if not self.broker_up:
            self.counters.dropped += 1
            return
        if self.broker_paused:
            self._held.append((topic, env))
            return
        receivers = self._routes.get(topic)
        if receivers is None:
            receivers = self._routes[topic] = [n for n in self.nodes.values() if any(topics.matches(f, topic) for f in n.filters)]
        if not receivers:
            return
        now, heap, push = self.now, self._heap, heapq.heappush
        if not self.rules:  # the common case: one copy (an Envelope, never bytes: straight to _arrive), no link fault
            deliver, at = self._arrive, now + delay
            for receiver in receivers:
                link = receiver.link
                if link is not None and link.direction != "up":
                    more = self._link_delay(link, env)
                    if more is None:
                        self.counters.dropped += 1
                        continue
                    self._seq += 1
                    push(heap, (now + (delay + more), self._seq, deliver, (receiver, topic, env)))
                else:
                    self._seq += 1
                    push(heap, (at, self._seq, deliver, (receiver, topic, env)))
            return
        copies: list[tuple[float, Envelope | bytes]] = [(delay, env)]
        for rule in self.rules:
            if rule.chooses(topic, env):
                copies = self._apply(rule, copies)
        for receiver in receivers:
            link = receiver.link
            for extra, item in copies:
                if link is not None and link.direction != "up":
                    more = self._link_delay(link, env)
                    if more is None:
                        self.counters.dropped += 1
                        continue
                    extra += more
                self._seq += 1
                push(heap, (now + extra, self._seq, self._deliver, (receiver, topic, item)))

    def _apply(self, rule: MessageRule, copies: list[tuple[float, Envelope | bytes]]) -> list[tuple[float, Envelope | bytes]]:
        rng, out = self._bus, []
        for extra, item in copies:
            if rule.drop and rng.random() < rule.drop:
                rule.acted += 1
                continue
            if rule.delay or rule.jitter:
                rule.acted += 1
                extra += max(0.0, rule.delay + rng.uniform(-rule.jitter, rule.jitter))
            if rule.reorder and rng.random() < rule.reorder:
                rule.acted += 1
                extra += rng.uniform(0.0, max(rule.delay, 0.05))
            if rule.corrupt and rng.random() < rule.corrupt and not isinstance(item, bytes):
                rule.acted += 1
                data = bytearray(codec.encode(item))
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                item = bytes(data)
            out.append((extra, item))
            if rule.duplicate and rng.random() < rule.duplicate:
                rule.acted += 1
                out.append((extra + self.latency, item))
        return out

    def _link_delay(self, link: Link, env: Envelope) -> float | None:
        """Extra seconds on this link, or None: lost."""
        rng = self._bus
        if link.partition or (link.loss and rng.random() < link.loss):
            return None
        delay = link.latency
        if link.jitter:
            if link.distribution == "normal":
                delay += rng.gauss(0.0, link.jitter)
            elif link.distribution == "pareto":
                delay += link.jitter * (rng.paretovariate(3.0) - 1.0)
            else:
                delay += rng.uniform(-link.jitter, link.jitter)
        if link.bandwidth:
            delay += len(codec.encode(env)) * 8 / link.bandwidth
        return delay if delay > 0 else 0.0

    # -- receiving ------------------------------------------------------------------------
    def _deliver(self, node: Node, topic: str, item: Envelope | bytes) -> None:
        if isinstance(item, bytes):
            try:
                item = codec.decode(item)
            except ProtocolError:
                self.counters.malformed += 1  # the driver logs, answers if it can, and drops it
                return
        self._arrive(node, topic, item)

    def _arrive(self, node: Node, topic: str, env: Envelope) -> None:
        if not node.up:
            node.parked.append((topic, env))
            return
        if node.paused:
            node.inbox.append((topic, env))
            return
        self.counters.delivered += 1
        if env.in_reply_to is not None:
            waiting = node.pending.get(env.in_reply_to)
            if waiting is None or waiting[1] != env.src:
                self.counters.unexpected += 1
                return
            del node.pending[env.in_reply_to]
            context = waiting[0]
            self._step(node, node.core.on_reply, None, context, env.body)
            return
        body = env.body
        if isinstance(body, Ping):
            self._perform(node, [Reply(env, PingOk(node=node.node_id, started_at=self.origin))], env)
            return
        if isinstance(body, ApiCommand):
            if not may_call(env):
                self.counters.forged += 1
                self._perform(node, [Reply(env, errors.no_permission(f"{env.src} may not make API calls on behalf of others."))], env)
                return
            if node.api and self._api_error(node, env):
                return
        if env.dest != "*" and (env.src, env.msg_id) in node.replies:  # redelivered: answered again, not run again
            self._publish(node, *node.replies[(env.src, env.msg_id)])
            return
        self._step(node, node.core.handle, env, env)

    def _api_error(self, node: Node, env: Envelope) -> bool:
        rng = self._bus
        for rule in node.api:
            for rate, (code, message, status) in ((rule.throttle, THROTTLED), (rule.error_5xx, UNAVAILABLE)):
                if rate and rng.random() < rate:
                    rule.acted += 1
                    self._perform(node, [Reply(env, errors.error(code, message, status))], env)
                    return True
        return False

    def _step(self, node: Node, action: Callable[..., list[Effect]], cause: Envelope | None, *args: Any) -> None:
        """``action(*args, now)`` as one step of ``node`` (no closure per step: this is the hot path)."""
        try:
            effects = action(*args, self.now + node.skew)
        except Exception:
            self.counters.failed += 1  # the driver answers InternalError and keeps running
            if cause is not None and cause.dest != "*":
                self._perform(node, [Reply(cause, errors.internal_error())], cause)
            return
        self._perform(node, effects, cause)
        for hook in self.after_step:
            hook(node, cause)
        self._arm(node)

    def _arm(self, node: Node) -> None:
        deadline = node.core.next_deadline()
        if deadline is None:
            node.timer_at = None
            return
        at = deadline - node.skew
        if node.timer_at is not None and node.timer_at <= at:
            return  # an earlier (or the same) wake-up is already set; it re-arms when it fires
        node.timer_at = at
        node.timer_token += 1
        self.at(at, self._fire, node, node.timer_token)

    def _fire(self, node: Node, token: int) -> None:
        if token != node.timer_token or not node.up:
            return
        node.timer_at = None
        if node.paused:
            return  # resume() fires it
        deadline = node.core.next_deadline()
        if deadline is not None and deadline <= self.clock(node):
            self._step(node, node.core.on_timer, None)
        else:
            self._arm(node)

    def _timeout(self, node: Node, incarnation: int, msg_id: int) -> None:
        if incarnation != node.incarnation or msg_id not in node.pending:
            return
        if node.paused:
            node.stalled.append(msg_id)
            return
        context, dest = node.pending.pop(msg_id)
        self.counters.timeouts += 1
        self._step(node, node.core.on_reply, None, context, errors.timeout(dest))

