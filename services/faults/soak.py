"""I/O shell: ``ramsim soak``: random faults for minutes against a fresh cluster, then the checker.

A cluster (``ramsim up``'s, supervised) runs at a high time scale with one instance whose role
is attached; the :class:`~services.faults.recorder.Recorder` probes its metadata view, a writer
keeps creating RAM users, and at random moments (from ``--seed``) one fault is injected:

* ``kill``: kill -9 of a random service, metadata agent or Mosquitto; the supervisor restarts it
  and the soak waits until it answers on the bus again;
* ``pause``: SIGSTOP of ECS or STS for a random 0.5-4 real seconds, then SIGCONT.

Every fault is a window in the history. At the end the soak waits for a healthy refresh,
detaches the role, reads every user back and runs the invariant checker; it prints the report,
keeps the history as JSON lines (``ramsim check`` reads it again) and exits 1 on any violation.
Not part of CI (it runs for minutes); the fault tests in ``tests/e2e/test_faults.py`` are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from protocol.messages.common import Ping, PingOk
from services.cli import api, broker
from services.cli.supervision import RestartPolicy
from services.cli.up import Cluster, Options, running_cluster
from services.faults.invariants import Bounds
from services.faults.recorder import Recorder
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus

SERVICES = ("ram", "sts", "ecs", "gateway", "oss", "metadata-host-1", "mosquitto")
PAUSABLE = ("ecs", "sts")
ROLE = "SoakRole"


@dataclass
class SoakOptions:
    minutes: float = 5.0
    seed: int = 0
    gap: float = 4.0  # mean real seconds between faults
    state_dir: Path = Path(".ramsim-soak")
    time_scale: float = 600.0
    history: Path | None = None
    say: Callable[[str], None] = lambda line: None


async def until(probe: Callable[[], Awaitable[Any]], *, timeout: float, what: str) -> Any:
    """Await ``probe`` until it returns something truthy (exceptions count as not yet); fail
    after ``timeout`` seconds, naming the last error. The event loop runs meanwhile."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a node still down answers with anything
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(0.02)


class Operator:
    """The cluster's operator identity on the bus (its bus reconnects by itself after a broker restart)."""

    def __init__(self, cluster: Cluster, name: str = "soak") -> None:
        self.cluster = cluster
        self.name = name  # in the MQTT client id: two operators of one process must not evict each other
        self.bus: MqttBus | None = None
        self.client: BusClient | None = None

    async def connect(self) -> None:
        self.bus = await MqttBus.connect(self.cluster.broker_url(), broker.tool_client_id(broker.OPERATOR), persistent=False)
        clock = ScaledClock(self.cluster.file.time_scale, self.cluster.file.time_origin)
        self.client = await BusClient(self.bus, "operator", clock).start()

    async def answers(self, node: str) -> bool:
        assert self.client is not None
        return isinstance(await self.client.request(node, Ping(), timeout=0.5), PingOk)

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
            self.bus = None


async def kill(cluster: Cluster, operator: Operator, node: str, *, timeout: float = 30.0,
               sig: signal.Signals = signal.SIGKILL) -> None:
    """kill -9 ``node`` (or send it ``sig``); return once the supervisor restarted it and every node answers again."""
    restarts = cluster.restarts.get(node, 0)
    os.kill(cluster.process(node).pid, sig)
    await back(cluster, operator, node, restarts, timeout=timeout)


async def back(cluster: Cluster, operator: Operator, node: str, restarts: int, *, timeout: float = 30.0) -> None:
    """Wait until the supervisor restarted ``node`` more than ``restarts`` times and every node answers."""

    async def restarted() -> bool:
        return cluster.restarts.get(node, 0) > restarts

    await until(restarted, timeout=timeout, what=f"{node} restarted")
    for other in (p.name for p in cluster.processes if p.name != "mosquitto"):
        await until(lambda: operator.answers(other), timeout=timeout, what=f"{other} answering")


@contextlib.contextmanager
def paused(cluster: Cluster, node: str) -> Iterator[None]:
    """``node`` SIGSTOPped inside the block, SIGCONT when it is left (however it is left)."""
    process = cluster.process(node).proc
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)


async def pause(cluster: Cluster, node: str, seconds: float) -> None:
    """SIGSTOP ``node`` for ``seconds``, then SIGCONT (also if cancelled meanwhile)."""
    with paused(cluster, node):
        await asyncio.sleep(seconds)  # the fault itself lasts this long


