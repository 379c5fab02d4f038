"""The live engine end to end on a real cluster (real processes, a real Mosquitto, the real SDKs in
the applications): one experiment file with a fault of every live kind, run at 600x (two
simulated hours in twelve real seconds); the history comes back in simulated seconds since the
start, with every fault's window closed by its heal. A run that fails midway still heals what it
had started and leaves its history."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

from services.experiment import spec
from services.experiment.live import LiveError, run_live
from services.faults.history import Call, Fault, Mark, decode_jsonl

EXPERIMENT = """
name: live-smoke
seed: 11
settings: {credential_lifetime: 1h, refresh_before: 30m, time_scale: 600, duration: 2h, probe_interval: 30s}
topology:
  hosts: 1
  instances: 2
  roles: {AppRole: {policies: [AliyunOSSFullAccess]}}
  apps: [{instances: all, rate: 1/s}]
timeline:
  - {at: 0s, do: attach_role, role: AppRole, instances: all}
  - {at: 20m, fault: pause, target: sts, for: 10m, id: sts-down}
  - {at: 35m, fault: link, target: metadata-host-1, latency: 60s, jitter: 30s, distribution: normal, for: 10m}
  - {at: 50m, fault: message, types: [InstanceChanged], drop: 50%, for: 10m}
  - {at: 65m, fault: api_errors, target: sts, throttle: 50%, for: 10m}
  - {at: 80m, fault: clock_skew, instance: 1, skew: +10m, id: skewed}
  - {at: 90m, fault: kill, target: ecs}
  - {at: 95m, do: restart_control_plane}
  - {at: 100m, heal: skewed}
checks:
  - invariant: never_serves_expired
"""


class Interrupted(Exception):
    """Stands for whatever stops a run midway (an error, the user's Ctrl-C)."""


async def test_an_experiment_runs_live_with_every_fault_healed(tmp_path: Path) -> None:
    reports: list[tuple[float, float, dict[str, int]]] = []
    history = await run_live(spec.loads(EXPERIMENT, "live-smoke.yaml"), tmp_path,
                             lambda done, total, tally: reports.append((done, total, tally)))
    windows = {(w.kind, w.target): w for w in history.of(Fault)}
    assert set(windows) == {("pause", "sts"), ("link", "metadata-host-1"), ("message", "*"), ("api_errors", "sts"),
                            ("clock_skew", "metadata-host-1"), ("kill", "ecs"), ("kill", "ram"), ("kill", "sts")}
    assert sum(w.kind == "kill" for w in history.of(Fault)) == 4  # ecs, then the whole control plane
    for (kind, _), starts, lasts in ((("pause", "sts"), 1200, 600), (("link", "metadata-host-1"), 2100, 600),
                                      (("api_errors", "sts"), 3900, 600), (("clock_skew", "metadata-host-1"), 4800, 1200)):
        w = next(w for w in history.of(Fault) if w.kind == kind)
        assert starts <= w.start < starts + 300, w  # simulated seconds since the start, on the cluster's clock
        assert w.end is not None and w.end >= starts + lasts, w  # healed at its `for`, on the timeline
    assert all(w.end is not None for w in history.of(Fault))  # every one healed, the kill once ECS was back
    assert {m.text for m in history.of(Mark)} >= {"start", "end", "healed sts-down", "healed skewed"}

    probes = history.probes()
    served = {p.instance_id for p in probes if p.status == 200}
    assert len(served) == 2 and all(-1 <= p.at <= 7200 + 600 for p in probes)
    assert all(p.expiration - p.at <= 3600 + 60 for p in probes if p.status == 200)  # an hour's credential, simulated
    calls = history.of(Call)
    outcomes = collections.Counter((c.outcome, c.code) for c in calls)
    assert {c.instance_id for c in calls if c.outcome == "ok"} == served, outcomes  # both applications got through
    assert decode_jsonl((tmp_path / "history.jsonl").read_bytes()) == history
    done, total, tally = reports[-1]
    assert total == 7200 and done >= 7000 and tally["calls"] > 0 and tally["faults"] == 9 and tally["active"] == 0
    assert len(reports) >= 20  # every half a real second, and after every step


async def test_a_run_that_fails_midway_heals_what_it_started_and_keeps_its_history(tmp_path: Path) -> None:
    text = EXPERIMENT.replace("for: 10m, id: sts-down", "for: 90m, id: sts-down")

    def progress(done: float, total: float, tally: dict[str, int]) -> None:
        if tally["faults"] == 2:
            raise Interrupted("while STS is paused and the agent's link slow")

    with pytest.raises(Interrupted):
        await run_live(spec.loads(text, "fails.yaml"), tmp_path, progress)
    history = decode_jsonl((tmp_path / "history.jsonl").read_bytes())
    pause, link = history.of(Fault)
    assert (pause.kind, link.kind) == ("pause", "link") and pause.end is not None and link.end is not None
    assert 1200 <= pause.start < link.start <= pause.end < 2100 + 600  # healed at once, not at its `for` (90m)


def test_what_cannot_run_live_is_refused_before_anything_starts(tmp_path: Path) -> None:
    text = EXPERIMENT.replace("  - {at: 100m, heal: skewed}", "  - {at: 100m, do: stop_instances, instances: [0]}")
    with pytest.raises((LiveError, spec.SpecError), match="stop_instances"):  # the file refuses it now; else the engine
        asyncio.run(run_live(spec.loads(text, "stop.yaml"), tmp_path))
    assert not (tmp_path / "cluster").exists()
