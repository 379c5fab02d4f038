"""The invariant checker over hand-made histories: for each invariant a history that keeps it and
one that breaks it (and the violation names the right evidence); JSON lines round trips; the
``ramsim check`` command's table and exit status."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from services.cli.main import main
from services.faults.history import (NO_ANSWER, Attach, Call, Detach, Event, Exchange, Fault, History, HistoryError, Mark,
                                     Present, Probe, Write, decode_jsonl, encode_jsonl, wall_time)
from services.faults.invariants import Bounds, Report, check

T0 = 1_700_000_000.0
I, R = "i-1", "AppRole"


def probe(t: float, key: str = "STS.K1", expires: float = 10.0, *, role: str = R, status: int = 200,
          instance: str = I, host: str = "host-1") -> Probe:
    """A probe at T0+t; a 200 serves ``key`` expiring at T0+expires."""
    if status != 200:
        return Probe(at=T0 + t, instance_id=instance, status=status, role=role if status == 404 else "", host_id=host)
    return Probe(at=T0 + t, instance_id=instance, status=200, role=role, access_key_id=key, expiration=T0 + expires,
                 host_id=host)


def attached(t: float = -1.0, role: str = R, instance: str = I) -> Attach:
    return Attach(at_requested=T0 + t, at_acknowledged=T0 + t + 0.1, instance_id=instance, role=role, ok=True)


def detached(t: float, role: str = R, instance: str = I, ok: bool = True) -> Detach:
    return Detach(at_requested=T0 + t, at_acknowledged=T0 + t + 0.1, instance_id=instance, role=role, ok=ok)


def fault(start: float, end: float | None, target: str = "sts", kind: str = "kill") -> Fault:
    return Fault(start=T0 + start, end=None if end is None else T0 + end, kind=kind, target=target)


def refreshing(until: float, *, step: float = 0.5, lifetime: float = 10.0, refresh_every: float = 5.0) -> list[Probe]:
    """Probes every ``step`` s from 0 to ``until`` of an instance whose credential (STS.K<n>,
    issued at (n-1) * refresh_every) lasts ``lifetime`` and is replaced every ``refresh_every``."""
    out, t = [], 0.0
    while t <= until + 1e-9:
        n = int(t // refresh_every) + 1
        out.append(probe(t, f"STS.K{n}", (n - 1) * refresh_every + lifetime))
        t = round(t + step, 6)
    return out


def run(*records: object, **bounds: object) -> Report:
    return check(History(records), Bounds(**bounds))  # type: ignore[arg-type]


def only(report: Report, invariant: str):  # noqa: ANN201
    found = report.violations_of(invariant)
    assert len(found) == 1, report.table()
    return found[0]


# -- no acknowledged write is lost ---------------------------------------------------------------
def test_acknowledged_writes_that_survive_pass() -> None:
    report = run(Write(at=T0, kind="ram.Role", key="A", acknowledged=True),
                 Write(at=T0 + 1, kind="ram.Role", key="B", acknowledged=True),
                 Write(at=T0 + 2, kind="ram.Role", key="B", acknowledged=True, deleted=True),
                 Write(at=T0 + 3, kind="ram.Role", key="C", acknowledged=False),   # unacknowledged: either way
                 Present(kind="ram.Role", keys=["A"]))
    s = report.summary("acknowledged_writes_survive")
    assert (s.checked, s.violations, s.skipped_because) == (2, 0, {"never acknowledged": 1})
    assert report.ok, report.table()


def test_a_lost_acknowledged_write_is_a_violation_with_that_write_as_evidence() -> None:
    lost = Write(at=T0 + 1, kind="oss.Object", key="b/k2", acknowledged=True)
    report = run(Write(at=T0, kind="oss.Object", key="b/k1", acknowledged=True), lost,
                 Present(kind="oss.Object", keys=["b/k1"]))
    v = only(report, "acknowledged_writes_survive")
    assert (v.subject, v.evidence, v.at) == ("oss.Object:b/k2", lost, lost.at)
    assert "lost" in v.detail
    assert not report.ok


def test_an_acknowledged_delete_that_came_back_and_a_kind_never_read_back_are_violations() -> None:
    report = run(Write(at=T0, kind="k", key="x", acknowledged=True),
                 Write(at=T0 + 1, kind="k", key="x", acknowledged=True, deleted=True),
                 Present(kind="k", keys=["x"]),
                 Write(at=T0, kind="unread", key="y", acknowledged=True))
    details = {v.subject: v.detail for v in report.violations_of("acknowledged_writes_survive")}
    assert "came back" in details["k:x"] and "never read back" in details["unread:y"]


def test_an_unacknowledged_write_of_the_other_effect_makes_the_key_indeterminate() -> None:
    report = run(Write(at=T0, kind="k", key="x", acknowledged=True),
                 Write(at=T0 + 1, kind="k", key="x", acknowledged=False, deleted=True),  # timed out: may have applied
                 Present(kind="k", keys=[]))
    s = report.summary("acknowledged_writes_survive")
    assert (s.checked, s.violations, s.skipped) == (0, 0, 1)


def test_the_last_present_of_a_kind_counts() -> None:
    report = run(Write(at=T0, kind="k", key="x", acknowledged=True), Present(kind="k", keys=[]), Present(kind="k", keys=["x"]))
    assert report.ok


# -- no expired credential, ever -------------------------------------------------------------------
def test_fresh_credentials_pass_never_serves_expired() -> None:
    report = run(attached(), *refreshing(20))
    s = report.summary("never_serves_expired")
    assert s.checked == 41 and s.violations == 0, report.table()


def test_serving_an_expired_credential_is_one_violation_per_run_of_probes() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in (8, 9, 10, 11, 12)] + [probe(13, "STS.K2", 20.0)]
    report = run(attached(), *probes)
    v = only(report, "never_serves_expired")
    assert v.evidence == probes[2] and v.count == 3 and v.until == T0 + 12 and v.subject == I
    assert "STS.K1" in v.detail


def test_no_fault_excuses_serving_an_expired_credential() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in (10, 11, 14, 16)]  # expired throughout, through an STS outage and after
    for window in (fault(9, 12, "sts", "outage"), fault(9, None, "metadata-host-1", "stop"), fault(0, 20, "mosquitto", "pause")):
        report = run(attached(), window, *probes, grace=3.0)
        s = report.summary("never_serves_expired")
        assert (s.checked, s.skipped, s.violations) == (4, 0, 1), report.table()
        v = only(report, "never_serves_expired")
        assert (v.evidence, v.count, v.until) == (probes[0], 4, probes[3].at)


def test_an_error_answer_for_an_expired_credential_keeps_never_serves_expired() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in (8, 9)] + [probe(t, status=503) for t in (10, 11, 12)] + [probe(13, "STS.K2", 30.0)]
    report = run(attached(), fault(5, 12.5, "sts", "pause"), *probes, grace=1.0)
    assert report.summary("never_serves_expired").checked == 3 and not report.violations_of("never_serves_expired")
    assert report.summary("fresh_before_expiry").skipped_because["fault"] == 1  # the late refresh itself is excused


def missed_refresh(at: float = 11.0) -> tuple[Probe, Probe]:
    """K1 (expiring at 10) seen at 1, then no credential at ``at``: fresh_before_expiry's case."""
    return probe(1, "STS.K1", 10.0), probe(at, status=503)


