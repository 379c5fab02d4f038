"""I/O shell: the simulated engine: an experiment run on virtual time by :mod:`services.runtime.sim`.

``run_sim(experiment, seed) -> SimRun``: the spec becomes a topology (RAM, STS, ECS, one metadata
agent per host, the :class:`~services.experiment.actors.Operator` as ``gateway`` and the
:class:`~services.experiment.actors.Application` as ``oss``; the same pure cores as a live cluster),
the timeline becomes events on the simulator's heap, and what happens becomes one
:class:`~services.faults.history.History` whose times are simulated seconds since the run's t=0.

Before t=0 a setup phase (:data:`SETUP` simulated seconds) creates the roles, attaches their
policies and runs the instances; instance *i* of the file is the *i*-th instance ECS launched.

What is recorded:

* ``Probe``: every instance's credential path read through ``MetadataCore.read`` every
  ``probe_interval`` (status 0 when its agent is down or paused). A run of identical answers is
  kept as its first and last probe, so 10,000 instances over a day stay small;
* ``Event``: ECS's RoleAttachedToInstance / InstanceCredentialsRefreshed / RoleDetachedFromInstance
  as published, and ``CredentialVisible`` / ``CredentialGone``: the moment an agent applied a view
  that serves a new credential for an instance (or none); the attach-to-visible and refresh
  latencies are measured from these;
* ``Attach`` / ``Detach``: the control actions with their answers; ``Call``: every workload call;
* ``Fault``: each fault's window (``start`` to when it healed); ``Mark``: each timeline step.
"""

from __future__ import annotations

import dataclasses
import gc
import json

import msgspec
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol import ids
from protocol.errors import Error
from protocol.messages import ecs as m
from protocol.messages import ram as ram_m
from services.ecs.app import build as build_ecs
from services.experiment import spec as s
from services.experiment.actors import Application, Operator, parse_credential
from services.faults.history import NO_ANSWER, Attach, Call, Detach, Event, Fault, History, Mark, Probe, Record
from services.metadata.app import build as build_metadata
from services.metadata.core import MetadataCore
from services.ram.core import RamCore
from services.runtime.settings import Settings
from services.runtime.sim import BROKER, ApiRule, Link, MessageRule, Simulation
from services.sts.core import StsCore

SETUP = 300.0                 # simulated seconds before t=0 for the setup
RESTART_AFTER = 1.0           # a killed process is back this long after (the supervisor), unless the fault says `for`
GC_THRESHOLD = 200_000        # allocations between young collections while a run goes (the default is 700)
BATCH = 100                   # instances per RunInstances / AttachInstanceRamRole (ECS's limit)
TRUST_ECS = json.dumps({"Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow",
                                       "Principal": {"Service": ["ecs.aliyuncs.com"]}}], "Version": "1"})
RECORDED_EVENTS = ("RoleAttachedToInstance", "InstanceCredentialsRefreshed", "RoleDetachedFromInstance")
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
NO_HEADERS: dict[str, str] = {}  # a probe's request headers (read, never written)


@dataclass
class SimRun:
    history: History
    seed: int
    events: int           # simulator events processed
    counters: dict[str, int] = field(default_factory=dict)
    acted: dict[str, int] = field(default_factory=dict)  # fault id -> messages or answers it changed


Progress = Callable[[float, float, dict[str, int]], None]  # (simulated seconds done, total, tallies)


