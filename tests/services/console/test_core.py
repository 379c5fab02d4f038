"""The console's pure core: sign-in, masking, rotation history, pages at 10,000, health, explanations."""

from __future__ import annotations

from protocol.times import iso
from services.console import core
from tests.helpers import T0


def test_only_the_operators_pair_signs_in() -> None:
    assert core.credential_matches("LTAIroot", "s3cret", "LTAIroot", "s3cret")
    assert not core.credential_matches("LTAIroot", "wrong", "LTAIroot", "s3cret")
    assert not core.credential_matches("LTAIother", "s3cret", "LTAIroot", "s3cret")
    assert not core.credential_matches("", "", "", "")  # a console without a credential lets nobody in


def test_sessions_expire_close_and_are_bounded() -> None:
    sessions = core.Sessions(lifetime=10, limit=2)
    sessions.open("a", T0)
    assert sessions.valid("a", T0 + 9) and not sessions.valid("a", T0 + 10)
    assert not sessions.valid("forged", T0) and not sessions.valid(None, T0) and not sessions.valid("", T0)
    sessions.open("b", T0 + 1)
    sessions.open("c", T0 + 2)  # the oldest goes
    assert not sessions.valid("a", T0 + 3) and sessions.valid("b", T0 + 3) and sessions.valid("c", T0 + 3)
    sessions.close("b")
    assert not sessions.valid("b", T0 + 3)


def test_a_credential_is_shown_masked_with_its_time_left() -> None:
    document = {"AccessKeyId": "STS.NUabcdefghijklmnop", "AccessKeySecret": "secret!", "SecurityToken": "CAIS-token",
                "Expiration": iso(T0 + 3600), "LastUpdated": iso(T0), "Code": "Success"}
    shown = core.credential_view(document, sim_now=T0 + 600, time_scale=60)
    assert shown["AccessKeyId"] == "STS.NUab…"
    assert shown["SecondsLeft"] == 3000 and shown["RealSecondsLeft"] == 50
    assert "secret!" not in repr(shown) and "CAIS-token" not in repr(shown)
    assert core.credential_view({"Expiration": "not a time"}, T0, 1)["SecondsLeft"] == 0
    assert core.credential_view(document, sim_now=T0 + 7200, time_scale=1)["SecondsLeft"] == 0  # expired: none left


def test_rotation_history_keeps_each_credential_once_newest_last_and_is_bounded() -> None:
    rotations = core.Rotations(per_instance=3, tracked=2)
    assert rotations.record("i-1", "STS.first-key-0001", "E1", "S1", "metadata", "R")
    assert not rotations.record("i-1", "STS.first-key-0001", "E1", "S1", "event", "R")  # seen already
    for n in range(2, 5):
        rotations.record("i-1", f"STS.key{n}-xxxxxxxx", f"E{n}", f"S{n}", "event", "R")
    assert [h["Expiration"] for h in rotations.history("i-1")] == ["E2", "E3", "E4"]
    assert all(h["AccessKeyId"].endswith("…") for h in rotations.history("i-1"))
    rotations.record("i-2", "STS.a", "E", "S", "event")
    rotations.record("i-3", "STS.b", "E", "S", "event")  # i-1, least recently updated, is dropped
    assert rotations.history("i-1") == [] and rotations.history("i-3")
    assert not rotations.record("", "STS.c", "E", "S", "event") and not rotations.record("i-4", "", "E", "S", "event")


def test_pages_are_clamped_to_what_describe_instances_takes() -> None:
    assert core.page_request(None, None) == (1, 20)
    assert core.page_request("0", "1000") == (1, 100)
    assert core.page_request("x", "-5") == (1, 1)
    assert core.page_request("500", "20") == (500, 20)


def test_a_page_of_ten_thousand_instances_joins_roles_and_hosts() -> None:
    page = [{"InstanceId": f"i-{n}", "Status": "Running", "ZoneId": "cn-hangzhou-i",
             "VpcAttributes": {"PrivateIpAddress": {"IpAddress": [f"172.16.0.{n}"]}}} for n in range(9980, 10000)]
    described = {"Instances": {"Instance": page}, "TotalCount": 10000, "PageNumber": 500, "PageSize": 20}
    shown = core.instances_page(described, [{"InstanceId": "i-9999", "RamRoleName": "R"}], {"i-9980": {"HostId": "host-7"}})
    assert shown["Pages"] == 500 and shown["TotalCount"] == 10000 and len(shown["Instances"]) == 20
    assert shown["Instances"][0]["HostId"] == "host-7" and shown["Instances"][-1]["RamRoleName"] == "R"
    assert shown["Instances"][0]["PrivateIp"] == "172.16.0.9980"
    assert core.instances_page({"Instances": {"Instance": []}, "TotalCount": 0, "PageSize": 20}, [], {})["Pages"] == 1