def test_a_fault_never_ended_covers_the_rest_of_the_run() -> None:
    report = run(attached(), fault(9, None, "mosquitto", "stop"), *missed_refresh(), probe(50, "STS.K2", 60.0),
                 probe(100, status=503))
    assert report.summary("fresh_before_expiry").skipped == 2 and report.ok


def test_only_the_instance_s_own_metadata_agent_counts_as_its_fault() -> None:
    other = run(attached(), fault(9, 12, "metadata-host-2", "stop"), *missed_refresh())
    own = run(attached(), fault(9, 12, "metadata-host-1", "stop"), *missed_refresh())
    gateway = run(attached(), fault(9, 12, "gateway", "kill"), *missed_refresh())
    assert own.summary("fresh_before_expiry").skipped == 1 and own.ok
    assert not other.ok and not gateway.ok  # neither is on this instance's credential path


def test_ram_is_on_the_credential_path_unless_the_bounds_say_otherwise() -> None:
    records = (attached(), fault(9, 12, "ram", "kill"), *missed_refresh())
    assert run(*records).ok
    assert not run(*records, credential_path=("ecs", "sts", "mosquitto")).ok


def test_an_open_fault_in_a_journal_is_superseded_by_its_closed_record() -> None:
    opened = fault(2, None)
    closed = Fault(start=opened.start, end=T0 + 3, kind=opened.kind, target=opened.target)
    report = run(attached(), opened, closed, *missed_refresh(20), grace=1.0)
    assert not report.ok and report.summary("fresh_before_expiry").checked == 1


