"""I/O shell: the live engine: one experiment on a real cluster (real processes, a real Mosquitto), in scaled time.

:func:`run_live` starts a cluster (:func:`services.cli.up.running_cluster`, in its own state
directory under ``out_dir``, with a link proxy for every component a ``link`` fault names), makes
the topology's roles (trusting ECS, with their System policies), launches the instances, runs the
applications (``ramsim app``'s workload, in this process: the real credentials provider and
oss2, every call published on the bus) and drives the timeline on the cluster's clock, while the
:class:`~services.faults.recorder.Recorder` records probes, bus events, calls and fault windows and
the :class:`~services.experiment.inject.Injector` injects and heals the faults. Every fault is
healed on every way out (the injector's ``async with``): the end of the run, an error, Ctrl-C;
its window in the history ends when its heal was complete.

Times. The file's times are simulated; the cluster runs ``settings.time_scale`` simulated seconds
per real second. A step ``at: 10m`` runs 600 / scale real seconds after the start; a fault's
latency, jitter and message delay are simulated too, so they are divided by the scale for the
proxy and the bus, and a bandwidth (bits per simulated second) multiplied by it. A clock skew is
simulated seconds on the cluster's clock as it is. An application's rate (calls per simulated
second) becomes ``rate * scale`` real calls per second, at most :data:`APP_RATE_CAP` (a live
machine has two cores; the history's Marks say when the cap applied). The history returned
(and written to ``out_dir/history.jsonl``) is in simulated seconds since the start, as the sim
engine's: every point in time and every duration of the Recorder's wall-clock records converted
(what it recorded before the start, while the instances were being launched, left out).

Not live (refused before anything starts, :class:`LiveError`): ``stop_instances`` (ramsim's ECS
has no StopInstances yet) and ``run_instances`` with a ``host`` (ECS places instances round-robin).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgspec

from services.cli import api
from services.cli.supervision import RestartPolicy
from services.cli.up import Cluster, Options, running_cluster
from services.experiment import spec as s
from services.experiment.inject import Injector
from services.experiment.proxy import Toxics
from services.faults.history import Call, History, Record, encode_jsonl
from services.faults.recorder import Recorder
from services.ram.policy import ECS_TRUST_POLICY

APP_RATE_CAP = 5.0           # real calls per second per application, at most
MIN_PROBE_INTERVAL = 0.02    # real seconds between two probes of one instance, at least
HEAL_TIMEOUT = 30.0          # real seconds a killed node may take to be back
POINTS = ("at", "at_requested", "at_acknowledged", "start", "end", "expiration")  # wall-clock instants in records
SPANS = ("took",)            # real-second durations in records
TICK = 0.5                   # real seconds between two progress reports while waiting
Progress = Callable[[float, float, dict[str, int]], None]  # (simulated seconds done, total, tallies), as the sim's


class LiveError(ValueError):
    """An experiment the live engine cannot run (says what and why)."""


def unsupported(x: s.Experiment) -> list[str]:
    """What in ``x`` cannot run live (empty: all of it can)."""
    problems = []
    for i, step in enumerate(x.timeline):
        if isinstance(step, s.StopInstances):
            problems.append(f"timeline[{i}]: stop_instances is not available live (ramsim's ECS has no StopInstances yet)")
        if isinstance(step, s.RunInstances) and step.host is not None:
            problems.append(f"timeline[{i}].host: live, ECS places instances round-robin over the hosts")
    return problems


def to_simulated(history: History, start: float, scale: float) -> History:
    """The Recorder's wall-clock history as simulated seconds since ``start`` (wall epoch). What
    was recorded before the start (probes of instances being launched) is left out."""

    def convert(record: Record) -> Record:
        changes: dict[str, Any] = {}
        for name in POINTS:
            value = getattr(record, name, None)
            if isinstance(value, float) and value:  # 0.0: "none" (an expiration never served)
                changes[name] = round((value - start) * scale, 6)
        for name in SPANS:
            value = getattr(record, name, None)
            if isinstance(value, float):
                changes[name] = round(value * scale, 6)
        if isinstance(record, Call):
            changes["latency_ms"] = round(record.latency_ms * scale, 3)
        return msgspec.structs.replace(record, **changes) if changes else record

    converted = (convert(r) for r in history)
    return History(r for r in converted if getattr(r, "at", 0.0) >= 0)


@dataclass
class Run:
    """One live run in progress."""

    x: s.Experiment
    cluster: Cluster
    rec: Recorder
    faults: Injector
    start: float                              # wall epoch of simulated 0
    progress: Progress
    instances: list[str] = field(default_factory=list)  # by index, as launched
    roles: dict[str, str] = field(default_factory=dict)  # instance id -> the role attached
    apps: list[asyncio.Task[int]] = field(default_factory=list)
    heals: list[asyncio.Task[float]] = field(default_factory=list)  # heals that wait (a killed node coming back)

    @property
    def scale(self) -> float:
        return self.x.settings.time_scale

    def now(self) -> float:
        """Simulated seconds since the start."""
        return (time.time() - self.start) * self.scale

    async def until(self, at: float) -> None:
        """Wait until simulated second ``at`` (the schedule itself: a timed wait by design),
        reporting progress every :data:`TICK` real seconds meanwhile."""
        while (left := self.start + at / self.scale - time.time()) > 0:
            await asyncio.sleep(min(left, TICK))
            self.report()

    def report(self) -> None:
        """Tell ``progress`` how far the run is, and its tallies (what the live summary line shows)."""
        calls = self.rec.history.of(Call)
        tally = {"calls": len(calls), "ok": sum(c.outcome == "ok" for c in calls), "probes": len(self.rec.history.probes()),
                 "faults": len(self.faults.started), "active": len(self.faults.active)}
        self.progress(min(self.now(), self.x.settings.duration), self.x.settings.duration, tally)

    def mark(self, text: str) -> None:
        self.rec.mark(text)


# -- the timeline -----------------------------------------------------------------------------

def schedule(x: s.Experiment) -> list[tuple[float, Any, str]]:
    """(at, step, fault id) in the order they run: the timeline's steps by time (a tie keeps the
    file's order), and the heal of every fault with a ``for`` at its end."""
    events: list[tuple[float, Any, str]] = []
    heals: list[tuple[float, Any, str]] = []
    for i, step in enumerate(x.timeline):
        fault_id = fault_name(step, i) if isinstance(step, s.FaultStep) else ""
        events.append((step.at, step, fault_id))
        if isinstance(step, s.FaultStep) and step.for_ is not None:
            heals.append((step.at + step.for_, s.Heal(at=step.at + step.for_, heal=fault_id), fault_id))
    return sorted(events + heals, key=lambda e: e[0])


