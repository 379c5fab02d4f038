"""The experiment file: a good file parses into seconds, probabilities and rates; each kind of bad
file is refused with an error naming its line and field; the published JSON Schema is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.experiment import spec
from services.experiment.spec import SpecError

ROOT = Path(__file__).resolve().parents[3]

GOOD = """\
name: sts-outage-across-refresh
expect: fail
expect_failing: [never_serves_expired]
seed: 7
settings:
  credential_lifetime: 15m
  refresh_before: 5m
  duration: 1h
  probe_interval: 10s
topology:
  hosts: 2
  instances: 20
  roles:
    AppRole: {policies: [AliyunOSSFullAccess]}
  apps:
    - {instances: "0-9", rate: 30/m}
timeline:
  - {at: 0s, do: attach_role, role: AppRole, instances: all}
  - {at: 10m, fault: pause, target: sts, for: 20m, id: sts-down}
  - {at: 35m, fault: link, target: metadata-host-1, latency: 200ms, jitter: 100ms, distribution: normal, loss: 5%, bandwidth: 64kbps}
  - {at: 45m, fault: message, types: [InstanceChanged], drop: 30%, for: 5m}
  - {at: 46m, fault: clock_skew, instance: 3, skew: -30s}
  - {at: 50m, heal: sts-down}
checks:
  - invariant: never_serves_expired
  - slo: attach_to_visible_p99
    max: 50ms
  - slo: app_success_rate
    min: 99.9%
    outside: faults
