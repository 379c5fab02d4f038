"""Many instances: sustained refreshes, memory per hosted instance, and `ramsim up`'s start-up.

    python bench/scale.py [--quick] [refresh] [memory] [startup]

The ``refresh``, ``memory`` and ``startup`` benchmarks of ``ramsim bench``:

  refresh  10,000 instances with a role (1-hour credentials, refreshed 30 minutes before they
           expire) at ``--time-scale 60``: for S seconds (default 300 = 5 simulated hours) count
           the sessions STS mints (its ``RoleAssumed`` events, read as the observer) and GET every
           instance's credentials in turn, counting each one served already expired (by the
           cluster's simulated clock: must be 0) and each 503 (each instance read about once a
           simulated minute, the poller's sweeps paced to one a second); the baseline is the schedule's own
           rate (instances / 30 simulated minutes). With --quick it runs at
           100 instances.
  memory   RSS (VmRSS) of every process of a cluster with no instance, then with N instances
           holding a role on ONE metadata agent (N = 1,000; 100 with --quick), as KiB per 1,000
           hosted instances (target: agent <= 5 KiB per instance); their metadata views share
           one port (the shared metadata mode).
  startup  `ramsim up --instances N` (a new process, a new state dir) until it prints that the
           cluster is ready, for N = 100, 1,000 and 10,000 (quick: 100), beside N = 0, the
           cluster's own start-up (target: 10,000 ready <= 30 s).

Everything talks to 127.0.0.1 only; every loop is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import ROLE, Poller, cluster, create_role, launch, port_taken, quiet_ports, rss_kib, serving  # noqa: E402
from recording import Row, verdict  # noqa: E402
from suite import Context  # noqa: E402

LIFETIME, REFRESH_BEFORE, TIME_SCALE = 3600, 1800, 60.0
SWEEP_EVERY = 1.0  # real seconds between two reads of one instance's credentials (at most)


# -- refresh -----------------------------------------------------------------------------------
def _expiration(body: bytes) -> tuple[str, float] | None:
    """(AccessKeyId, Expiration as epoch seconds) of a credential document."""
    try:
        doc = json.loads(body)
        return doc["AccessKeyId"], datetime.fromisoformat(doc["Expiration"].replace("Z", "+00:00")).timestamp()
    except (ValueError, KeyError, TypeError):
        return None


async def watch(running, urls: dict[str, str], seconds: float, say) -> dict[str, float]:
    """GET every credentials URL in turn for ``seconds``; count sessions minted, rotations seen,
    credentials served expired (simulated clock), 503s and other failures."""
    from protocol import topics
    from services.cli import broker
    from services.runtime.clock import ScaledClock
    from services.runtime.mqtt_bus import MqttBus

    clock = ScaledClock(running.file.time_scale, running.file.time_origin)
    counts = {"minted": 0, "gets": 0, "rotations": 0, "expired": 0, "unavailable": 0, "failed": 0}
    observer = await MqttBus.connect(running.broker_url(broker.OBSERVER), broker.tool_client_id(broker.OBSERVER), persistent=False)

    async def minted(_: str, __: bytes) -> None:
        counts["minted"] += 1

    await observer.subscribe(topics.event("sts", "RoleAssumed"), minted)
    keys: dict[str, str] = {}
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    try:
        async with Poller(concurrency=32) as poller:
            order = list(urls.items())
            gate = asyncio.Semaphore(32)

            async def probe(instance_id: str, url: str) -> None:
                async with gate:
                    asked = clock.now()  # before the request: a credential that expired by then was served expired
                    status, body = await poller.get(url)
                counts["gets"] += 1
                found = _expiration(body) if status == 200 else None
                if status == 503:
                    counts["unavailable"] += 1
                elif found is None:
                    counts["failed"] += 1
                else:
                    key, expires = found
                    counts["expired"] += expires <= asked
                    if keys.get(instance_id, key) != key:
                        counts["rotations"] += 1
                    keys[instance_id] = key

            sweep, told = 0, start
            while time.perf_counter() < deadline:
                sweep += 1
                began = time.perf_counter()
                for i in range(0, len(order), 256):
                    if time.perf_counter() >= deadline:
                        break
                    await asyncio.gather(*(probe(k, u) for k, u in order[i:i + 256]))
                if time.perf_counter() - told >= 10:
                    told = time.perf_counter()
                    say(f"refresh: sweep {sweep}, {counts['minted']:,} minted, {counts['expired']} expired, "
                        f"{told - start:.0f}/{seconds:g} s")
                # pace: each instance read about once a simulated minute, not as fast as the loop can
                # (that would measure the poller, and starve the services of the 2 cores)
                await asyncio.sleep(max(0.0, min(SWEEP_EVERY, deadline - time.perf_counter()) - (time.perf_counter() - began)))
    finally:
        await observer.close()
    counts["elapsed"] = time.perf_counter() - start
    return counts


async def run_refresh(ctx: Context) -> list[Row]:
    count = ctx.count(10_000, 100)
    seconds = ctx.phase(300, 40)
    rows: list[Row] = []
    if count < 10_000:
        rows.append(Row("refresh", "refreshes/s, 10,000 instances, --time-scale 60", "", "", "", "skipped (--quick)"))
        rows.append(Row("refresh", "credentials served expired, 10,000 instances, --time-scale 60", "", "", "0", "skipped (--quick)"))
    async with cluster(ctx.workdir, "refresh", shared=True, hosts=max(1, count // 2000), time_scale=TIME_SCALE,
                       ready_timeout=120) as running:
        await asyncio.to_thread(create_role, running)
        ctx.say(f"refresh: launching {count:,} instances with a role")
        ids = await asyncio.to_thread(launch, running, count, ROLE)
        urls = await serving(running, ids, ROLE, 300)
        ctx.say(f"refresh: watching {count:,} instances for {seconds:g} s ({seconds * TIME_SCALE / 3600:g} simulated h)")
        got = await watch(running, urls, seconds, ctx.say)
    period = (LIFETIME - REFRESH_BEFORE) / TIME_SCALE  # real seconds between two refreshes of one instance
    hours = got["elapsed"] * TIME_SCALE / 3600
    label = f"{count:,} instances, --time-scale 60, {got['elapsed']:.0f} s = {hours:.1f} simulated h"
    rate, schedule = got["minted"] / got["elapsed"], count / period
    # the schedule's rate is what keeps every instance served; below it, credentials run out (503s)
    sustained = got["elapsed"] >= 2 * period
    rows.append(Row("refresh", f"refreshes/s sustained (STS sessions minted), {label}",
                    f"{rate:,.1f}/s ({got['rotations']:,} rotations seen by {got['gets']:,} GETs)",
                    f"schedule {schedule:,.1f}/s (every instance every {period:g} s)",
                    ">= 0.9x the schedule" if sustained else "", verdict(rate >= 0.9 * schedule) if sustained else ""))
    rows.append(Row("refresh", f"credentials served expired, {label}",
                    f"{got['expired']} of {got['gets']:,} GETs ({got['unavailable'] / max(1, got['gets']):.0%} answered 503)",
                    f"503 (no fresh credential yet): {got['unavailable']}; other failures: {got['failed']}", "0",
                    verdict(got["expired"] == 0 and got["failed"] == 0)))
    return rows


# -- memory ------------------------------------------------------------------------------------
async def settled_rss(processes, rounds: int = 5) -> dict[str, int]:
    """Each process's RSS (KiB), read a few times a short while apart; the last reading."""
    readings: dict[str, int] = {}
    for _ in range(rounds):
        readings = {p.name: rss_kib(p.pid) for p in processes}
        await asyncio.sleep(0.2)  # let the processes finish what the last step started; not a race guard
    return readings