def fault_name(step: s.FaultStep, index: int) -> str:
    return step.id or f"{type(step).__name__.lower()}-{index}"


async def act(run: Run, step: Any, fault_id: str) -> None:
    if isinstance(step, s.Heal):
        await heal(run, step.heal)
    elif isinstance(step, s.FaultStep):
        await inject(run, step, fault_id)
    else:
        await do(run, step)


async def heal(run: Run, fault_id: str) -> None:
    if fault_id in run.faults.active:
        await run.faults.heal(fault_id)
        run.mark(f"healed {fault_id}")


async def inject(run: Run, f: Any, fault_id: str) -> None:
    faults, scale = run.faults, run.scale
    run.mark(f"fault {fault_id}: {type(f).__name__.lower()} {f.target or ''}".rstrip())
    if isinstance(f, (s.Kill, s.Restart)):
        await (faults.kill if isinstance(f, s.Kill) else faults.restart)(fault_id, f.target)
        run.heals.append(asyncio.create_task(faults.heal(fault_id), name=f"heal:{fault_id}"))  # healed once it is back
    elif isinstance(f, s.Pause):
        await faults.pause(fault_id, f.target)
    elif isinstance(f, s.Link):
        toxics = Toxics(latency=f.latency / scale, jitter=f.jitter / scale, distribution=f.distribution, loss=float(f.loss),
                        bandwidth=f.bandwidth / 8 * scale if f.bandwidth else 0.0, partition=f.partition, direction=f.direction)
        await faults.link(fault_id, f.target, toxics, reset=f.reset)
    elif isinstance(f, s.MessageFault):  # the file's parsed values are float subclasses: plain floats on the wire
        await faults.message(fault_id, nodes=[f.target] if f.target else None, types=list(f.types), topics=list(f.topics),
                             drop=float(f.drop), corrupt=float(f.corrupt), duplicate=float(f.duplicate),
                             reorder=float(f.reorder), delay=f.delay / scale, jitter=f.jitter / scale)
    elif isinstance(f, s.ClockSkew):
        if f.instance is not None:
            instance_id = run.instances[f.instance]
            host = run.rec.targets[instance_id].host_id
            await faults.clock_skew(fault_id, f"metadata-{host}", float(f.skew), instance_id=instance_id)
        else:
            await faults.clock_skew(fault_id, f.target, float(f.skew))
    elif isinstance(f, s.ApiErrors):
        await faults.api_errors(fault_id, f.target, throttle=float(f.throttle), error_5xx=float(f.error_5xx))
    else:
        raise LiveError(f"no live injection for {type(f).__name__}")