class Engine:
    def __init__(self, x: s.Experiment, seed: int, duration: float | None = None) -> None:
        self.x, self.seed = x, seed
        self.duration = x.settings.duration if duration is None else duration
        self.sim = Simulation(seed, request_timeout=x.settings.request_timeout)
        self.t0 = self.sim.origin + SETUP
        self.records: list[Record] = []
        self.instance_ids: list[str] = []
        self.host_of: dict[str, str] = {}
        self.attached: dict[str, str] = {}   # instance id -> the role the operator attached
        self.acknowledged: set[str] = set()  # instances whose attach ECS answered (their applications run from then)
        self.visible: dict[str, str] = {}    # instance id -> access key id its agent serves
        self.active: dict[str, tuple[s.Fault, float]] = {}
        self.acted: dict[str, tuple[Any, ...]] = {}
        self.skews: dict[str, float] = {}    # instance id -> its own clock's offset
        self.tally = {"calls": 0, "ok": 0, "probes": 0, "faults": 0}
        self._last: dict[str, tuple[tuple, Probe, Probe]] = {}
        self.setup_error = ""
        self._documents: dict[str, tuple[str, Any]] = {}
        self._roles: dict[str, str] = {}     # instance id -> the role its listing named last
        self._agents: dict[str, Any] = {}    # host id -> its metadata agent's node
        self._build()

    # -- topology ---------------------------------------------------------------------------
    def _build(self) -> None:
        sim, x = self.sim, self.x
        rng = sim.stream("ids")
        self.account_id = ids.numeric_id(rng.randbytes(8), 16)
        root_id, root_secret = ids.access_key_id(rng.randbytes(20)), ids.secret(rng.randbytes(30))
        signing_key = rng.randbytes(32)
        settings = Settings(account_id=self.account_id, credential_lifetime=int(x.settings.credential_lifetime),
                            refresh_before=int(x.settings.refresh_before))
        sim.add("ram", lambda e: RamCore(account_id=self.account_id, root_access_key_id=root_id, root_access_key_secret=root_secret,
                                         entropy=e.token_bytes, now=sim.now, ack_timeout=1.0))
        sim.add("sts", lambda e: StsCore(account_id=self.account_id, signing_key=signing_key, entropy=e.token_bytes))
        sim.add("ecs", lambda e: build_ecs(settings, e))
        for h in range(1, x.topology.hosts + 1):
            host = dataclasses.replace(settings, host_id=f"host-{h}")
            sim.add(f"metadata-host-{h}", lambda e, host=host: build_metadata(host, e))
        sim.add("gateway", lambda e: Operator(self.account_id))
        sim.add("oss", lambda e: Application(self.account_id))
        sim.observers.append(self._published)
        sim.after_step.append(self._stepped)

    def _t(self) -> float:
        return round(self.sim.now - self.t0, 6)

    def _published(self, topic: str, env: Any) -> None:
        body = env.body
        if isinstance(body, m.InstanceChanged):
            self.host_of[body.view.instance_id] = body.view.host_id
        elif isinstance(body, m.InstancesChanged):  # a batch of views, direct to one host's agent
            self.host_of.update({v.instance_id: v.host_id for v in body.views})
        elif env.src == "ecs" and type(body).__name__ in RECORDED_EVENTS and self.sim.now >= self.t0:
            self.records.append(Event(at=self._t(), name=type(body).__name__, src="ecs", instance_id=body.instance_id,
                                      role=body.ram_role_name, access_key_id=getattr(body, "access_key_id", ""),
                                      expiration=getattr(body, "expiration", self.t0) - self.t0))

    def _stepped(self, node: Any, cause: Any) -> None:
        """After an agent's step: did what it serves change? (A pushed view names its instance; a
        registration's answer, after a restart or a reconnect, may change any of the host's.)"""
        if not isinstance(node.core, MetadataCore):
            return
        if cause is not None and isinstance(cause.body, m.InstanceChanged):
            self._serving(node, cause.body.view.instance_id)
        elif cause is not None and isinstance(cause.body, m.InstancesChanged):
            for view in cause.body.views:
                self.host_of[view.instance_id] = view.host_id  # (a direct message: no observer saw it published)
                self._serving(node, view.instance_id)
        elif cause is None:
            for instance_id in list(node.core.views):
                self._serving(node, instance_id)

    def _serving(self, node: Any, instance_id: str) -> None:
        view = node.core.views.get(instance_id)
        serving = view.credentials if view is not None and view.ram_role_name and not view.deleted else None
        key = serving.access_key_id if serving is not None else ""
        if key == self.visible.get(instance_id, ""):
            return
        self.visible[instance_id] = key
        if self.sim.now < self.t0:
            return
        if serving is not None:
            self.records.append(Event(at=self._t(), name="CredentialVisible", src=node.node_id, instance_id=instance_id,
                                      role=view.ram_role_name, access_key_id=key, expiration=serving.expiration - self.t0))
        else:
            self.records.append(Event(at=self._t(), name="CredentialGone", src=node.node_id, instance_id=instance_id))

    # -- the operator -------------------------------------------------------------------------
    def _operate(self, dest: str, body: Any, then: Callable[[Any, float], None]) -> None:
        def answered(reply: Any, now: float) -> list:
            then(reply, now)
            return []
        if not self.sim.step("gateway", lambda now: self.sim.nodes["gateway"].core.call(dest, body, answered)):
            then(Error(code="ServiceUnavailable", message="gateway is down", http_status=503), self.sim.now)

    def _setup(self) -> None:
        steps: list[tuple[str, Any]] = []
        for name, role in self.x.topology.roles.items():
            steps.append(("ram", ram_m.CreateRole(role_name=name, assume_role_policy_document=TRUST_ECS)))
            steps += [("ram", ram_m.AttachPolicyToRole(policy_type="System", policy_name=p, role_name=name)) for p in role.policies]
        remaining = self.x.topology.instances
        while remaining > 0:
            steps.append(("ecs", m.RunInstances(region_id="cn-hangzhou", amount=min(BATCH, remaining))))
            remaining -= BATCH
        self._chain(steps, "setup")

    def _chain(self, steps: list[tuple[str, Any]], what: str) -> None:
        if not steps:
            return
        (dest, body), rest = steps[0], steps[1:]

        def then(reply: Any, now: float) -> None:
            if isinstance(reply, Error):
                self.setup_error = f"{what}: {type(body).__name__} failed: {reply.code}: {reply.message}"
                return
            if isinstance(reply, m.RunInstancesOk):
                self.instance_ids += reply.instance_id_sets.instance_id_set
            self._chain(rest, what)
        self._operate(dest, body, then)

    def _instances(self, selection: s.Instances) -> list[str]:
        return [self.instance_ids[i] for i in s.select(selection, len(self.instance_ids)) if i < len(self.instance_ids)]

    def _attach(self, step: s.AttachRole) -> None:
        chosen = [i for i in self._instances(step.instances) if i not in self.attached]
        for i in chosen:
            self.attached[i] = step.role
        for start in range(0, len(chosen), BATCH):
            batch, asked = chosen[start:start + BATCH], self._t()
            body = m.AttachInstanceRamRole(region_id="cn-hangzhou", ram_role_name=step.role, instance_ids=json.dumps(batch))
            self._operate("ecs", body, lambda reply, now, batch=batch, asked=asked: self._attached(reply, batch, asked, step.role))

    def _attached(self, reply: Any, batch: list[str], asked: float, role: str) -> None:
        results = {r.instance_id: r for r in reply.attach_instance_ram_role_results.attach_instance_ram_role_result} \
            if isinstance(reply, m.AttachInstanceRamRoleOk) else {}
        acknowledged = None if isinstance(reply, Error) and not reply.definite else self._t()
        for i in batch:
            result = results.get(i)
            ok = result is not None and result.success
            if not ok and (acknowledged is not None):
                self.attached.pop(i, None)
            if ok or acknowledged is None:  # an attach whose outcome is unknown may have worked: its app runs
                self.acknowledged.add(i)
            code = "" if ok else (result.code if result is not None else getattr(reply, "code", ""))
            self.records.append(Attach(at_requested=asked, at_acknowledged=acknowledged, instance_id=i, role=role, ok=ok, code=code))

    def _detach(self, step: s.DetachRole) -> None:
        chosen = [i for i in self._instances(step.instances) if i in self.attached]
        for start in range(0, len(chosen), BATCH):
            batch, asked = chosen[start:start + BATCH], self._t()
            roles = {i: self.attached.pop(i) for i in batch}
            self.acknowledged.difference_update(batch)
            body = m.DetachInstanceRamRole(region_id="cn-hangzhou", instance_ids=json.dumps(batch))
            self._operate("ecs", body, lambda reply, now, roles=roles, asked=asked: self._detached(reply, roles, asked))

    def _detached(self, reply: Any, roles: dict[str, str], asked: float) -> None:
        results = {r.instance_id: r for r in reply.detach_instance_ram_role_results.detach_instance_ram_role_result} \
            if isinstance(reply, m.DetachInstanceRamRoleOk) else {}
        acknowledged = None if isinstance(reply, Error) and not reply.definite else self._t()
        for i, role in roles.items():
            ok = i in results and results[i].success
            self.records.append(Detach(at_requested=asked, at_acknowledged=acknowledged, instance_id=i, role=role, ok=ok,
                                       code="" if ok else getattr(reply, "code", "")))

    def _policy(self, step: s.AttachPolicy | s.DetachPolicy) -> None:
        kind = ram_m.AttachPolicyToRole if isinstance(step, s.AttachPolicy) else ram_m.DetachPolicyFromRole
        body = kind(policy_type="System", policy_name=step.policy, role_name=step.role)
        self._operate("ram", body, lambda reply, now: None if not isinstance(reply, Error) else self._mark(
            f"{type(body).__name__} {step.policy} on {step.role} failed: {reply.code}"))

    def _run_instances(self, step: s.RunInstances) -> None:
        def then(reply: Any, now: float) -> None:
            if isinstance(reply, m.RunInstancesOk):
                self.instance_ids += reply.instance_id_sets.instance_id_set
            else:
                self._mark(f"RunInstances failed: {getattr(reply, 'code', '')}")
        for start in range(0, step.count, BATCH):
            self._operate("ecs", m.RunInstances(region_id="cn-hangzhou", amount=min(BATCH, step.count - start)), then)

    def _mark(self, text: str) -> None:
        self.records.append(Mark(at=self._t(), text=text))

    # -- the timeline -------------------------------------------------------------------------
    def _do(self, step: Any, index: int) -> None:
        self._mark(describe(step))
        if isinstance(step, s.AttachRole):
            self._attach(step)
        elif isinstance(step, s.DetachRole):
            self._detach(step)
        elif isinstance(step, (s.AttachPolicy, s.DetachPolicy)):
            self._policy(step)
        elif isinstance(step, s.RunInstances):
            self._run_instances(step)
        elif isinstance(step, s.RestartControlPlane):
            for node in ("ram", "sts", "ecs"):
                self.sim.kill(node)
            self.sim.at(self.sim.now + RESTART_AFTER, self._restart_control_plane, self._t())
        elif isinstance(step, s.Heal):
            self._heal(step.heal)
        else:
            self._inject(step, step.id or f"{kind(step)}-{index}")

    def _restart_control_plane(self, since: float) -> None:
        for node in ("ram", "sts", "ecs"):
            self.sim.start(node)
            self.records.append(Fault(start=since, end=self._t(), kind="restart", target=node))

    def _inject(self, f: s.Fault, fault_id: str) -> None:
        sim, target = self.sim, f.target
        node = sim.nodes.get(target)
        if isinstance(f, (s.Kill, s.Restart)):
            if target == BROKER:
                sim.broker_down()
            else:
                sim.kill(target)
        elif isinstance(f, s.Pause):
            if target == BROKER:
                sim.broker_paused = True
            else:
                sim.pause(target)
        elif isinstance(f, s.Link):
            assert node is not None
            node.link = Link(latency=f.latency, jitter=f.jitter, distribution=f.distribution, loss=f.loss,
                             bandwidth=f.bandwidth or 0.0, partition=f.partition, direction=f.direction)
            if f.reset:
                sim.reconnect(target)
        elif isinstance(f, s.MessageFault):
            rule = MessageRule(types=frozenset(f.types), topics=tuple(f.topics), node=target, drop=f.drop, delay=f.delay,
                               jitter=f.jitter, duplicate=f.duplicate, reorder=f.reorder, corrupt=f.corrupt)
            sim.rules.append(rule)
            self.acted[fault_id] = (rule,)
        elif isinstance(f, s.ClockSkew):
            if f.instance is not None:
                self.skews[self.instance_ids[f.instance]] = f.skew
            else:
                sim.set_skew(target, f.skew)
        elif isinstance(f, s.ApiErrors):
            assert node is not None
            rule = ApiRule(throttle=f.throttle, error_5xx=f.error_5xx)
            node.api.append(rule)
            self.acted[fault_id] = (rule,)
        self.active[fault_id] = (f, self._t())
        self.tally["faults"] += 1
        if isinstance(f, (s.Kill, s.Restart)) and f.for_ is None:
            sim.at(sim.now + RESTART_AFTER, self._heal, fault_id)
        elif f.for_ is not None:
            sim.at(sim.now + f.for_, self._heal, fault_id)

    def _heal(self, fault_id: str) -> None:
        found = self.active.pop(fault_id, None)
        if found is None:
            return  # healed already (its `for` ran out, or an explicit heal came first)
        f, start = found
        sim, target = self.sim, f.target
        node = sim.nodes.get(target)
        if isinstance(f, (s.Kill, s.Restart)):
            if target == BROKER:
                sim.broker_back()
            else:
                sim.start(target)
        elif isinstance(f, s.Pause):
            if target == BROKER:
                sim.broker_resume()
            else:
                sim.resume(target)
        elif isinstance(f, s.Link):
            assert node is not None
            partitioned = node.link is not None and node.link.partition
            node.link = None
            if partitioned:
                sim.reconnect(target)  # back on the broker: the client reconnects and the core resyncs
        elif isinstance(f, s.MessageFault):
            sim.rules.remove(self.acted[fault_id][0])
        elif isinstance(f, s.ClockSkew):
            if f.instance is not None:
                self.skews.pop(self.instance_ids[f.instance], None)
            else:
                sim.set_skew(target, 0.0)
        elif isinstance(f, s.ApiErrors):
            assert node is not None
            node.api.remove(self.acted[fault_id][0])
        self.records.append(Fault(start=start, end=self._t(), kind=kind(f), target=_window_target(f, self.instance_ids)))

    # -- probes and the workload --------------------------------------------------------------
    def _reader(self, instance_id: str) -> Callable[[str], tuple[int, str]] | None:
        """``read(path) -> (status, body)`` on the instance's metadata agent, or None if it cannot answer."""
        host = self.host_of.get(instance_id)
        node = self.sim.nodes.get(f"metadata-{host}") if host else None
        if node is None or not node.up or node.paused:
            return None
        core, now = node.core, self.sim.clock(node)

        def read(path: str) -> tuple[int, str]:
            answer = core.read(instance_id, "GET", path, {}, now)
            return answer.status, answer.body
        return read

    def _probe_all(self) -> None:
        at = self._t()
        for instance_id in self.instance_ids:
            self._probe(instance_id, at)
        self.tally["probes"] += len(self.instance_ids)
        if self.sim.now + self.x.settings.probe_interval <= self.t0 + self.duration:
            self.sim.at(self.sim.now + self.x.settings.probe_interval, self._probe_all)

    def _probe(self, instance_id: str, at: float) -> None:
        """The role listing, then that role's credential document (the listing only when the
        role it named last time is not served: a probe is one read while nothing changes)."""
        host = self.host_of.get(instance_id, "")
        node = self._agents.get(host) if host else None
        if node is None and host:
            node = self._agents[host] = self.sim.nodes.get(f"metadata-{host}")
        read = None
        if node is not None and node.up and not node.paused:
            answer, now = node.core.read, self.sim.now + node.skew

            def read(path: str) -> tuple[int, str]:
                a = answer(instance_id, "GET", path, NO_HEADERS, now)
                return a.status, a.body
        if read is None:
            self._keep(instance_id, (NO_ANSWER,), Probe(at=at, instance_id=instance_id, status=NO_ANSWER, host_id=host, error="no answer"))
            return
        role = self._roles.get(instance_id, "")
        status, body = read(CREDENTIALS + role) if role else (404, "")
        if status != 200:
            status, listing = read(CREDENTIALS)
            role = self._roles[instance_id] = listing.split("\n")[0] if status == 200 else ""
            if role:
                status, body = read(CREDENTIALS + role)
        held = self._parsed(instance_id, body, role) if status == 200 and role else None
        if held is None:
            self._keep(instance_id, (status, role), Probe(at=at, instance_id=instance_id, status=status, role=role, host_id=host))
            return
        expiration = held.expiration - self.t0
        probe = Probe(at=at, instance_id=instance_id, status=200, role=role, access_key_id=held.access_key_id,
                      expiration=expiration, host_id=host)
        self._keep(instance_id, (200, role, held.access_key_id, expiration <= at), probe)

    def _parsed(self, instance_id: str, body: str, role: str) -> Any:
        """The credential document, parsed once per rendering (an agent renders a view once)."""
        cached = self._documents.get(instance_id)
        if cached is not None and cached[0] is body:
            return cached[1]
        held = parse_credential(body, role)
        self._documents[instance_id] = (body, held)
        return held

    def _keep(self, instance_id: str, key: tuple, probe: Probe) -> None:
        """Keep the first and the last probe of each run of identical answers."""
        last = self._last.get(instance_id)
        if last is not None and last[0] == key:
            self._last[instance_id] = (key, last[1], probe)
            return
        if last is not None:
            self._flush(last)
        self._last[instance_id] = (key, probe, probe)

    def _flush(self, run: tuple[tuple, Probe, Probe]) -> None:
        _, first, last = run
        self.records.append(first)
        if last is not first:
            self.records.append(last)

    def _workload(self) -> None:
        rng = self.sim.stream("app")
        for app in self.x.topology.apps:
            for index in s.select(app.instances, self.x.total_instances()):
                first = self.t0 + rng.expovariate(app.rate)
                self.sim.at(first, self._call, index, app, rng)

    def _call(self, index: int, app: s.App, rng: Any) -> None:
        sim = self.sim
        nxt = sim.now + rng.expovariate(app.rate)
        if nxt <= self.t0 + self.duration:
            sim.at(nxt, self._call, index, app, rng)
        if index >= len(self.instance_ids):
            return  # not launched yet
        instance_id = self.instance_ids[index]
        if instance_id not in self.attached or instance_id not in self.acknowledged:
            return  # an application runs where a role is attached, once ECS said so
        started = sim.now

        def done(outcome: str, code: str, now: float) -> None:
            self.tally["calls"] += 1
            self.tally["ok"] += outcome == "ok"
            self.records.append(Call(at=self._t(), instance_id=instance_id, operation=app.operation, outcome=outcome,
                                     latency_ms=round((sim.now - started) * 1000, 3), code=code))

        enforcement = sim.nodes["oss"]
        if not enforcement.up or enforcement.paused:
            done("error", "ServiceUnavailable", sim.now)
            return
        app_core = enforcement.core
        read = self._reader(instance_id)
        held = app_core.credential(instance_id, read or (lambda path: (NO_ANSWER, "")), sim.now + self.skews.get(instance_id, 0.0))
        if held is None:
            done("error", "NoCredential", sim.now)
        elif not sim.step("oss", lambda now: app_core.call(instance_id, app.operation, held, now, done)):
            done("error", "ServiceUnavailable", sim.now)

    # -- the run -------------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> SimRun:
        # A long run allocates millions of small objects that live (records, queued messages): the
        # cyclic collector's default pace (every 700 allocations) spent an eighth of the run
        # re-scanning them. Collect less often while it runs (output unchanged: no finalizer here
        # decides anything).
        threshold = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, 20, 1000)
        try:
            return self._run(progress)
        finally:
            gc.set_threshold(*threshold)

    def _run(self, progress: Progress | None) -> SimRun:
        sim = self.sim
        sim.at(sim.origin + 1.0, self._setup)
        for index, step in enumerate(self.x.timeline):
            if step.at <= self.duration:
                sim.at(self.t0 + step.at, self._do, step, index)
        sim.at(self.t0, self._probe_all)
        self._workload()
        end = self.t0 + self.duration
        sim.run(self.t0 - 0.5)
        if self.setup_error:
            raise SetupError(self.setup_error)
        if len(self.instance_ids) < self.x.topology.instances:
            raise SetupError(f"setup: {len(self.instance_ids)} of {self.x.topology.instances} instances running after {SETUP:g}s")
        slices = 100 if progress is not None else 1
        for k in range(1, slices + 1):
            sim.run(self.t0 + self.duration * k / slices)
            if progress is not None:
                progress(self.duration * k / slices, self.duration, dict(self.tally))
        sim.now = end
        for fault_id in list(self.active):
            self._heal(fault_id)  # every fault heals at the end
        for run in self._last.values():
            self._flush(run)
        self._last.clear()
        history = History(sorted(self.records, key=_time))
        counters = dataclasses.asdict(sim.counters)
        acted = {fault_id: rules[0].acted for fault_id, rules in self.acted.items()}
        return SimRun(history=history, seed=self.seed, events=sim.counters.events, counters=counters, acted=acted)