# -- a fresh credential before the old one expires ----------------------------------------------------
def test_refreshed_in_time_passes_fresh_before_expiry() -> None:
    report = run(attached(), *refreshing(20))
    s = report.summary("fresh_before_expiry")
    # K1 (expires 10), K2 (15), K3 (20) are covered; K4, K5 expire after the recording ended
    assert (s.checked, s.violations, s.skipped_because) == (3, 0, {"recording ended before the deadline": 2}), report.table()
    assert report.ok


def test_the_old_credential_still_served_at_its_expiry_is_a_violation_naming_that_probe() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in range(0, 11)] + [probe(11, "STS.K2", 20.0)]
    report = run(attached(), *probes)
    v = only(report, "fresh_before_expiry")
    assert v.evidence == probes[10] and v.context == probes[0]
    assert "still serving STS.K1" in v.detail


def test_no_credential_at_the_deadline_is_a_violation() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in range(0, 10)] + [probe(10, status=NO_ANSWER), probe(11, "STS.K2", 20.0)]
    v = only(run(attached(), *probes), "fresh_before_expiry")
    assert v.evidence == probes[10] and "status 0" in v.detail


def test_the_refresh_margin_moves_the_deadline() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in range(0, 9)] + [probe(t, "STS.K2", 20.0) for t in range(9, 12)]
    assert run(attached(), *probes, refresh_margin=1.0).summary("fresh_before_expiry").checked == 1
    assert run(attached(), *probes, refresh_margin=1.0).ok
    v = only(run(attached(), *probes, refresh_margin=2.0), "fresh_before_expiry")
    assert v.evidence == probes[8]  # at 8 = 10 - 2, still K1


def test_a_fault_before_the_deadline_or_a_detach_excuses_fresh_before_expiry() -> None:
    probes = [probe(t, "STS.K1", 10.0) for t in range(0, 11)]
    excused = run(attached(), fault(2, 8, "sts", "outage"), *probes, grace=5.0)
    assert excused.summary("fresh_before_expiry").skipped_because == {"fault": 1}
    in_grace = run(attached(), fault(2, 6, "sts", "outage"), *probes, grace=5.0)  # back 4 s before the deadline: < grace
    assert in_grace.summary("fresh_before_expiry").skipped_because == {"fault": 1} and not in_grace.violations_of("fresh_before_expiry")
    recovered = run(attached(), fault(2, 4, "sts", "outage"), *probes, grace=5.0)  # back 6 s before it: time enough
    assert only(recovered, "fresh_before_expiry").evidence == probes[10]
    gone = run(attached(), *probes[:9], detached(8.5), probe(10, status=404))
    assert gone.summary("fresh_before_expiry").skipped_because == {"detached": 1}


# -- detach within the bound ---------------------------------------------------------------------------
def test_a_detach_that_reaches_the_instance_in_time_passes() -> None:
    d = detached(5.0)
    probes = [probe(t, "STS.K1", 30.0) for t in (4, 5)] + [probe(t, status=404) for t in (5.2, 6, 7, 8)]
    report = run(attached(), d, *probes, detach_bound=1.0)
    assert report.summary("detach_within_bound").checked == 1 and report.ok, report.table()


def test_a_role_still_served_after_the_bound_is_a_violation_naming_the_probe_and_the_detach() -> None:
    d = detached(5.0)
    probes = [probe(t, "STS.K1", 30.0) for t in (4, 5, 6, 7)] + [probe(8, status=404)]
    report = run(attached(), d, *probes, detach_bound=1.5)
    v = only(report, "detach_within_bound")
    assert v.evidence == probes[3] and v.context == d and v.count == 1  # 6.0 is within 5.1 + 1.5
    assert "after DetachInstanceRamRole returned" in v.detail


def test_a_detach_is_checked_up_to_the_next_attach_of_the_role_and_skipped_without_probes() -> None:
    d, again = detached(5.0), attached(7.0)
    probes = [probe(6.5, status=404), probe(8, "STS.K2", 30.0)]
    report = run(attached(), d, again, *probes, detach_bound=1.0)
    assert report.summary("detach_within_bound").checked == 1 and report.ok, report.table()
    unprobed = run(attached(), d, probe(5.5, status=404), detach_bound=1.0)
    assert unprobed.summary("detach_within_bound").skipped_because == {"no probe after the deadline": 1}


