"""The simulated engine: the library's experiments give their expected verdicts; one seed replays
byte for byte and another seed gives another run; every sim fault type is seen to act and to heal."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from services.cli.main import main
from services.experiment import checks, report, spec
from services.experiment.cli import replay_command
from services.experiment.sim import run_sim
from services.faults.history import Call, Event, Fault

ROOT = Path(__file__).resolve().parents[3]
LIBRARY = sorted((ROOT / "deploy" / "experiments").glob("*.yaml"))
SHORTENED = {"refresh-storm-10k": 300}  # instances in CI; bench/sim.py runs the whole 10,000


def _library(path: Path) -> spec.Experiment:
    x = spec.load(str(path))
    if path.stem in SHORTENED:
        x = msgspec.structs.replace(x, topology=msgspec.structs.replace(x.topology, instances=SHORTENED[path.stem]))
    return x


def test_every_library_file_says_its_expected_verdict_at_the_top():
    assert len(LIBRARY) >= 8
    for path in LIBRARY:
        first = path.read_text().splitlines()[0]
        x = spec.load(str(path))
        assert first.startswith(f"# expect: {x.expect}"), path.name
        for name in x.expect_failing:
            assert name in first, (path.name, name)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.stem)
def test_library_experiments_give_their_expected_verdicts(path):
    x = _library(path)
    outcome = checks.evaluate(run_sim(x).history, x)
    assert outcome.verdict.matches, (outcome.verdict.explanation, [(c.name, c.detail, c.examples) for c in outcome.checks])


def _report(tmp: Path, x: spec.Experiment, seed: int) -> tuple[bytes, bytes]:
    run = run_sim(x, seed)
    report.write(tmp, x, checks.evaluate(run.history, x), run.history, engine="sim", seed=seed, replay="r",
                 extra={"events": run.events}, plots=False)
    return (tmp / "history.jsonl").read_bytes(), (tmp / "report.json").read_bytes()


def test_one_seed_replays_byte_for_byte_and_another_seed_differs(tmp_path):
    x = spec.load(str(ROOT / "deploy" / "experiments" / "message-drop-30.yaml"))
    first = _report(tmp_path / "a", x, 5)
    again = _report(tmp_path / "b", x, 5)
    other = _report(tmp_path / "c", x, 6)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]
    assert str(tmp_path) not in first[1].decode() and '"seed": 5' in first[1].decode()


def test_the_cli_runs_a_file_and_exits_with_the_verdict(tmp_path, capsys):
    good = ROOT / "deploy" / "experiments" / "slow-sts.yaml"
    assert main(["experiment", "run", str(good), "--sim", "--out", str(tmp_path / "good")]) == 0
    assert {p.name for p in (tmp_path / "good").iterdir()} >= {"report.json", "report.md", "history.jsonl", "timeline.png",
                                                              "latency_cdf.png", "app_success.png", "credentials.png"}
    wrong = tmp_path / "wrong.yaml"  # the STS outage, claimed to pass
    text = (ROOT / "deploy" / "experiments" / "sts-outage-longer-than-refresh-lead.yaml").read_text()
    wrong.write_text(text.replace("expect: fail\nexpect_failing: [refresh_before_expiry, app_success_rate]", "expect: pass"))
    assert main(["experiment", "run", str(wrong), "--sim", "--seed", "4", "--out", str(tmp_path / "wrong"), "--no-plots"]) == 1
    out = capsys.readouterr().out
    assert "NOT as expected" in out and "refresh_before_expiry" in out
    assert f"seed 4; replay with: {replay_command(str(wrong), 4)}" in out


def test_validate_and_schema_commands(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsettings: {duration: soon}\n")
    assert main(["experiment", "validate", str(bad)]) == 2
    assert f"{bad}:2: settings.duration: expected a duration like 30s, got 'soon'" in capsys.readouterr().err
    assert main(["experiment", "schema"]) == 0


# -- each fault acts, and heals ----------------------------------------------------------------

BASE = """\
name: fault-{name}
settings: {{credential_lifetime: 15m, refresh_before: 5m, duration: 20m, probe_interval: 15s}}
topology:
  hosts: 2
  instances: 4
  roles: {{AppRole: {{policies: [AliyunOSSFullAccess]}}}}
  apps: [{{instances: all, rate: 1/s}}]
timeline:
  - {{at: 0s, do: attach_role, role: AppRole, instances: all}}
  - {{at: 8m, {fault}, for: 4m, id: f}}