class SetupError(RuntimeError):
    """The topology could not be built (a bug or an impossible file, never a fault: faults start at t=0)."""


def kind(step: Any) -> str:
    """A step's ``do:`` or ``fault:`` value ("heal" for a heal)."""
    config = step.__struct_config__
    return str(config.tag) if config.tag_field else "heal"


def describe(step: Any) -> str:
    """One timeline step in words (the Mark's text): its kind and the fields it sets."""
    head = kind(step)
    names = dict(zip(step.__struct_fields__, step.__struct_encode_fields__))  # as the file writes them: for, not for_
    fields = {names[k]: v for k, v in msgspec.structs.asdict(step).items() if k != "at" and v not in (None, "", [], 0, 0.0, False)}
    return " ".join([str(head)] + [f"{k}={_value(v)}" for k, v in fields.items()])


def _value(v: Any) -> str:
    if isinstance(v, s.Percent):
        return f"{v * 100:g}%"
    if isinstance(v, (s.Duration, s.Skew)):
        return f"{v:+g}s" if isinstance(v, s.Skew) else f"{v:g}s"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _window_target(f: s.Fault, instance_ids: list[str]) -> str:
    if isinstance(f, s.ClockSkew) and f.instance is not None:
        return instance_ids[f.instance]
    return f.target or "bus"


def _time(record: Record) -> float:
    """When a record happened (Attach/Detach: when asked; Fault: when it began)."""
    for name in ("at", "at_requested", "start"):
        value = getattr(record, name, None)
        if value is not None:
            return value
    return 0.0


def run_sim(x: s.Experiment, seed: int | None = None, *, progress: Progress | None = None, duration: float | None = None) -> SimRun:
    """Run ``x`` in the simulator with ``seed`` (default: the file's); ``duration`` shortens it (tests)."""
    return Engine(x, x.seed if seed is None else seed, duration).run(progress)
