"""I/O shell: live faults on a running cluster (``services.cli.up.Cluster``), each one healed.

::

    async with Injector(cluster, recorder, seed=7) as faults:   # heals whatever is still active on exit
        await faults.pause("sts-down", "sts")                   # SIGSTOP ... (SIGCONT at the heal)
        await faults.link("slow", "metadata-host-1", Toxics(latency=0.2, jitter=0.1, distribution="normal"))
        await faults.message("drops", types=["InstanceViewPushed"], drop=0.3)
        await faults.clock_skew("skew", "ecs", 300.0)           # or instance_id=... on its host's agent
        await faults.api_errors("throttled", "sts", throttle=0.2, error_5xx=0.1)
        await faults.heal("sts-down")                           # when it healed (wall clock)

Each fault is a window in the recorder's history (:meth:`Recorder.fault`, from the injection to
the moment the heal is complete) and :attr:`Injector.healed` says when each healed.

* process (``kill``: kill -9; ``restart``: SIGTERM; ``pause``: SIGSTOP): through the cluster's
  own children and supervisor (:mod:`services.faults.soak`'s helpers); a killed or restarted
  child is healed once the supervisor started it again and every node answers a Ping; a paused
  one gets SIGCONT. ``broker`` names Mosquitto.
* link: the child's :class:`~services.experiment.proxy.Proxy` (the cluster must have been started
  with that child in ``Options.proxies``), healed to a plain link.
* message, clock and API faults: each node's whole fault state (:class:`services.runtime.chaos.Faults`)
  sent to ``control/<node>`` as the operator; the node acknowledges the version it obeys, and
  the injector waits for that (bounded: a paused or partitioned node obeys when it is back).
  A node restarted by a process fault is sent its state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol import topics
from services.cli.up import Cluster
from services.experiment.proxy import Toxics
from services.faults import soak
from services.faults.recorder import Recorder
from services.runtime import chaos

BROKER = "mosquitto"


def node_name(target: str) -> str:
    """The cluster child an experiment's target names (``broker`` is Mosquitto)."""
    return BROKER if target == "broker" else target


class InjectError(ValueError):
    """A fault that cannot be injected into this cluster (says why)."""


@dataclass
class NodeFaults:
    """What one node is told to obey, by fault id."""

    messages: dict[str, chaos.MessageFault] = field(default_factory=dict)
    api: dict[str, chaos.ApiFault] = field(default_factory=dict)
    skew: dict[str, float] = field(default_factory=dict)
    offsets: dict[str, tuple[str, float]] = field(default_factory=dict)  # fault id -> (instance id, seconds)

    def state(self, version: int, seed: int) -> chaos.Faults:
        offsets: dict[str, float] = {}
        for instance_id, seconds in self.offsets.values():
            offsets[instance_id] = offsets.get(instance_id, 0.0) + seconds
        return chaos.Faults(version=version, seed=seed, messages=list(self.messages.values()), api=list(self.api.values()),
                            skew=sum(self.skew.values()), offsets=offsets)

    def forget(self, fault_id: str) -> bool:
        return any(d.pop(fault_id, None) is not None for d in (self.messages, self.api, self.skew, self.offsets))