def test_a_failed_detach_promises_nothing_and_a_control_path_fault_excuses() -> None:
    assert run(attached(), detached(5.0, ok=False), probe(9, "STS.K1", 30.0)).summary("detach_within_bound").checked == 0
    during = run(attached(), detached(5.0), fault(4, 7, "mosquitto", "restart"), probe(7.5, "STS.K1", 30.0),
                 detach_bound=1.0, grace=1.0)
    assert during.summary("detach_within_bound").skipped_because == {"fault": 1} and during.ok, during.table()
    sts_down = run(attached(), detached(5.0), fault(4, 7, "sts", "kill"), probe(7.5, "STS.K1", 30.0),
                   detach_bound=1.0, grace=1.0)
    assert sts_down.violations_of("detach_within_bound")  # STS is not on the way to the instance


# -- only the attached role -------------------------------------------------------------------------------
def test_serving_the_attached_role_passes() -> None:
    report = run(attached(0.0), *[probe(t, "STS.K1", 30.0) for t in (0.5, 1, 2)])
    assert report.summary("only_attached_role").checked == 3 and report.ok


def test_a_role_never_attached_is_a_violation_naming_the_probe() -> None:
    probes = [probe(1, "STS.K1", 30.0, role="Intruder"), probe(2, "STS.K1", 30.0, role="Intruder")]
    report = run(attached(0.0), *probes)
    v = only(report, "only_attached_role")
    assert v.evidence == probes[0] and v.count == 2 and "never attached" in v.detail and "Intruder" in v.detail


def test_a_role_served_before_its_attach_was_requested_is_a_violation() -> None:
    early = probe(1, "STS.K1", 30.0)
    v = only(run(attached(2.0), early, probe(3, "STS.K1", 30.0)), "only_attached_role")
    assert v.evidence == early


def test_a_role_detached_longer_than_the_bound_ago_is_a_violation() -> None:
    d = detached(5.0)
    late = probe(7.0, "STS.K1", 30.0)
    report = run(attached(0.0), d, probe(5.5, "STS.K1", 30.0), late, detach_bound=1.0)
    v = only(report, "only_attached_role")
    assert v.evidence == late and v.context == d
    assert report.summary("only_attached_role").checked == 2  # 5.5 is within the bound


# -- exactly one reply --------------------------------------------------------------------------------------
def test_one_reply_per_request_passes_even_when_counted_in_parts() -> None:
    report = run(Exchange(request_id="a", replies=1), Exchange(request_id="b", replies=0), Exchange(request_id="b", replies=1))
    assert report.summary("exactly_one_reply").checked == 2 and report.ok


def test_a_lost_or_a_duplicated_reply_is_a_violation() -> None:
    lost = Exchange(request_id="lost", replies=0, at=T0, what="ecs:DetachInstanceRamRole")
    twice = Exchange(request_id="twice", replies=1, at=T0 + 1)
    report = run(lost, twice, Exchange(request_id="twice", replies=1, at=T0 + 2))
    found = {v.subject: v for v in report.violations_of("exactly_one_reply")}
    assert found["lost"].evidence == lost and "no reply" in found["lost"].detail
    assert found["twice"].evidence == twice and "2 replies" in found["twice"].detail


def test_only_a_dead_gateway_excuses_a_missing_reply_and_nothing_excuses_two() -> None:
    in_flight = Exchange(request_id="cut", replies=0, at=T0 + 0.5, what="ram:CreateUser")  # the gateway died holding it
    behind = Exchange(request_id="behind", replies=0, at=T0 + 0.5, what="ram:CreateUser")
    report = run(in_flight, fault(1, 2, "gateway", "kill"))
    assert report.ok and report.summary("exactly_one_reply").skipped_because == {"fault": 1}
    assert not run(behind, fault(1, 2, "ram", "kill")).ok  # the gateway answers for a dead service: a reply is due
    assert not run(Exchange(request_id="late", replies=0, at=T0 - 10), fault(1, 2, "gateway", "kill")).ok  # long before
    twice = [Exchange(request_id="t", replies=1, at=T0 + 0.5), Exchange(request_id="t", replies=1, at=T0 + 0.6)]
    assert not run(*twice, fault(1, 2, "gateway", "kill")).ok


