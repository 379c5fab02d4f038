"""``ramsim app``, run as a user would (its own process) against a real cluster: credentials only
from its instance's metadata view, oss2 calls to OSS, every outcome counted and published on
the bus, where the ``observer`` identity sees it."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from protocol import codec, topics
from protocol.messages.app import AppCallCompleted
from services.cli import broker
from services.cli.up import Cluster
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until


async def eventually(probe, *, timeout: float = 15.0, what: str = "condition"):  # noqa: ANN001, ANN201
    """Like ``wait_until``, but lets this process's bus client run while it waits."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def instance_with_role(cluster: Cluster, role: str, *policies: str) -> str:
    make_role(cluster, role, *policies)
    launched = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName=role)
    instance_id = launched["InstanceIdSets"]["InstanceIdSet"][0]
    url = metadata_url(cluster, instance_id)
    wait_until(lambda: credentials(url, role), what="the role's credential at the instance")
    return instance_id


async def start_app(cluster: Cluster, instance_id: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "app", instance_id, "--cluster-file", str(cluster.path), "--output", "json",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    progress = [line for line in err.decode().splitlines() if " calls=" in line]
    assert progress, err.decode()  # the live progress line, at least once a second and at the end
    return json.loads(out)


async def observe(cluster: Cluster, events: list[AppCallCompleted]) -> MqttBus:
    observer = await MqttBus.connect(cluster.broker_url(broker.OBSERVER), f"ramsim-app-observer-{uuid.uuid4().hex[:6]}", persistent=False)

    async def collect(topic: str, payload: bytes) -> None:
        body = codec.decode(payload).body
        assert topic == topics.event("app", "AppCallCompleted") and isinstance(body, AppCallCompleted)
        events.append(body)

    await observer.subscribe(topics.events("app"), collect)
    return observer


async def test_the_app_calls_oss_with_its_instance_role_and_reports_every_call(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster()
    instance_id = await instance_with_role(cluster, "AppRole", "AliyunOSSFullAccess")
    events: list[AppCallCompleted] = []
    observer = await observe(cluster, events)
    try:
        summary = await finish(await start_app(cluster, instance_id, "--rate", "20", "--duration", "2.5"))
        assert summary["calls"] >= 20, summary
        assert summary["ok"] == summary["calls"] and summary["codes"] == {}, summary
        assert summary["by_operation"]["PutObject"]["ok"] >= 10 and summary["by_operation"]["GetObject"]["ok"] >= 10
        assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]
        assert summary["events_published"] == summary["calls"] and summary["events_failed"] == 0
        await eventually(lambda: len(events) >= summary["calls"], what="every call's event at the observer")
        assert len(events) == summary["calls"]
        assert {(e.instance_id, e.outcome) for e in events} == {(instance_id, "ok")}
        assert {e.operation for e in events} == {"PutObject", "GetObject"}
        assert all(e.request_id for e in events if e.operation == "PutObject")  # (OSS's streamed GetObject sends none yet)
    finally:
        await observer.close()


async def test_a_policy_detached_midway_turns_the_next_calls_into_denials_and_nothing_else(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster()
    instance_id = await instance_with_role(cluster, "AppRole", "AliyunOSSFullAccess")
    events: list[AppCallCompleted] = []
    observer = await observe(cluster, events)
    try:
        proc = await start_app(cluster, instance_id, "--rate", "20", "--duration", "4")
        await eventually(lambda: sum(e.outcome == "ok" for e in events) >= 5, what="the app's first ok calls")
        await asyncio.to_thread(cluster.call, "ram", "DetachPolicyFromRole", PolicyType="System",
                                PolicyName="AliyunOSSFullAccess", RoleName="AppRole")
        summary = await finish(proc)
        assert summary["ok"] >= 5 and summary["denied"] >= 10, summary
        assert summary["error"] == 0 and summary["expired"] == 0, summary
        assert set(summary["codes"]) == {"AccessDenied"}
        await eventually(lambda: len(events) >= summary["calls"], what="every call's event at the observer")
        outcomes = [e.outcome for e in events]
        # the detach applies at once and for good: every ok comes before the first denial
        first_denied = outcomes.index("denied")
        assert set(outcomes[:first_denied]) == {"ok"} and set(outcomes[first_denied:]) == {"denied"}
        assert {e.operation for e in events[first_denied:]} == {"PutObject", "GetObject"}
        assert all(e.code == "AccessDenied" and e.request_id for e in events[first_denied:])
    finally:
        await observer.close()