"""


def _run(name: str, fault: str):
    x = spec.loads(BASE.format(name=name, fault=fault))
    return run_sim(x)


def _calls(run, low: float, high: float) -> list[Call]:
    return [c for c in run.history.of(Call) if low <= c.at < high]


def _healed(run) -> Fault:
    (f,) = run.history.of(Fault)
    assert (f.start, f.end) == (480.0, 720.0)
    return f


def _rotations(run, low: float, high: float) -> list[Event]:
    return [e for e in run.history.of(Event) if e.name == "InstanceCredentialsRefreshed" and low <= e.at < high]


def _fine_after(run) -> None:
    after = _calls(run, 760, 1200)
    assert after and all(c.outcome == "ok" for c in after), {c.code for c in after}


@pytest.mark.parametrize("fault", ["fault: kill, target: sts", "fault: restart, target: sts", "fault: pause, target: sts"])
def test_process_faults_on_sts_fail_calls_then_heal(fault):
    run = _run("process", fault)
    _healed(run)
    during = _calls(run, 500, 700)
    assert during and all(c.outcome == "error" for c in during)
    _fine_after(run)


@pytest.mark.parametrize("target", ["broker", "oss"])
def test_a_dead_broker_or_enforcement_point_fails_calls_then_heals(target):
    run = _run("broker", f"fault: kill, target: {target}")
    _healed(run)
    assert all(c.outcome == "error" for c in _calls(run, 500, 700))
    _fine_after(run)


def test_a_killed_ecs_restarts_from_its_store_and_refreshes():
    run = _run("ecs", "fault: kill, target: ecs")
    _healed(run)
    assert not _rotations(run, 480, 720)           # down across the refreshes due at 10m
    assert len(_rotations(run, 720, 760)) == 4      # back from its store: the overdue ones go at once
    _fine_after(run)


def test_a_paused_agent_answers_no_probe_then_catches_up():
    run = _run("agent", "fault: pause, target: metadata-host-1")
    _healed(run)
    dark = [p for p in run.history.probes() if 490 <= p.at < 710 and p.status == 0]
    assert dark and all(p.host_id == "host-1" for p in dark)
    assert all(p.status == 200 for p in run.history.probes() if p.at >= 730)


def test_link_latency_slows_and_heals():
    run = _run("latency", "fault: link, target: sts, latency: 2s")
    _healed(run)
    slow = _calls(run, 500, 700)
    assert slow and min(c.latency_ms for c in slow) >= 4000   # Authenticate there and back, through the slow link
    assert max(c.latency_ms for c in _calls(run, 760, 1200)) < 100


def test_link_loss_and_partition_act_and_heal():
    lossy = _run("loss", "fault: link, target: ram, loss: 50%")
    _healed(lossy)
    assert {c.outcome for c in _calls(lossy, 500, 700)} == {"ok", "error"}
    _fine_after(lossy)
    cut = _run("partition", "fault: link, target: metadata-host-1, partition: true")
    _healed(cut)
    assert cut.counters["dropped"] > 0
    assert all(p.status == 200 and p.expiration > p.at for p in cut.history.probes() if p.at >= 730)


@pytest.mark.parametrize("effect", ["drop: 100%", "corrupt: 100%", "delay: 30s", "duplicate: 100%", "reorder: 100%"])
def test_message_faults_act_and_heal(effect):
    run = _run("message", f"fault: message, types: [InstanceChanged], {effect}")
    _healed(run)
    assert run.acted["f"] > 0
    visible = [e for e in run.history.of(Event) if e.name == "CredentialVisible" and 480 <= e.at < 720]
    if effect.startswith("drop"):
        assert not visible                          # no rotation reached an agent
    elif effect.startswith("corrupt"):
        assert run.counters["malformed"] > 0        # a flipped bit the decoder refuses (one in a string passes, as on a real bus)
    else:
        assert len(visible) == 4                    # late, twice or out of order: each rotation applied once
    late = [p for p in run.history.probes() if p.at >= 1000]
    assert late and all(p.expiration > p.at for p in late if p.status == 200)  # an expired one is never served (503 instead)
    if effect.startswith(("drop", "corrupt")):  # a lost rotation: no valid credential until ECS's next one reaches the agent
        assert {p.status for p in late} <= {200, 503}
    else:
        assert all(p.status == 200 for p in late)


def test_a_delayed_reply_longer_than_the_request_timeout_is_a_timeout():
    run = _run("delay", "fault: message, types: [AssumeRoleOk], delay: 30s")
    _healed(run)
    assert run.acted["f"] > 0 and run.counters["timeouts"] > 0 and not _rotations(run, 480, 720)
    assert len(_rotations(run, 720, 800)) == 4


def test_api_errors_throttle_refreshes_until_healed():
    run = _run("api", "fault: api_errors, target: sts, throttle: 100%")
    _healed(run)
    assert run.acted["f"] > 0 and not _rotations(run, 480, 720)
    assert len(_rotations(run, 720, 800)) == 4      # ECS's retries get through once it heals


def test_a_skewed_ecs_clock_refreshes_early():
    run = _run("skew", "fault: clock_skew, target: ecs, skew: +1m")
    _healed(run)
    early = _rotations(run, 480, 600)               # due at 10m by STS's clock; ECS's runs a minute ahead
    assert len(early) == 4 and all(540 <= e.at < 541 for e in early)


def test_a_skewed_instance_clock_keeps_an_expired_credential():
    x = spec.loads(BASE.format(name="iskew", fault="fault: clock_skew, instance: 0, skew: -10m").replace("for: 4m", "for: 10m"))
    run = run_sim(x)
    (f,) = run.history.of(Fault)
    assert (f.start, f.end, f.kind) == (480.0, 1080.0, "clock_skew")
    expired = [c for c in _calls(run, 900, 1080) if c.outcome == "expired"]
    assert expired and {c.instance_id for c in expired} == {f.target}   # only the skewed one, after its credential expired
    assert not [c for c in _calls(run, 1090, 1200) if c.outcome != "ok"]
