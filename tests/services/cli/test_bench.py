"""``ramsim bench``: the BENCHMARKS.md appender, the command's own refusals, and a smoke run of a
cheap subset against real Mosquitto (rows exist and parse; no timing is asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

import services
from services.cli import bench
from services.cli.errors import CliError
from services.cli.main import main

recording = bench.load("recording")
NUMBER = r"[\d,]+(?:\.\d+)?"


def test_append_makes_the_file_then_adds_a_dated_section_with_the_machine_line(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    first = [recording.Row("attach", "attach -> visible, 1 instance, p50 / p99 ms", "4.61 / 8.61", "floor 0.21 / 0.30",
                           "p99 <= 10 ms", "PASS"),
             recording.Row("gets", "a | in a cell", "1/s", "", "", "skipped (--quick)")]
    recording.append(out, first, when=datetime(2026, 12, 3, 13, 5, tzinfo=timezone.utc), machine="CPU X, 2 cores, load average 1.00",
                     command="ramsim bench attach")
    recording.append(out, first[:1], when=datetime(2026, 12, 4, 9, 0, tzinfo=timezone.utc), machine="CPU Y",
                     command="ramsim bench --quick")
    text = out.read_text()
    assert text.startswith(recording.HEADER)
    assert text.count(recording.HEADER) == 1  # the header once, sections appended after it
    assert "## 2026-12-03 13:05 UTC: `ramsim bench attach`\n\nMachine: CPU X, 2 cores, load average 1.00\n" in text
    assert text.index("2026-12-03 13:05") < text.index("## 2026-12-04 09:00 UTC: `ramsim bench --quick`") < text.index("Machine: CPU Y")
    rows = recording.parse_table(text)
    assert [(r["date"], r["benchmark"]) for r in rows] == [("2026-12-03", "attach"), ("2026-12-03", "gets"), ("2026-12-04", "attach")]
    assert rows[0] == {"date": "2026-12-03", "benchmark": "attach", "measure": "attach -> visible, 1 instance, p50 / p99 ms",
                       "value": "4.61 / 8.61", "baseline (same run)": "floor 0.21 / 0.30", "target": "p99 <= 10 ms", "verdict": "PASS"}
    assert rows[1]["measure"] == "a | in a cell" and rows[1]["verdict"] == "skipped (--quick)"


def test_an_existing_file_keeps_what_it_had(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nolder notes\n")
    recording.append(out, [recording.Row("policy", "m", "1/s")], when=datetime(2026, 1, 2, tzinfo=timezone.utc), machine="M",
                     command="ramsim bench policy")
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nolder notes\n\n## 2026-01-02 00:00 UTC")
    assert len(recording.parse_table(text)) == 1


def test_list_and_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in ("attach", "gets", "assume", "refresh", "memory", "startup", "policy"):
        assert re.search(rf"^{name}\s", listed, re.M), listed
    assert main(["bench", "--no-record", "nosuch"]) == 2
    assert "unknown benchmark(s): nosuch" in capsys.readouterr().err


def test_outside_a_checkout_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    monkeypatch.setattr(services, "__file__", str(tmp_path / "services" / "__init__.py"))
    with pytest.raises(CliError, match="not from a checkout"):
        bench.bench_dir()


@pytest.mark.e2e
def test_quick_smoke_run_prints_rows_that_parse(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    argv = [sys.executable, "-m", "services.cli", "bench", "--quick", "--no-record", "--output", str(output), "attach", "policy"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = recording.parse_table(done.stdout)
    assert not output.exists()  # --no-record
    assert "machine: " in done.stderr and "load average" in done.stderr
    by = {(r["benchmark"], r["measure"].split(",")[0]): r for r in rows}
    assert not [r for r in rows if r["verdict"].startswith("error")], (rows, done.stderr[-3000:])
    floor = next(r for r in rows if r["measure"].startswith("broker floor"))
    assert re.fullmatch(rf"{NUMBER} / {NUMBER}", floor["value"]), floor
    for measure in ("attach -> visible, 1 instance", "attach -> all visible, one 100-instance batch"):
        row = next(r for r in rows if r["measure"].startswith(measure))
        assert re.fullmatch(rf"{NUMBER} / {NUMBER}", row["value"]), row
        assert row["verdict"] in ("PASS", "MISS") and row["baseline (same run)"].startswith("floor ")
    assert next(r for r in rows if "10,000" in r["measure"])["verdict"] == "skipped (--quick)"
    policy = [r for r in rows if r["benchmark"] == "policy"]
    assert len(policy) == 5 and all(re.fullmatch(rf"{NUMBER}/s", r["value"]) and r["verdict"] in ("PASS", "MISS") for r in policy)
    assert ("attach", "broker floor: bare pub/sub request/response (QoS 1)") in by


def test_the_default_suite_and_a_subset_keep_the_suite_order() -> None:
    suite = bench.load("suite")
    assert suite.selected([]) == ["attach", "gets", "assume", "refresh", "memory", "startup"]
    assert suite.selected(["policy", "attach"]) == ["attach", "policy"]
    with pytest.raises(KeyError, match="nosuch"):
        suite.selected(["nosuch"])


async def test_a_failing_benchmark_is_one_row_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    suite = bench.load("suite")
    fake = types.ModuleType("fake_bench_module")

    async def run_boom(ctx: object) -> list:
        raise RuntimeError("no broker today")

    async def run_fine(ctx: object) -> list:
        return [recording.Row("fine", "m", "1")]

    fake.run_boom, fake.run_fine = run_boom, run_fine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench_module", fake)
    monkeypatch.setitem(suite.BENCHMARKS, "boom", ("fake_bench_module", "fails", False))
    monkeypatch.setitem(suite.BENCHMARKS, "fine", ("fake_bench_module", "works", False))
    said: list[str] = []
    rows = await suite.run(["boom", "fine"], suite.Context(say=said.append))
    assert [(r.bench, r.verdict) for r in rows] == [("boom", "error: RuntimeError: no broker today"), ("fine", "")]
    assert any("boom failed" in line for line in said)