async def do(run: Run, a: Any) -> None:
    run.mark(f"do {type(a).__name__}")
    rec = run.rec
    if isinstance(a, s.AttachRole):
        chosen = [run.instances[i] for i in s.select(a.instances, len(run.instances))]
        for attach in await asyncio.gather(*(rec.attach(i, a.role) for i in chosen)):
            if attach.ok:
                run.roles[attach.instance_id] = a.role
    elif isinstance(a, s.DetachRole):
        chosen = [run.instances[i] for i in s.select(a.instances, len(run.instances)) if run.instances[i] in run.roles]
        for detach in await asyncio.gather(*(rec.detach(i, run.roles[i]) for i in chosen)):
            if detach.ok:
                run.roles.pop(detach.instance_id, None)
    elif isinstance(a, (s.AttachPolicy, s.DetachPolicy)):
        action = "AttachPolicyToRole" if isinstance(a, s.AttachPolicy) else "DetachPolicyFromRole"
        try:
            await rec.api("ram", action, PolicyType="System", PolicyName=a.policy, RoleName=a.role)
        except (api.ApiError, OSError) as exc:
            run.mark(f"{action} {a.policy} {a.role}: {exc}")
    elif isinstance(a, s.RunInstances):
        first = len(run.instances)
        run.instances += await rec.launch(amount=a.count)
        start_apps(run, range(first, len(run.instances)))
    elif isinstance(a, s.RestartControlPlane):
        for node in ("ram", "sts", "ecs"):
            await run.faults.kill(f"restart_control_plane-{node}-{run.now():.0f}", node)
        for fault_id in [i for i in run.faults.active if i.startswith("restart_control_plane-")]:
            run.heals.append(asyncio.create_task(run.faults.heal(fault_id), name=f"heal:{fault_id}"))
    else:
        raise LiveError(f"no live action for {type(a).__name__}")


# -- applications -----------------------------------------------------------------------------

def start_apps(run: Run, indexes: range) -> None:
    """The workload on each instance of ``indexes`` an app of the topology chooses, until the run's end."""
    from services.cli import app

    # Each failed credential fetch is one of the application's outcomes, counted and recorded; the
    # credentials SDK also logs a traceback for it, which would flood the run's terminal.
    # (Each of its modules sets that logger's level to INFO when it is imported, after this may
    # have run: a filter stays.)
    quiet = logging.getLogger("credentials")
    if _quiet not in quiet.filters:
        quiet.addFilter(_quiet)
    total = run.x.total_instances()
    remaining = max(0.0, run.start + run.x.settings.duration / run.scale - time.time())
    for workload in run.x.topology.apps:
        rate = workload.rate * run.scale
        if rate > APP_RATE_CAP:
            run.mark(f"app rate {workload.rate:g}/s x scale {run.scale:g} capped at {APP_RATE_CAP:g} real calls/s")
            rate = APP_RATE_CAP
        for index in (i for i in s.select(workload.instances, total) if i in indexes):
            options = app.Options(instance_id=run.instances[index], cluster_file=str(run.cluster.path), rate=rate,
                                  duration=remaining, output="json")
            run.apps.append(asyncio.create_task(app.run(options, out=io.StringIO(), err=io.StringIO()),
                                                name=f"app:{run.instances[index]}"))


