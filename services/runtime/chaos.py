"""I/O shell: the faults a node obeys while an experiment sets them (message, clock and API faults).

Every service process wraps its bus in a :class:`ChaosBus` (``services.runtime.service.connect``).
It subscribes to ``control/<node>`` (the broker lets only the ``operator`` identity write there,
and only this node read it) and obeys the last :class:`Faults` it was sent: the node's whole
fault state, numbered, so a redelivery or an older message changes nothing. It acknowledges each
on ``control/<node>/applied`` with the number it now obeys. With no fault set (always, outside
experiments) the wrapper passes every message straight through: nothing is decoded or delayed.

* message faults act where a message leaves its sender (each message is published once, so it
  is judged once): a :class:`MessageFault` chooses messages by body type and/or topic filter
  and drops, corrupts (one byte flipped: receivers see malformed bytes), duplicates, delays
  (real seconds, with a uniform jitter) or reorders them (held until the next chosen message
  has gone, so the two arrive swapped; a held one goes when the fault heals). Control topics
  are never touched.
* clock skew: ``skew`` simulated seconds added to this node's clock (``ScaledClock.skew``); for
  a metadata agent, ``offsets`` skew the clock of one instance it serves (``ScaledClock.offsets``).
* API faults (:class:`ApiFault`): an API command arriving at this node is answered at once with
  ``Throttling.User`` (400, "Request was denied due to user flow control.") or
  ``ServiceUnavailable`` (503) at the given rates, and never reaches the core.

Every random choice comes from one ``random.Random`` per fault, seeded with the experiment's
seed, the node and the fault's id: the same seed makes the same choices for the same messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import msgspec
import structlog

from protocol import codec, errors, topics
from protocol.errors import ProtocolError
from protocol.messages.common import ApiCommand
from protocol.times import iso, parse_iso
from services.runtime.bus import Bus, Handler
from services.runtime.client import Endpoint
from services.runtime.clock import ScaledClock

log = structlog.get_logger("chaos")
THROTTLED = ("Throttling.User", "Request was denied due to user flow control.", 400)
UNAVAILABLE = ("ServiceUnavailable", "The request has failed due to a temporary failure of the server.", 503)


class MessageFault(msgspec.Struct, kw_only=True, frozen=True):
    """Which messages (``types``: body class names; ``topics``: MQTT filters; both empty: every
    message) and what befalls each (probabilities 0..1, ``delay``/``jitter`` in real seconds)."""

    id: str
    types: list[str] = []
    topics: list[str] = []
    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0


class ApiFault(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    throttle: float = 0.0   # answered Throttling.User
    error_5xx: float = 0.0  # answered ServiceUnavailable


class Faults(msgspec.Struct, kw_only=True, frozen=True):
    """A node's whole fault state; ``version`` grows with every change the operator makes."""

    version: int
    seed: int = 0
    messages: list[MessageFault] = []
    api: list[ApiFault] = []
    skew: float = 0.0                   # simulated seconds added to the node's clock
    offsets: dict[str, float] = {}      # instance id -> simulated seconds its own clock is off

    @property
    def empty(self) -> bool:
        return not (self.messages or self.api or self.skew or self.offsets)


class Applied(msgspec.Struct, kw_only=True, frozen=True):
    node: str
    version: int


_faults = msgspec.msgpack.Decoder(Faults)
_encoder = msgspec.msgpack.Encoder()


def encode(value: Faults | Applied) -> bytes:
    return _encoder.encode(value)


def decode_applied(payload: bytes) -> Applied:
    return msgspec.msgpack.decode(payload, type=Applied)


def body_type(payload: bytes) -> str:
    """The body class name of an envelope ("" when it does not decode)."""
    try:
        return type(codec.decode(payload).body).__name__
    except ProtocolError:
        return ""


def chosen(rule: MessageFault, topic: str, kind: str) -> bool:
    return (not rule.types or kind in rule.types) and (not rule.topics or any(topics.matches(f, topic) for f in rule.topics))


def as_seen_by(document: str, offset: float) -> str:
    """A credential document (``Expiration``, ``LastUpdated``) as an instance whose clock is
    ``offset`` seconds ahead reads it, restated on the host's clock (what its app and a probe
    compare it with): every time ``offset`` earlier. Anything else is returned unchanged."""
    try:
        doc = json.loads(document)
        if not isinstance(doc, dict) or "Expiration" not in doc:
            return document
        for name in ("Expiration", "LastUpdated"):
            if name in doc:
                doc[name] = iso(parse_iso(doc[name]) - offset)
    except (ValueError, TypeError):
        return document
    return json.dumps(doc, indent=2)


