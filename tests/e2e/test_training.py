"""The training commands as a newcomer runs them, against a real cluster (real Mosquitto, real
service processes, the commands as their own processes):

* ``ramsim trace --follow --record`` follows an AttachInstanceRamRole live (``--duration`` listens, then prints); ``ramsim trace FILE``
  prints it as the expected sequence of message types, and draws it as Mermaid and as SVG;
* ``ramsim tour --auto`` walks every step, shows every teaching moment, and no secret.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from protocol import codec, topics
from protocol.messages import ecs
from services.cli import broker, keys
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until
from tests.e2e.test_broker_acl import blocking

pytestmark = pytest.mark.e2e
SVG = "{http://www.w3.org/2000/svg}"
ATTACH_SEQUENCE = ["Authenticate", "AuthenticateOk", "AttachInstanceRamRole", "GetRole", "GetRoleOk", "AssumeRole",
                   "GetRole", "GetRoleOk", "AssumeRoleOk", "RoleAssumed", "InstanceChanged", "RoleAttachedToInstance",
                   "InstanceCredentialsRefreshed", "AttachInstanceRamRoleOk"]
# the causal chain, in order; STS's RoleAssumed broadcast races ECS's push (two senders), so only its set place is checked
CHAIN = ["Authenticate", "AuthenticateOk", "AttachInstanceRamRole", "GetRole", "GetRoleOk", "AssumeRole", "AssumeRoleOk",
         "InstanceChanged", "RoleAttachedToInstance", "AttachInstanceRamRoleOk"]


def follows_chain(types: list[str]) -> bool:
    """``types`` holds exactly ATTACH_SEQUENCE's messages, and CHAIN's in CHAIN's order."""
    rest = iter(types)
    return sorted(types) == sorted(ATTACH_SEQUENCE) and all(any(t == want for t in rest) for want in CHAIN)


def ramsim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