# -- the history as JSON lines, the report, the command -----------------------------------------------------
EVERY_KIND = [
    Probe(at=T0, instance_id=I, status=200, role=R, access_key_id="STS.K1", expiration=T0 + 9.5, host_id="host-1", took=0.001),
    Probe(at=T0 + 1, instance_id=I, status=NO_ANSWER, error="timeout"),
    Write(at=T0, kind="k", key="x", acknowledged=True), Present(kind="k", keys=["x"], at=T0 + 5),
    attached(), Detach(at_requested=T0 + 2, at_acknowledged=None, instance_id=I, role=R, ok=False, code="TimeoutError"),
    Exchange(request_id="r", replies=1, at=T0, what="ecs:AttachInstanceRamRole"),
    Call(at=T0, instance_id=I, operation="PutObject", outcome="ok", latency_ms=3.2, request_id="RID"),
    fault(1, 2), fault(3, None, "ecs", "stop"),
    Event(at=T0, name="InstanceCredentialsRefreshed", src="ecs", instance_id=I, role=R, access_key_id="STS.K1", expiration=T0 + 9),
    Mark(at=T0, text="killing sts"),
]


def test_jsonl_round_trip_keeps_every_record_and_its_type() -> None:
    history = History(EVERY_KIND)
    data = encode_jsonl(history)
    assert data.count(b"\n") == len(EVERY_KIND)
    assert decode_jsonl(data) == history
    assert decode_jsonl(data + b"\n\n") == history  # blank lines are nothing
    assert [type(r) for r in decode_jsonl(data)] == [type(r) for r in EVERY_KIND]


def test_an_unreadable_line_is_named() -> None:
    with pytest.raises(HistoryError, match="line 2"):
        decode_jsonl(encode_jsonl([Mark(at=T0, text="ok")]) + b'{"type":"Probe","at":"soon"}\n')
    with pytest.raises(HistoryError, match="line 1"):
        decode_jsonl(b'{"type":"Nope"}\n')


def test_wall_time_undoes_the_cluster_s_time_scale() -> None:
    origin = 1000.0
    assert wall_time(origin + 600.0, 600.0, origin) == origin + 1.0
    assert wall_time(5000.0, 1.0, origin) == 5000.0


def test_the_report_is_a_table_and_json() -> None:
    report = run(attached(), *[probe(t, "STS.K1", 10.0) for t in range(0, 12)],
                 Call(at=T0 + 1, instance_id=I, operation="GetObject", outcome="expired", latency_ms=2.0))
    text = report.table()
    assert "fresh_before_expiry" in text and "never_serves_expired" in text and "violation(s):" in text
    assert "evidence: Probe i-1 at t+11.000s status=200 role=AppRole key=STS.K1" in text
    assert "workload calls: ok=0 denied=0 expired=1 error=0" in text
    decoded = msgspec.json.decode(msgspec.json.encode(report), type=Report)
    assert decoded.violations == report.violations


def test_ramsim_check_prints_the_table_and_exits_1_on_a_violation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(encode_jsonl([attached(), *refreshing(12)]))
    bad.write_bytes(encode_jsonl([attached(), *[probe(t, "STS.K1", 10.0) for t in range(0, 12)]]))
    assert main(["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "0 violation(s)" in out and "only_attached_role" in out
    assert main(["check", str(bad), "--grace", "1"]) == 1
    assert "[fresh_before_expiry] i-1" in capsys.readouterr().out
    # a fault on ecs for the whole run, and ecs on the credential path: no refresh to hold against it
    # (the view answers an error once K1 has expired: serving it expired would be a violation, fault or not)
    bad.write_bytes(encode_jsonl([fault(-5, None, "ecs"), attached(), *[probe(t, "STS.K1", 10.0) for t in range(0, 10)],
                                  probe(10, status=503), probe(11, status=503)]))
    assert main(["check", str(bad)]) == 0
    assert main(["check", str(bad), "--credential-path", "sts"]) == 1
    capsys.readouterr()
    assert main(["check", str(bad), "--output", "json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["violations"] == []
    (tmp_path / "junk.jsonl").write_text("not json\n")
    assert main(["check", str(tmp_path / "junk.jsonl")]) == 2
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