class ChaosBus:
    """A :class:`~services.runtime.bus.Bus` that obeys the faults the operator sets on ``node``."""

    def __init__(self, inner: Bus, node: str, clock: ScaledClock) -> None:
        self.inner, self.node, self.clock = inner, node, clock
        self.client_id = inner.client_id
        self.faults = Faults(version=0)
        self._rngs: dict[str, random.Random] = {}
        self._held: dict[str, tuple[str, bytes]] = {}  # fault id -> the message held back for a reorder
        self._later: set[asyncio.Task[None]] = set()
        self._endpoint = Endpoint(inner, node, clock)

    async def start(self) -> "ChaosBus":
        await self.inner.subscribe(topics.control(self.node), self._on_control)
        return self

    # -- the Bus interface ----------------------------------------------------------------
    async def subscribe(self, topic_filter: str, handler: Handler) -> None:
        await self.inner.subscribe(topic_filter, self._intake(handler))

    def open(self) -> None:
        self.inner.open()

    async def close(self) -> None:
        for task in self._later:
            task.cancel()
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:  # connected, reconnects, ... of the transport
        return getattr(self.inner, name)

    @property
    def on_reconnect(self) -> Any:
        return getattr(self.inner, "on_reconnect", None)

    @on_reconnect.setter
    def on_reconnect(self, hook: Any) -> None:
        self.inner.on_reconnect = hook  # type: ignore[attr-defined]

    async def publish(self, topic: str, payload: bytes) -> None:
        if not self.faults.messages:
            await self.inner.publish(topic, payload)
            return
        kind = body_type(payload)
        rule = next((r for r in self.faults.messages if chosen(r, topic, kind)), None)
        if rule is None:
            await self.inner.publish(topic, payload)
            return
        await self._befall(rule, topic, payload)

    # -- message faults -------------------------------------------------------------------
    def _rng(self, fault_id: str) -> random.Random:
        if fault_id not in self._rngs:
            self._rngs[fault_id] = random.Random(f"{self.faults.seed}:{self.node}:{fault_id}")
        return self._rngs[fault_id]

    async def _befall(self, rule: MessageFault, topic: str, payload: bytes) -> None:
        rng = self._rng(rule.id)
        if rng.random() < rule.drop:
            log.info("fault_message_dropped", fault=rule.id, topic=topic)
            return
        if rng.random() < rule.corrupt:
            at = rng.randrange(len(payload)) if payload else 0
            payload = payload[:at] + bytes([payload[at] ^ 0xFF]) + payload[at + 1:] if payload else payload
        copies = 2 if rng.random() < rule.duplicate else 1
        if rule.id not in self._held and rng.random() < rule.reorder:
            self._held[rule.id] = (topic, payload)  # goes after the next chosen message (or at the heal)
            return
        delay = max(0.0, rule.delay + rng.uniform(-rule.jitter, rule.jitter)) if rule.delay or rule.jitter else 0.0
        held = self._held.pop(rule.id, None)
        for _ in range(copies):
            await self._send(topic, payload, delay)
        if held is not None:
            await self._send(*held, delay)

    async def _send(self, topic: str, payload: bytes, delay: float) -> None:
        if delay <= 0:
            await self.inner.publish(topic, payload)
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            await self.inner.publish(topic, payload)

        task = asyncio.create_task(later(), name=f"chaos-delay:{topic}")
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    # -- API faults -----------------------------------------------------------------------
    def _intake(self, handler: Handler) -> Handler:
        async def intake(topic: str, payload: bytes) -> None:
            if not self.faults.api or topics.sender(topic) is None:
                await handler(topic, payload)
                return
            try:
                env = codec.decode(payload)
            except ProtocolError:
                await handler(topic, payload)
                return
            refusal = self._refusal() if isinstance(env.body, ApiCommand) and env.in_reply_to is None else None
            if refusal is None:
                await handler(topic, payload)
                return
            log.info("fault_api_refused", code=refusal.code, src=env.src, body=type(env.body).__name__)
            await self._endpoint.reply(env, refusal)

        return intake

    def _refusal(self) -> errors.Error | None:
        for fault in self.faults.api:
            draw = self._rng(fault.id).random()
            if draw < fault.throttle:
                return errors.error(*THROTTLED)
            if draw < fault.throttle + fault.error_5xx:
                return errors.error(*UNAVAILABLE)
        return None

    # -- control --------------------------------------------------------------------------
    async def _on_control(self, topic: str, payload: bytes) -> None:
        try:
            faults = _faults.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("fault_control_malformed", error=str(exc)[:200])
            return
        if faults.version > self.faults.version:
            await self.apply(faults)
        with contextlib.suppress(Exception):  # the ack is best-effort: the operator asks again
            await self.inner.publish(topics.control_applied(self.node), encode(Applied(node=self.node, version=self.faults.version)))

    async def apply(self, faults: Faults) -> None:
        """Obey ``faults`` from now on; what a healed reorder held back goes now."""
        kept = {r.id for r in faults.messages}
        for fault_id in [i for i in self._held if i not in kept]:
            await self.inner.publish(*self._held.pop(fault_id))
        ids = kept | {a.id for a in faults.api}
        self._rngs = {i: rng for i, rng in self._rngs.items() if i in ids and faults.seed == self.faults.seed}
        self.faults = faults
        self.clock.skew = faults.skew
        self.clock.offsets = dict(faults.offsets)
        log.info("faults_applied", version=faults.version, messages=len(faults.messages), api=len(faults.api),
                 skew=faults.skew, offsets=len(faults.offsets))
