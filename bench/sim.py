"""The simulator's speed: simulated events per second and wall time, against a bare heapq loop.

    python bench/sim.py [--instances N] [--hours H] [--no-storm]

The run (issue 12's benchmark): 10,000 instances on 10 hosts for 24 simulated hours with 1-hour
tokens (refreshed 30 minutes before expiry: 48 rotations per instance), every instance's
credential path probed every 30 simulated minutes, and a workload of 1,000 instances each
calling OSS once every 10 simulated minutes (each call authenticated by STS and authorized by
RAM). Target: <= 60 s on one core.

The baseline pushes and pops the same number of events through a bare ``heapq`` loop (a tuple
``(time, seq, fn, args)`` per event and a function that does nothing), in the same process, so
the ratio is what the simulator and the cores it drives cost per event over the heap alone.

Then (unless ``--no-storm``) it runs ``deploy/experiments/refresh-storm-10k.yaml`` in full and
prints its verdict: the library's 10,000-instance experiment, which CI runs shortened.
``main(argv)`` returns 0, so ``ramsim bench`` may call it.
"""

from __future__ import annotations

import argparse
import heapq
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.experiment import checks, spec  # noqa: E402
from services.experiment.sim import run_sim as run_sim_engine  # noqa: E402  (run_sim below is the benchmark's)

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 60.0

EXPERIMENT = """\
name: bench-sim
settings: {{credential_lifetime: 1h, refresh_before: 30m, duration: {hours}h, probe_interval: 30m}}
topology:
  hosts: 10
  instances: {instances}
  roles: {{AppRole: {{policies: [AliyunOSSFullAccess]}}}}
  apps: [{{instances: "0-{last_app}", rate: 1/10m}}]
timeline:
  - {{at: 0s, do: attach_role, role: AppRole, instances: all}}
checks:
  - invariant: never_serves_expired
  - slo: refresh_before_expiry
  - slo: app_success_rate
    min: 100%
"""


def bare_heapq(events: int) -> float:
    """Seconds to push and pop ``events`` events through heapq, each calling a no-op."""
    def nothing(*args: object) -> None:
        return None

    heap: list[tuple[float, int, object, tuple]] = []
    start = time.perf_counter()
    seq = 0
    # keep a working set like the simulator's: each event popped schedules the next
    for i in range(min(events, 50_000)):
        seq += 1
        heapq.heappush(heap, (i * 0.001, seq, nothing, (i,)))
    done = 0
    while heap and done < events:
        when, _, fn, args = heapq.heappop(heap)
        fn(*args)  # type: ignore[operator]
        done += 1
        if seq < events:
            seq += 1
            heapq.heappush(heap, (when + 0.5, seq, nothing, args))
    return time.perf_counter() - start


def table(rows: list[tuple[str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


async def run_sim(ctx) -> list:
    """``ramsim bench sim``: the 10,000-instance simulated day (quick: 1,000 instances, 2 hours), beside bare heapq."""
    from recording import Row, verdict
    instances, hours = ctx.count(10_000, 1_000), ctx.count(24, 2)
    ctx.say(f"sim: {instances:,} instances, {hours} simulated hours")
    x = spec.loads(EXPERIMENT.format(hours=hours, instances=instances, last_app=max(0, instances // 10 - 1)))
    wall = time.perf_counter()
    run = run_sim_engine(x)
    wall = time.perf_counter() - wall
    bare = bare_heapq(run.events)
    outcome = checks.evaluate(run.history, x)
    full = instances == 10_000 and hours == 24
    return [Row("sim", f"simulated run, {instances:,} instances, {hours} h, {run.events:,} events, wall s",
                f"{wall:.1f} ({run.events / wall:,.0f} events/s)", f"bare heapq {bare:.2f} s ({run.events / bare:,.0f}/s)",
                "<= 60 s (10,000 instances, 24 h)" if full else "", verdict(wall <= TARGET_SECONDS) if full else ""),
            Row("sim", "its verdict", outcome.verdict.explanation[:120], "", "as expected", verdict(outcome.verdict.matches))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--no-storm", action="store_true", help="skip the full refresh-storm-10k experiment")
    args = parser.parse_args(argv)
    x = spec.loads(EXPERIMENT.format(hours=args.hours, instances=args.instances, last_app=max(0, args.instances // 10 - 1)))
    print(f"bench/sim.py: {args.instances} instances, {args.hours:g} simulated hours, 1h tokens, "
          f"{args.instances // 10} instances calling every 10 simulated minutes; Python {platform.python_version()}")
    cpu, wall = time.process_time(), time.perf_counter()
    run = run_sim_engine(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    bare = bare_heapq(run.events)
    outcome = checks.evaluate(run.history, x)
    rows = [("", "simulator", "bare heapq", "ratio"),
            ("events", f"{run.events:,}", f"{run.events:,}", ""),
            ("wall seconds", f"{wall:.1f}", f"{bare:.2f}", f"{wall / bare:.0f}x"),
            ("events/s", f"{run.events / wall:,.0f}", f"{run.events / bare:,.0f}", f"1/{wall / bare:.0f}"),
            ("simulated s per wall s", f"{x.settings.duration / wall:,.0f}", "", "")]
    print(table(rows))
    m = outcome.metrics
    print(f"cpu {cpu:.1f}s; {len(run.history):,} records; {m['rotations']:,} rotations; {m['calls']:,} calls "
          f"({m['calls_ok']:,} ok); verdict: {outcome.verdict.explanation}")
    print(f"target <= {TARGET_SECONDS:g} s: {'PASS' if wall <= TARGET_SECONDS else 'MISS'} ({wall:.1f} s)")
    if not args.no_storm:
        storm = spec.load(str(ROOT / "deploy" / "experiments" / "refresh-storm-10k.yaml"))
        start = time.perf_counter()
        result = run_sim_engine(storm)
        took = time.perf_counter() - start
        verdict = checks.evaluate(result.history, storm).verdict
        print(f"refresh-storm-10k (full, {storm.topology.instances} instances, {storm.settings.duration / 3600:g}h): "
              f"{took:.1f} s wall, {result.events:,} events; {'as expected' if verdict.matches else 'NOT as expected'}: "
              f"{verdict.explanation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