def test_process_state_from_proc_stat() -> None:
    assert core.process_state("123 (python3 -m x) S 1 2 3") == "running"
    assert core.process_state("123 (py) T 1") == "paused"
    assert core.process_state("123 (py) Z 1") == "down"
    assert core.process_state(None) == "down"
    assert core.health_row("sts", "paused", (False, 2.0, "no answer"))["Status"] == "paused"
    assert core.health_row("ram", "running", (True, 0.0123, "ok"))["Status"] == "healthy"
    assert core.health_row("ram", "running", (False, 2.0, "no answer"))["Status"] == "unhealthy"


def test_a_denial_is_explained_by_the_statement_that_decided_it() -> None:
    body = {"Code": "InvalidUser.PassRoleForbidden", "Message": "no PassRole",
            "AccessDeniedDetail": {"AuthAction": "ram:PassRole", "AuthPrincipalType": "SubUser", "AuthPrincipalDisplayName": "alice",
                                   "NoPermissionType": "ImplicitDeny", "EncodedDiagnosticMessage": "no statement allows ram:PassRole"}}
    shown = core.explain_error(403, body)
    assert shown["Denied"] == {"Action": "ram:PassRole", "Principal": "alice", "PrincipalType": "SubUser", "Kind": "ImplicitDeny",
                               "Reason": "no statement allows ram:PassRole"}
    assert "Denied" not in core.explain_error(404, {"Code": "EntityNotExist.Role"})
    decision = core.explain_decision({"Decision": {"Allowed": False, "Decision": "ExplicitDeny", "Reason": "denied by Custom:D v1 statement 1",
                                                   "Matches": [{"Policy": "Custom:D", "Version": "v1", "Statement": 1, "Effect": "Deny"}]}})
    assert not decision["Allowed"] and decision["Matches"][0]["Statement"] == 1


def test_a_trace_event_is_drawn_masked_and_a_denial_carries_rams_reason() -> None:
    event = {"time": T0, "src": "ecs", "dest": "gateway", "type": "Error", "msg_id": 7, "trace_id": "abc",
             "fields": {"Code": "Forbidden.RAM", "AccessDeniedDetail.AuthAction": "ecs:AttachInstanceRamRole",
                        "AccessDeniedDetail.NoPermissionType": "ImplicitDeny",
                        "AccessDeniedDetail.EncodedDiagnosticMessage": "no statement allowed ecs:AttachInstanceRamRole"}}
    item = core.feed_item(event)
    assert (item["Src"], item["Dest"], item["Type"], item["Error"]) == ("ecs", "gateway", "Error", True)
    assert item["Denied"] == {"Code": "Forbidden.RAM", "Action": "ecs:AttachInstanceRamRole", "Kind": "ImplicitDeny",
                              "Reason": "no statement allowed ecs:AttachInstanceRamRole"}
    pushed = core.feed_item({"time": T0, "src": "ecs", "dest": "*", "type": "InstanceCredentialsRefreshed", "msg_id": 8,
                             "fields": {"InstanceId": "i-1", "RamRoleName": "R", "AccessKeyId": "STS.NUabcdefghijkl",
                                        "Expiration": f"{T0 + 3600:.3f}"}})
    assert pushed["Dest"] == "events" and pushed["Event"] and "Denied" not in pushed
    assert pushed["Fields"]["AccessKeyId"] == "STS.NUab…"
    assert core.rotation_of(pushed) == ("i-1", "STS.NUab…", iso(T0 + 3600), "R")
    assert core.rotation_of(item) is None


def test_the_consoles_own_reads_are_known_by_their_trace_id() -> None:
    assert core.trace_of("5624C746-20BB-484A-A833-6B09CE8230FE") == "5624c74620bb484a"  # as the gateway derives it
    assert core.is_read("DescribeInstances") and core.is_read("ListRoles") and not core.is_read("AttachInstanceRamRole")


def test_the_feed_is_throttled() -> None:
    throttle = core.Throttle(rate=10, burst=5, tokens=5, last=T0)
    assert sum(throttle.allow(T0) for _ in range(20)) == 5 and throttle.refused == 15
    assert sum(throttle.allow(T0 + 1) for _ in range(20)) == 5  # a second later: the bucket refilled to its burst