async def run_memory(ctx: Context) -> list[Row]:
    count = ctx.count(1_000, 100)
    async with cluster(ctx.workdir, "memory", shared=True, hosts=1, ready_timeout=120) as running:
        await asyncio.to_thread(create_role, running)
        before = await settled_rss(running.processes)
        ctx.say(f"memory: launching {count:,} instances with a role on one agent")
        ids = await asyncio.to_thread(launch, running, count, ROLE)
        await serving(running, ids, ROLE, 300)
        after = await settled_rss(running.processes)
    rows = []
    mode = "shared port"
    note = f" ({count:,} instances, {mode})"
    for name in before:
        per_thousand = (after[name] - before[name]) * 1000 / count
        agent = name.startswith("metadata-")
        rows.append(Row("memory", f"RSS growth per 1,000 hosted instances, {name}{note}",
                        f"{per_thousand:,.0f} KiB ({per_thousand / 1000:.2f} KiB per instance)",
                        f"0 instances: {before[name] / 1024:,.1f} MiB; {count:,}: {after[name] / 1024:,.1f} MiB",
                        "<= 5 KiB per instance" if agent else "", verdict(per_thousand <= 5000) if agent else ""))
    return rows


# -- startup -----------------------------------------------------------------------------------
def ramsim() -> list[str]:
    script = shutil.which("ramsim", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "services.cli"]


async def time_up(workdir: Path, instances: int, limit: float) -> float:
    """Seconds from starting ``ramsim up --instances N`` until it says the cluster is ready; then
    stops it. Started again (up to 3 times) when a port was taken before its service bound it."""
    for attempt in (1, 2, 3):
        state = workdir / f"up-{instances}-{attempt}"
        try:
            return await _time_up(state, instances, limit)
        except RuntimeError:
            if attempt == 3 or not port_taken(state):
                raise
    raise AssertionError("unreachable")


async def _time_up(state: Path, instances: int, limit: float) -> float:
    broker, gateway, oss = quiet_ports(3)
    argv = [*ramsim(), "up", "--state-dir", str(state), "--instances", str(instances), "--reset",
            "--broker-port", str(broker), "--gateway-port", str(gateway), "--oss-port", str(oss)]
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    tail: list[str] = []
    try:
        assert proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), max(0.1, start + limit - time.perf_counter()))
            if not line:
                raise RuntimeError(f"ramsim up --instances {instances} exited ({await proc.wait()}): {' / '.join(tail[-3:])}")
            text = line.decode(errors="replace").strip()
            tail.append(text)
            if "cluster ready" in text:
                return time.perf_counter() - start
    except asyncio.TimeoutError:
        raise RuntimeError(f"ramsim up --instances {instances}: not ready in {limit:.0f} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def run_startup(ctx: Context) -> list[Row]:
    ctx.say("startup: ramsim up --instances 0")
    baseline = await time_up(ctx.workdir, 0, 60)
    rows = []
    for count in (100, 1_000, 10_000):
        measure = f"`ramsim up --instances {count:,}` to ready, s"
        target = "<= 30 s" if count == 10_000 else ""
        if ctx.quick and count > 100:
            rows.append(Row("startup", measure, "", "", target, "skipped (--quick)"))
            continue
        ctx.say(f"startup: ramsim up --instances {count:,}")
        took = await time_up(ctx.workdir, count, 120)
        rows.append(Row("startup", measure, f"{took:.2f}", f"--instances 0: {baseline:.2f}", target,
                        verdict(took <= 30) if target else ""))
    return rows


if __name__ == "__main__":
    from suite import standalone
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or ["refresh", "memory", "startup"]
    asyncio.run(standalone(names, Context(quick="--quick" in sys.argv[1:])))
