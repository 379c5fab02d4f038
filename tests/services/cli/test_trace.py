"""The sequence renderings of ``ramsim trace`` (text, Mermaid, SVG), its recordings, and the
"Decided by:" line: pure functions, checked structurally (the SVG parsed with xml.etree)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from protocol.trace import TraceEvent
from services.cli import api, sequence, trace
from services.cli.errors import CliError

SVG = "{http://www.w3.org/2000/svg}"


def ev(src: str, dest: str, type_: str, msg_id: int, *, reply: int | None = None, trace_id: str = "t1", topic: str = "",
       **fields: str) -> TraceEvent:
    return TraceEvent(time=1_796_300_000.0 + msg_id / 10, src=src, dest=dest, type=type_, msg_id=msg_id, in_reply_to=reply,
                      trace_id=trace_id, fields=fields, topic=topic)


ATTACH = [
    ev("gateway", "ram", "Authenticate", 1, AccessKeyId="LTAIx"),
    ev("ram", "gateway", "AuthenticateOk", 2, reply=1),
    ev("gateway", "ecs", "AttachInstanceRamRole", 3, RamRoleName="R", InstanceIds='["i-1"]'),
    ev("ecs", "ram", "GetRole", 4, RoleName="R"),
    ev("ram", "ecs", "GetRoleOk", 5, reply=4),
    ev("ecs", "sts", "AssumeRole", 6, RoleArn="acs:ram::1:role/R"),
    ev("sts", "ecs", "AssumeRoleOk", 7, reply=6, **{"Credentials.AccessKeyId": "STS.k"}),
    ev("ecs", "*", "InstanceChanged", 8, topic="ramsim/v1/host/host-1/instance/i-1", **{"View.InstanceId": "i-1"}),
    ev("ecs", "*", "RoleAttachedToInstance", 9, topic="ramsim/v1/event/ecs/RoleAttachedToInstance", InstanceId="i-1"),
    ev("ecs", "gateway", "AttachInstanceRamRoleOk", 10, reply=3),
]


def test_receivers_lifelines_and_text() -> None:
    assert sequence.receiver(ATTACH[7]) == "metadata-host-1" and sequence.receiver(ATTACH[8]) == sequence.EVENTS
    assert sequence.lifelines(ATTACH) == ["gateway", "ram", "sts", "ecs", "metadata-host-1", sequence.EVENTS]
    lines = sequence.text(ATTACH + [ev("ecs", "sts", "AssumeRole", 11, trace_id="t2")])
    assert lines[0] == "trace t1 (10 messages)" and lines[11] == "trace t2 (1 message)"
    assert "gateway → ecs  AttachInstanceRamRole  RamRoleName=R" in lines[3]
    assert "ecs ⇠ gateway  AttachInstanceRamRoleOk" in lines[10]


def test_mermaid_is_a_sequence_diagram_with_one_arrow_per_message() -> None:
    text = sequence.mermaid(ATTACH, title="AttachInstanceRamRole")
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram" and lines[1] == "    title AttachInstanceRamRole"
    participants = [line.split(" as ", 1)[1] for line in lines if line.strip().startswith("participant ")]
    assert participants == sequence.lifelines(ATTACH)
    arrows = [line for line in lines if "->>" in line or "--x" in line]
    assert len(arrows) == len(ATTACH)
    assert arrows[2].endswith(": AttachInstanceRamRole RamRoleName=R InstanceIds=[\"i-1\"]")
    assert "-->>" in arrows[1] and "-->>" not in arrows[0]  # replies dashed
    assert ";" not in sequence.mermaid([ev("a", "b", "X", 1, Note="one; two")]).split("\n", 3)[3]


def test_svg_parses_with_a_lifeline_per_node_and_an_arrow_per_message() -> None:
    root = ET.fromstring(sequence.svg(ATTACH, title="AttachInstanceRamRole"))
    assert root.tag == SVG + "svg"
    lifelines = [g for g in root.iter(SVG + "g") if g.get("class") == "lifeline"]
    assert [g.get("data-node") for g in lifelines] == sequence.lifelines(ATTACH)
    for g in lifelines:  # a header and a line down
        assert g.find(SVG + "rect") is not None and g.find(SVG + "line") is not None
    messages = [g for g in root.iter(SVG + "g") if g.get("class") == "message"]
    assert [g.get("data-type") for g in messages] == [e.type for e in ATTACH]
    ys = []
    for g, event in zip(messages, ATTACH):
        line = g.find(SVG + "line")
        assert line is not None and line.get("marker-end") == "url(#head)"
        x = {n.get("data-node"): float(n.find(SVG + "line").get("x1")) for n in lifelines}  # type: ignore[union-attr]
        assert (float(line.get("x1")), float(line.get("x2"))) == (x[event.src], x[sequence.receiver(event)])
        ys.append(float(line.get("y1")))
        assert (line.get("stroke-dasharray") is not None) == (event.in_reply_to is not None)
    assert ys == sorted(ys) and len(set(ys)) == len(ys)  # time flows down


def test_svg_escapes_labels_and_draws_a_message_to_itself() -> None:
    root = ET.fromstring(sequence.svg([ev("a<b", "a<b", "X&Y", 1, Note="<script>")]))
    message = next(g for g in root.iter(SVG + "g") if g.get("class") == "message")
    assert message.get("data-type") == "X&Y" and message.find(SVG + "path") is not None


def test_select_by_trace_prefix_and_type() -> None:
    other = [ev("gateway", "ram", "ListRoles", 20, trace_id="zz9")]
    assert trace.select(ATTACH + other, ["t"]) == ATTACH
    assert trace.select(ATTACH + other, types=["ListRoles"]) == other
    assert trace.select(ATTACH + other, ["t"], ["ListRoles"]) == []


def test_recordings_and_histories_load(tmp_path: Path) -> None:
    recorded = tmp_path / "trace.jsonl"
    recorded.write_bytes(b"".join(trace.encode(e) for e in ATTACH))
    assert trace.load([str(recorded)]) == ATTACH
    run = tmp_path / "out"
    run.mkdir()
    (run / "history.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"type": "Attach", "at_requested": 10.0, "instance_id": "i-1", "role": "R"},
        {"type": "Event", "at": 10.5, "name": "RoleAttachedToInstance", "src": "ecs", "instance_id": "i-1", "role": "R"},
        {"type": "Fault", "kind": "kill", "target": "sts", "start": 11.0, "end": 12.0},
    )) + "\n")
    events = trace.load([str(run)])
    assert [(e.src, sequence.receiver(e), e.type) for e in events] == [
        ("operator", "ecs", "Attach"), ("ecs", sequence.EVENTS, "RoleAttachedToInstance"), ("operator", "sts", "Fault")]
    assert events[1].fields == {"InstanceId": "i-1", "Role": "R"}
    (tmp_path / "bad.jsonl").write_text('{"type": "Event"\n')
    with pytest.raises(CliError, match="bad.jsonl:1: not JSON"):
        trace.load([str(tmp_path / "bad.jsonl")])


def test_decided_by_names_the_statement_or_none() -> None:
    implicit = {"PolicyType": "AccountLevelIdentityBasedPolicy", "AuthPrincipalType": "SubUser", "AuthPrincipalDisplayName": "u",
                "AuthPrincipalOwnerId": "1", "NoPermissionType": "ImplicitDeny", "AuthAction": "ram:PassRole",
                "EncodedDiagnosticMessage": "no statement allowed ram:PassRole on acs:ram:*:1:role/R"}
    assert api.decided_by(implicit) == ("none: no statement allows it (ImplicitDeny; ram:PassRole for SubUser u, "
                                        "AccountLevelIdentityBasedPolicy); RAM: no statement allowed ram:PassRole on acs:ram:*:1:role/R")
    explicit = {**implicit, "NoPermissionType": "ExplicitDeny",
                "EncodedDiagnosticMessage": "explicitly denied by Custom:NoPass v1 statement 0 (Sid Never)"}
    assert api.decided_by(explicit).startswith("Custom:NoPass v1 statement 0 (Sid Never) (ExplicitDeny")
    assert api.decided_by(None) == ""
    error = api.ApiError(403, "InvalidUser.PassRoleForbidden", "no", {"AccessDeniedDetail": implicit})
    assert error.line("ecs").splitlines() == ["ERROR: InvalidUser.PassRoleForbidden: no (HTTP 403)",
                                              "Decided by: " + api.decided_by(implicit)]
    assert api.ApiError(404, "EntityNotExist.Role", "no", {}).line("ram") == "ERROR: EntityNotExist.Role: no (HTTP 404)"