"""


def test_a_good_file_parses_into_seconds_probabilities_and_rates():
    x = spec.loads(GOOD, "good.yaml")
    assert (x.name, x.expect, x.seed) == ("sts-outage-across-refresh", "fail", 7)
    assert (x.settings.credential_lifetime, x.settings.refresh_before, x.settings.duration) == (900, 300, 3600)
    assert x.topology.apps[0].rate == 0.5
    attach, pause, link, message, skew, heal = x.timeline
    assert isinstance(attach, spec.AttachRole) and attach.role == "AppRole"
    assert isinstance(pause, spec.Pause) and (pause.at, pause.for_, pause.id) == (600, 1200, "sts-down")
    assert isinstance(link, spec.Link) and (link.latency, link.jitter, link.loss, link.bandwidth) == (0.2, 0.1, 0.05, 64000)
    assert link.for_ is None  # lasts to the end of the run
    assert isinstance(message, spec.MessageFault) and message.drop == 0.3 and message.target == ""
    assert isinstance(skew, spec.ClockSkew) and (skew.instance, skew.skew) == (3, -30)
    assert isinstance(heal, spec.Heal) and heal.heal == "sts-down"
    assert x.checks[1].max == 0.05 and x.checks[2].min == pytest.approx(0.999)
    assert spec.select(x.topology.apps[0].instances, 20) == list(range(10))


@pytest.mark.parametrize("value, seconds", [("150ms", 0.15), ("30s", 30), ("25m", 1500), ("2h", 7200), ("1d", 86400),
                                            (90, 90), (1.5, 1.5), ("12", 12)])
def test_durations(value, seconds):
    assert spec.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "-5s", "5 minutes", True, None, "+5m"])
def test_bad_durations(value):
    with pytest.raises(ValueError, match="expected a duration like 30s"):
        spec.parse_duration(value)


def test_skews_are_signed():
    assert spec.parse_duration("+5m", signed=True) == 300 and spec.parse_duration("-30s", signed=True) == -30


@pytest.mark.parametrize("text, parse, value", [("5%", spec.parse_percent, 0.05), (0.3, spec.parse_percent, 0.3),
                                                ("2/s", spec.parse_rate, 2), ("100/h", spec.parse_rate, 100 / 3600),
                                                ("1/10m", spec.parse_rate, 1 / 600),
                                                ("1mbps", spec.parse_bandwidth, 1e6)])
def test_percentages_rates_bandwidths(text, parse, value):
    assert parse(text) == pytest.approx(value)


@pytest.mark.parametrize("text, parse", [("150%", spec.parse_percent), (2, spec.parse_percent), ("0/s", spec.parse_rate),
                                         ("fast", spec.parse_rate), ("64kb", spec.parse_bandwidth)])
def test_bad_percentages_rates_bandwidths(text, parse):
    with pytest.raises(ValueError, match="expected a"):
        parse(text)


def _error(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        spec.loads(text, "exp.yaml")
    return caught.value.lines()


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("old, new, expected", [
    ("for: 20m", "for: soon", "exp.yaml:19: timeline[1].for: expected a duration like 30s, got 'soon'"),
    ("latency: 200ms", "latncy: 200ms", "exp.yaml:20: timeline[2].latncy: unknown field"),
    ("rate: 30/m", "rate: fast", "exp.yaml:16: topology.apps[0].rate: expected a rate like 2/s, 30/m, 1/10m or 100/h, got 'fast'"),
    ("hosts: 2", "hosts: two", "exp.yaml:11: topology.hosts: expected `int`, got `str`"),
    ("fault: pause", "fault: freeze", "exp.yaml:19: timeline[1].fault: invalid value 'freeze'"),
    ("do: attach_role, role: AppRole", "do: attach_role, role: NoRole", "exp.yaml:18: timeline[0].role: no role 'NoRole' in topology.roles"),
    ("target: metadata-host-1", "target: metadata-host-3", "exp.yaml:20: timeline[2].target: no metadata-host-3 (topology.hosts is 2)"),
    ("target: sts,", "target: stss,", "exp.yaml:19: timeline[1].target: expected ram, sts, ecs, gateway, oss, broker or metadata-host-N, got 'stss'"),
    ("types: [InstanceChanged]", "types: [InstanceViewPushed]", "exp.yaml:21: timeline[3].types[0]: no message type 'InstanceViewPushed'"),
    ("instance: 3", "instance: 20", "exp.yaml:22: timeline[4].instance: instance index 20 out of range (0..19)"),
    ('"0-9"', '"0-29"', "exp.yaml:16: topology.apps[0].instances: instance index 20 out of range (the experiment has 20 instances: 0..19)"),
    ("heal: sts-down", "heal: sts-gone", "exp.yaml:23: timeline[5].heal: no earlier fault with id 'sts-gone'"),
    ("refresh_before: 5m", "refresh_before: 15m", "exp.yaml:7: settings.refresh_before: must be less than credential_lifetime"),
    ("  - {at: 50m, heal", "  - {at: 2h, heal", "exp.yaml:23: timeline[5].at: after the end of the run (settings.duration is 3600s)"),
    ("    max: 50ms", "    min: 50%", "exp.yaml:27: checks[1].min: attach_to_visible_p99 takes no min (it takes max)"),
    ("expect_failing: [never_serves_expired]", "expect_failing: [nope]", "exp.yaml:3: expect_failing[0]: 'nope' is not one of the checks"),
    ("  - {at: 0s, do: attach_role", "  - {at: 0s, fault: kill, do: attach_role",
     "exp.yaml:18: timeline[0]: needs exactly one of do, fault, heal (got do, fault)"),
    ("name: sts-outage-across-refresh\n", "", "exp.yaml:1: (top level): missing required field 'name'"),
    ("  - invariant: never_serves_expired", "  - invariant: never_lies", "exp.yaml:25: checks[0].invariant: invalid enum value 'never_lies'"),
])
def test_bad_files_name_the_line_and_the_field(old, new, expected):
    lines = _error(_edit(old, new))
    assert any(line.startswith(expected) for line in lines), lines


def test_every_bad_step_is_reported_not_only_the_first():
    lines = _error(_edit("for: 20m", "for: soon").replace("loss: 5%", "loss: lots"))
    assert [line.split(":")[1] for line in lines] == ["19", "20"]


def test_not_yaml_and_not_a_mapping():
    assert _error("name: [unclosed\n")[0].startswith("exp.yaml:")
    assert _error("- just a list\n") == ["exp.yaml:1: (top level): expected a mapping with name, settings, topology, timeline, checks"]


def test_load_names_the_file_as_given(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(_edit("for: 20m", "for: soon"))
    with pytest.raises(SpecError, match=f"^{f}:19: timeline"):
        spec.load(str(f))


def test_the_published_schema_is_current():
    published = ROOT / "docs" / "experiment.schema.json"
    assert published.read_bytes() == spec.schema_json(), "regenerate: ramsim experiment schema > docs/experiment.schema.json"


def test_the_schema_describes_the_steps_and_checks():
    s = json.loads(spec.schema_json())
    steps = s["$defs"]["Experiment"]["properties"]["timeline"]["items"]["anyOf"]
    assert len(steps) == 7 + 7 + 1  # actions, faults, heal
    assert s["$defs"]["Pause"]["properties"]["fault"] == {"enum": ["pause"]}
    assert "for" in s["$defs"]["Pause"]["properties"] and s["$defs"]["Pause"]["additionalProperties"] is False
    assert set(s["$defs"]["Check"]["properties"]["invariant"]["anyOf"][0]["enum"]) == set(spec.INVARIANTS)


def test_a_lifetime_sts_would_refuse_and_a_wrong_choice_are_named_with_their_fix():
    with pytest.raises(SpecError) as exc:
        spec.loads("name: x\nsettings:\n  credential_lifetime: 5m\n  refresh_before: 2m\n", "x.yaml")
    assert exc.value.lines() == ["x.yaml:3: settings.credential_lifetime: must be between 15m and 12h "
                                 "(STS issues 900..43200 seconds to an instance's role), got 300s"]
    with pytest.raises(SpecError) as exc:
        spec.loads("name: x\ntimeline:\n  - {at: 0s, fault: link, target: sts, distribution: gauss}\n", "x.yaml")
    assert exc.value.lines() == ["x.yaml:3: timeline[0].distribution: invalid enum value 'gauss' (expected one of normal, pareto, uniform)"]