def _quiet(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


async def stop_apps(run: Run, grace: float) -> None:
    """Let the applications finish their last calls for up to ``grace`` seconds, then stop them."""
    if not run.apps:
        return
    _, pending = await asyncio.wait(run.apps, timeout=grace) if grace > 0 else ((), run.apps)
    for task in pending:
        task.cancel()
    await asyncio.gather(*run.apps, return_exceptions=True)


# -- the run ----------------------------------------------------------------------------------

def cluster_options(x: s.Experiment, out_dir: Path) -> Options:
    links = tuple(sorted({f.target for f in x.faults() if isinstance(f, s.Link)}))
    return Options(state_dir=out_dir / "cluster", reset=True, instances=0, hosts=x.topology.hosts,
                   time_scale=x.settings.time_scale, credential_lifetime=int(x.settings.credential_lifetime),
                   refresh_before=int(x.settings.refresh_before), proxies=links, ready_timeout=60.0,
                   restart_policy=RestartPolicy(loop_limit=1_000_000))  # faults kill on purpose: no crash loop


def make_roles(cluster: Cluster, roles: dict[str, s.Role]) -> None:
    for name, role in roles.items():
        cluster.call("ram", "CreateRole", RoleName=name, AssumeRolePolicyDocument=ECS_TRUST_POLICY)
        for policy in role.policies:
            cluster.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=policy, RoleName=name)


async def run_live(x: s.Experiment, out_dir: Path, progress: Progress = lambda done, total, tally: None) -> History:
    """Run ``x`` on a fresh live cluster; the history in simulated seconds since the start
    (also written to ``out_dir/history.jsonl``). Raises :class:`LiveError` before starting for
    what cannot run live."""
    problems = unsupported(x)
    if problems:
        raise LiveError("; ".join(problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        await _run(x, out_dir, progress, runs)
    finally:  # a run that failed or was interrupted still leaves its history (every fault healed, its window closed)
        history = to_simulated(runs[0].rec.history, runs[0].start, x.settings.time_scale) if runs else History()
        (out_dir / "history.jsonl").write_bytes(encode_jsonl(history))
    return history


async def _run(x: s.Experiment, out_dir: Path, progress: Progress, runs: list[Run]) -> None:
    """The run itself; its :class:`Run` goes into ``runs`` as soon as the timeline starts."""
    scale = x.settings.time_scale
    async with running_cluster(cluster_options(x, out_dir)) as cluster:
        await asyncio.to_thread(make_roles, cluster, x.topology.roles)
        interval = max(MIN_PROBE_INTERVAL, x.settings.probe_interval / scale)
        async with Recorder(cluster, interval=interval, probe_timeout=max(1.0, x.settings.request_timeout / scale)) as rec:
            instances = await rec.launch(amount=x.topology.instances) if x.topology.instances else []
            async with Injector(cluster, rec, seed=x.seed, ack_timeout=2.0) as faults:
                run = Run(x, cluster, rec, faults, time.time(), progress, instances=instances)
                runs.append(run)
                run.mark("start")
                finished = False
                try:
                    start_apps(run, range(len(instances)))
                    for at, step, fault_id in schedule(x):
                        await run.until(at)
                        await act(run, step, fault_id)
                        run.report()
                    await run.until(x.settings.duration)
                    run.mark("end")
                    finished = True
                finally:
                    await stop_apps(run, grace=10.0 if finished else 0.0)  # a failed run stops them at once
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.gather(*run.heals, return_exceptions=True), HEAL_TIMEOUT)
                # leaving the injector heals whatever is still active, before the recorder closes