class Injector:
    def __init__(self, cluster: Cluster, recorder: Recorder | None = None, *, seed: int = 0, ack_timeout: float = 5.0,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.cluster, self.recorder, self.seed, self.ack_timeout, self.say = cluster, recorder, seed, ack_timeout, say
        self.operator = soak.Operator(cluster, f"inject-{id(self):x}")  # its own MQTT client id
        self.active: dict[str, contextlib.AsyncExitStack] = {}
        self.started: dict[str, float] = {}
        self.healed: dict[str, float] = {}  # fault id -> wall time its heal completed
        self.nodes = {p.name: NodeFaults() for p in cluster.processes if p.name != BROKER}
        self.applied: dict[str, int] = {}  # node -> the version it acknowledged
        self._versions: dict[str, int] = {}
        self._acks = asyncio.Event()

    async def __aenter__(self) -> "Injector":
        await self.operator.connect()
        assert self.operator.bus is not None
        await self.operator.bus.subscribe(topics.control_applied(), self._on_applied)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.heal_all()
        finally:
            await self.operator.close()

    # -- process faults -------------------------------------------------------------------
    async def kill(self, fault_id: str, target: str) -> None:
        await self._signal(fault_id, "kill", target, signal.SIGKILL)

    async def restart(self, fault_id: str, target: str) -> None:
        await self._signal(fault_id, "restart", target, signal.SIGTERM)

    async def _signal(self, fault_id: str, kind: str, target: str, sig: signal.Signals) -> None:
        node = self._child(target)
        stack = await self._open(fault_id, kind, node)
        restarts = self.cluster.restarts.get(node, 0)
        os.kill(self.cluster.process(node).pid, sig)

        async def heal() -> None:
            await soak.back(self.cluster, self.operator, node, restarts)
            if node in self.nodes and not self.nodes[node].state(0, 0).empty:
                await self._push(node)  # its fault state died with it

        stack.push_async_callback(heal)

    async def pause(self, fault_id: str, target: str) -> None:
        node = self._child(target)
        stack = await self._open(fault_id, "pause", node)
        stack.enter_context(soak.paused(self.cluster, node))

    # -- link faults ----------------------------------------------------------------------
    async def link(self, fault_id: str, target: str, toxics: Toxics, *, reset: bool = False) -> None:
        node = node_name(target)
        proxy = self.cluster.proxies.get(node)
        if proxy is None:
            raise InjectError(f"link fault on {target}: its link has no proxy; start the cluster with it in "
                              f"Options.proxies (ramsim up --proxy {target})")
        stack = await self._open(fault_id, "link", node)
        proxy.set(toxics, seed=self.seed)
        if reset:
            proxy.reset()
        stack.callback(proxy.heal)

    # -- node faults: message, clock, API -------------------------------------------------
    async def message(self, fault_id: str, *, nodes: list[str] | None = None, **rule: Any) -> None:
        """Message faults (``types``, ``topics``, ``drop``, ``delay`` ... as :class:`chaos.MessageFault`)
        on every message the chosen nodes send (default: every node)."""
        chosen = [node_name(n) for n in nodes] if nodes else sorted(self.nodes)
        fault = chaos.MessageFault(id=fault_id, **rule)
        await self._node_fault(fault_id, "message", chosen, lambda faults: faults.messages.__setitem__(fault_id, fault))

    async def clock_skew(self, fault_id: str, target: str, skew: float, *, instance_id: str = "") -> None:
        """``target``'s clock ``skew`` simulated seconds ahead (negative: behind); with
        ``instance_id``, that instance's own clock as its host's agent (``target``) serves it."""
        node = node_name(target)
        if instance_id:
            await self._node_fault(fault_id, "clock_skew", [node], lambda f: f.offsets.__setitem__(fault_id, (instance_id, skew)))
        else:
            await self._node_fault(fault_id, "clock_skew", [node], lambda f: f.skew.__setitem__(fault_id, skew))

    async def api_errors(self, fault_id: str, target: str, *, throttle: float = 0.0, error_5xx: float = 0.0) -> None:
        fault = chaos.ApiFault(id=fault_id, throttle=throttle, error_5xx=error_5xx)
        await self._node_fault(fault_id, "api_errors", [node_name(target)], lambda f: f.api.__setitem__(fault_id, fault))

    async def _node_fault(self, fault_id: str, kind: str, nodes: list[str], put: Callable[[NodeFaults], None]) -> None:
        unknown = [n for n in nodes if n not in self.nodes]
        if unknown:
            raise InjectError(f"{kind} fault: no node {', '.join(unknown)} in this cluster ({', '.join(sorted(self.nodes))})")
        stack = await self._open(fault_id, kind, nodes[0] if len(nodes) == 1 else "*")
        for node in nodes:
            put(self.nodes[node])
        await asyncio.gather(*(self._push(node) for node in nodes))

        async def heal() -> None:
            await asyncio.gather(*(self._push(node) for node in nodes if self.nodes[node].forget(fault_id)))

        stack.push_async_callback(heal)

    async def _push(self, node: str) -> bool:
        """Send ``node`` its whole fault state; True once it acknowledged it (False after the bound)."""
        version = self._versions[node] = self._versions.get(node, 0) + 1
        state = self.nodes[node].state(version, self.seed)
        assert self.operator.bus is not None
        await self.operator.bus.publish(topics.control(node), chaos.encode(state))
        deadline = time.monotonic() + self.ack_timeout
        while self.applied.get(node, 0) < version:
            self._acks.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.say(f"{node} did not acknowledge its faults (version {version}) in {self.ack_timeout:g} s; "
                         "it obeys them when it is back")
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._acks.wait(), remaining)
        return True

    async def _on_applied(self, topic: str, payload: bytes) -> None:
        try:
            ack = chaos.decode_applied(payload)
        except Exception:  # noqa: BLE001 - only nodes write there; a bad ack is ignored
            return
        if topic == topics.control_applied(ack.node) and ack.version >= self.applied.get(ack.node, 0):
            self.applied[ack.node] = ack.version
            self._acks.set()

    # -- windows and heals ----------------------------------------------------------------
    def _child(self, target: str) -> str:
        node = node_name(target)
        if node not in {p.name for p in self.cluster.processes}:
            raise InjectError(f"no process {target!r} in this cluster ({', '.join(p.name for p in self.cluster.processes)})")
        return node

    async def _open(self, fault_id: str, kind: str, target: str) -> contextlib.AsyncExitStack:
        if fault_id in self.active:
            raise InjectError(f"fault {fault_id!r} is already active")
        stack = contextlib.AsyncExitStack()
        if self.recorder is not None:
            await stack.enter_async_context(self.recorder.fault(kind, target))  # left last: the window ends at the heal
        self.active[fault_id] = stack
        self.started[fault_id] = time.time()
        self.say(f"fault {fault_id}: {kind} {target}")
        return stack

    async def heal(self, fault_id: str) -> float:
        """Undo the fault ``fault_id`` and wait until it is healed; when that was (wall clock)."""
        stack = self.active.pop(fault_id, None)
        if stack is None:
            return self.healed.get(fault_id, 0.0)
        try:
            await stack.aclose()
        finally:
            self.healed[fault_id] = time.time()
            self.say(f"fault {fault_id} healed")
        return self.healed[fault_id]

    async def heal_all(self) -> None:
        """Heal every active fault, newest first; every one is tried even if one fails."""
        failures: list[BaseException] = []
        for fault_id in reversed(list(self.active)):
            try:
                await self.heal(fault_id)
            except Exception as exc:  # noqa: BLE001 - the others must still heal
                failures.append(exc)
        if failures:
            raise failures[0]
