"""`ramsim experiment run FILE` (live) hands run_live a progress callback of the simulator's shape,
(done, total, tallies): the live engine calls it after every step, and a two-argument one made
every live run from the CLI fail on its first report."""

from __future__ import annotations

from pathlib import Path

from services.cli.main import main
from services.experiment import live
from services.faults.history import History

FILE = """\
name: cli-live
settings: {credential_lifetime: 15m, refresh_before: 5m, duration: 1m}
topology: {instances: 1, roles: {AppRole: {policies: [AliyunOSSFullAccess]}}}
timeline:
  - {at: 0s, do: attach_role, role: AppRole}
checks:
  - invariant: never_serves_expired
"""


def test_the_cli_gives_the_live_engine_a_progress_of_the_simulators_shape(tmp_path: Path, monkeypatch, capsys) -> None:
    reports = []

    async def fake_run_live(x, out, progress):
        progress(30.0, x.settings.duration, {"calls": 3, "ok": 2, "probes": 1, "faults": 0, "active": 0})
        reports.append(x.name)
        return History()

    monkeypatch.setattr(live, "run_live", fake_run_live)
    path = tmp_path / "cli-live.yaml"
    path.write_text(FILE)
    assert main(["experiment", "run", str(path), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert reports == ["cli-live"] and (tmp_path / "out" / "report.json").exists()
    assert "cli-live: as expected" in capsys.readouterr().out