async def test_trace_follows_an_attach_and_draws_it(make_cluster, tmp_path: Path) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1)
    await blocking(make_role, cluster, "TracedRole")
    described = await blocking(cluster.call, "ecs", "DescribeInstances", RegionId=cluster.file.region_id)
    instance_id = described["Instances"]["Instance"][0]["InstanceId"]
    url = await blocking(metadata_url, cluster, instance_id)
    recording = tmp_path / "attach.jsonl"
    follow = subprocess.Popen([sys.executable, "-m", "services.cli", "trace", "--follow", "--record", str(recording),
                               "--cluster-file", str(cluster.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stderr is not None
        line = await blocking(follow.stderr.readline)  # printed once the tap's subscription is acknowledged
        assert line.startswith("following the bus"), line + follow.stderr.read()
        answer = await blocking(cluster.call, "ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id,
                                RamRoleName="TracedRole", InstanceIds=json.dumps([instance_id]))
        doc = await blocking(wait_until, lambda: credentials(url, "TracedRole"), what="the role's credential")
        await blocking(wait_until, lambda: recording.exists() and b"AttachInstanceRamRoleOk" in recording.read_bytes(),
                       what="the attach's answer in the recording")
    finally:
        follow.send_signal(signal.SIGINT)
        out, err = await blocking(follow.communicate, timeout=30)
    assert "Traceback" not in err, err
    trace_id = answer["RequestId"].replace("-", "")[:16].lower()
    assert f"{trace_id[:8]}  " in out and "AttachInstanceRamRole" in out  # the followed lines

    done = ramsim("trace", str(recording), "--type", "AttachInstanceRamRole")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"trace {trace_id} ({len(ATTACH_SEQUENCE)} messages)", lines
    assert follows_chain([line.split()[4] for line in lines[1:]]), lines
    asked = next(line for line in lines if "gateway → ecs  AttachInstanceRamRole  " in line)
    assert "RamRoleName=TracedRole" in asked and instance_id in asked
    assert "ecs → metadata-host-1  InstanceChanged" in done.stdout

    mermaid = tmp_path / "attach.mmd"
    assert ramsim("trace", str(recording), "--trace-id", trace_id[:6], "--format", "mermaid", "--out", str(mermaid)).returncode == 0
    text = mermaid.read_text().splitlines()
    assert text[0] == "sequenceDiagram"
    assert [t.split(" as ")[1] for t in text if t.strip().startswith("participant")] == \
        ["gateway", "ram", "sts", "ecs", "metadata-host-1", "(events)"]
    assert follows_chain([t.split(": ", 1)[1].split()[0] for t in text if "->>" in t]), text

    done = ramsim("trace", str(recording), "--trace-id", trace_id, "--format", "svg")
    root = ET.fromstring(done.stdout)
    assert {g.get("data-node") for g in root.iter(SVG + "g") if g.get("class") == "lifeline"} == \
        {"gateway", "ram", "sts", "ecs", "metadata-host-1", "(events)"}
    assert follows_chain([g.get("data-type") or "" for g in root.iter(SVG + "g") if g.get("class") == "message"])

    everything = recording.read_text() + out + done.stdout + mermaid.read_text()
    for secret in (doc["AccessKeySecret"], doc["SecurityToken"], cluster.file.access_key_secret):
        assert secret not in everything
    # live without --follow: listen, then print each trace
    listen = subprocess.Popen([sys.executable, "-m", "services.cli", "trace", "--duration", "3", "--type", "ListRoles",
                               "--cluster-file", str(cluster.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert listen.stderr is not None
    line = await blocking(listen.stderr.readline)
    assert line.startswith("listening to the bus for 3 s"), line + listen.stderr.read()
    listed = await blocking(cluster.call, "ram", "ListRoles")
    out, err = await blocking(listen.communicate, timeout=30)
    assert listen.returncode == 0, err
    listed_trace = listed["RequestId"].replace("-", "")[:16].lower()
    assert out.splitlines()[0] == f"trace {listed_trace} (4 messages)", out
    assert [line.split()[4] for line in out.splitlines()[1:]] == ["Authenticate", "AuthenticateOk", "ListRoles", "ListRolesOk"]

    missing = ramsim("trace", str(recording), "--trace-id", "nope")
    assert missing.returncode == 2 and "no trace matches" in missing.stderr


async def test_the_tour_walks_every_step_and_shows_no_secret(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0, time_scale=300)
    # what must never show: every credential ECS pushes to the host (read as its agent), and the cluster's own keys
    pushed: list[ecs.InstanceCredentials] = []

    async def collect(topic: str, payload: bytes) -> None:
        body = codec.decode(payload).body
        if isinstance(body, ecs.InstanceChanged) and body.view.credentials is not None:
            pushed.append(body.view.credentials)

    agent = await MqttBus.connect(cluster.broker_url(broker.host_identity("host-1")), broker.tool_client_id("test-agent"),
                                  persistent=False)
    try:
        await agent.subscribe(topics.host_instances("host-1"), collect)
        tour = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "tour", "--auto", "--cluster-file",
                                                    str(cluster.path), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        out_bytes, err_bytes = await asyncio.wait_for(tour.communicate(), timeout=240)
    finally:
        await agent.close()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert tour.returncode == 0, out[-3000:] + err
    assert "Traceback" not in out + err and "UNEXPECTED" not in out

    for n in range(1, 11):  # every step, in order, each in the seed's words
        assert f"=== Step {n}:" in out
    positions = [out.index(f"=== Step {n}:") for n in range(1, 11)]
    assert positions == sorted(positions)
    assert out.count('The seed: "') == 9
    sections = {n: out[positions[n - 1]:positions[n] if n < 10 else len(out)] for n in range(1, 11)}
    assert "ramsim ram CreateRole --RoleName MyApplicationRole" in sections[1]
    assert "gateway → ram  CreateRole" in sections[1] and "RoleCreated" in sections[1]  # the bus messages of the call

    # the teaching moments
    refused = sections[5]
    assert "ERROR: InvalidUser.PassRoleForbidden" in refused
    assert "Decided by: none: no statement allows it (ImplicitDeny; ram:PassRole for SubUser ecs-intern-" in refused
    assert "ecs → ram  GetEffectivePolicies" in refused and "ecs ⇠ gateway  Error  Code=InvalidUser.PassRoleForbidden" in refused
    assert "sts ⇠ ecs  AssumeRoleOk" in sections[6] + sections[7] and "ecs → metadata-host-1  InstanceChanged" in sections[7]
    refresh = sections[8]
    assert "Teaching moment: the token expires at" in refresh and "ECS's timer started a trace of its own" in refresh
    assert "ecs → sts  AssumeRole" in refresh and "InstanceCredentialsRefreshed" in refresh
    old = refresh.split("the old credential (", 1)[1].split(",", 1)[0]
    new = refresh.split("the new credential (", 1)[1].split(",", 1)[0]
    assert old.startswith("STS.") and new.startswith("STS.") and old != new  # both answered GetCallerIdentity
    policy = sections[9]
    assert "ERROR: Forbidden.RAM" in policy and "Decided by: none: no statement allows it" in policy
    assert "PolicyDetachedFromRole" in policy and "PolicyAttachedToRole" in policy
    assert "allowed again: the same token" in policy
    detach = sections[10]
    assert "RoleDetachedFromInstance" in detach and "HTTP 404" in detach

    # and no secret
    state = keys.load(Path(cluster.file.state_dir))
    assert state is not None and pushed, "no credential was pushed while the tour ran"
    secrets = [c.access_key_secret for c in pushed] + [c.security_token for c in pushed] + \
        [cluster.file.access_key_secret, state.sts_signing_key, state.state_key, *state.broker_passwords.values()]
    leaked = [s for s in secrets if s and s in out + err]
    assert leaked == [], "secrets in the tour's transcript"
    assert '"AccessKeySecret": "****"' in out and '"SecurityToken": "****"' in out
    assert {c.access_key_id for c in pushed} >= {old, new}  # the ids it shows are the ones pushed