async def keep_writing(rec: Recorder, prefix: str, stop: asyncio.Event, *, pause: float = 0.05, keep: int = 400) -> int:
    """CreateUser after CreateUser until ``stop``, and DeleteUser of the one ``keep`` before (RAM
    holds at most 1000 users); each recorded as a write, acknowledged only when the API said so
    (a refused connection or a timeout is not an acknowledgement). Returns how many were created."""

    async def write(action: str, name: str, deleted: bool) -> None:
        try:
            await rec.api("ram", action, UserName=name)
            rec.write("ram.User", name, acknowledged=True, deleted=deleted)
        except (api.ApiError, OSError, urllib.error.URLError):
            rec.write("ram.User", name, acknowledged=False, deleted=deleted)

    for n in itertools.count():
        if stop.is_set():
            return n
        await write("CreateUser", f"{prefix}{n}", False)
        if n >= keep:
            await write("DeleteUser", f"{prefix}{n - keep}", True)
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def soak(options: SoakOptions) -> int:
    say = options.say
    rng = random.Random(options.seed)
    bounds = Bounds(detach_bound=1.0, grace=2.0)
    cluster_options = Options(state_dir=options.state_dir, instances=1, time_scale=options.time_scale, reset=True,
                              credential_lifetime=3600, refresh_before=1800, progress=say,
                              # the soak kills on purpose, often: that is not a crash loop to give up on
                              restart_policy=RestartPolicy(loop_limit=1_000_000))
    async with running_cluster(cluster_options) as cluster:
        cluster.call("ram", "CreateRole", RoleName=ROLE, AssumeRolePolicyDocument=ECS_TRUST_POLICY)
        [instance] = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"]
        operator = Operator(cluster)
        await operator.connect()
        journal = options.history or options.state_dir / "soak.jsonl"
        try:
            async with Recorder(cluster, interval=0.05, journal=journal) as rec:
                attach = await rec.attach(instance["InstanceId"], ROLE)
                if not attach.ok:
                    raise RuntimeError(f"could not attach {ROLE}: {attach.code}")
                stop = asyncio.Event()
                writer = asyncio.create_task(keep_writing(rec, "soak", stop))
                deadline = time.monotonic() + options.minutes * 60
                for n in itertools.count(1):
                    await asyncio.sleep(rng.expovariate(1 / options.gap))
                    if time.monotonic() > deadline:
                        break
                    if rng.random() < 0.75:
                        node = rng.choice(SERVICES)
                        say(f"fault {n}: kill -9 {node}")
                        async with rec.fault("kill", node):
                            await kill(cluster, operator, node)
                    else:
                        node, seconds = rng.choice(PAUSABLE), rng.uniform(0.5, 4.0)
                        say(f"fault {n}: pause {node} for {seconds:.1f} s")
                        async with rec.fault("pause", node):
                            await pause(cluster, node, seconds)
                say("faults over: waiting for a healthy refresh, then checking")
                start = rec.check(bounds).summary("fresh_before_expiry").checked
                await rec.wait_for(lambda h: rec.check(bounds).summary("fresh_before_expiry").checked > start, timeout=60,
                                   what="a healthy refresh")
                stop.set()
                written = await writer
                detach = await rec.detach(instance["InstanceId"], ROLE)
                if detach.at_acknowledged is not None:
                    await rec.wait_for(lambda h: any(p.at > detach.at_acknowledged + bounds.detach_bound  # type: ignore[operator]
                                                     for p in h.probes(instance["InstanceId"])), what="probes past the detach bound")
                users = (await rec.api("ram", "ListUsers", MaxItems="1000"))["Users"]["User"]
                rec.present("ram.User", [u["UserName"] for u in users])
        finally:
            await operator.close()
        report = rec.check(bounds)
        print(f"soak: {options.minutes:g} min, seed {options.seed}, {n - 1} faults, {written} writes, "
              f"restarts {dict(sorted(cluster.restarts.items()))}; history {journal}")
        print(report.table())
        return 0 if report.ok else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("soak", description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="how long to inject faults (default 5)")
    p.add_argument("--seed", type=int, default=None, help="random seed for the fault schedule (default: random, printed)")
    p.add_argument("--gap", type=float, default=4.0, help="mean real seconds between faults (default 4)")
    p.add_argument("--state-dir", type=Path, default=Path(".ramsim-soak"),
                   help="the soak cluster's state directory, reset at start (default .ramsim-soak)")
    p.add_argument("--time-scale", type=float, default=600.0,
                   help="simulated seconds per real second (default 600: a credential refreshes every 3 s)")
    p.add_argument("--history", type=Path, help="where to keep the run's history (default <state dir>/soak.jsonl)")


def main(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    if args.minutes <= 0 or args.gap <= 0 or args.time_scale < 1:
        print("ramsim soak: --minutes and --gap must be > 0, --time-scale >= 1", file=sys.stderr)
        return 2
    options = SoakOptions(minutes=args.minutes, seed=seed, gap=args.gap, state_dir=args.state_dir, time_scale=args.time_scale,
                          history=args.history, say=lambda line: print(f"[soak] {line}", file=sys.stderr, flush=True))
    print(f"[soak] seed {seed}", file=sys.stderr, flush=True)
    from services.runtime import logs

    logs.configure(level="warning")  # this process's own bus client: only problems
    return asyncio.run(soak(options))
