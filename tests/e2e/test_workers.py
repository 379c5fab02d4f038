"""Stateless workers: ``ramsim up --sts-workers N`` runs STS as N processes sharing its inbox with a
shared subscription (``$share/sts/…``, Mosquitto 2 for MQTT 5 clients). Real processes, a real
Mosquitto, real HTTP.

A Ping is answered by one worker, and the answer's ``started_at`` says which (each process
started at its own time): a run of Pings is shared between them. AssumeRole (ECS asks STS, STS
asks RAM twice) works through the workers, so each worker's own requests get their replies. A
worker killed and kept down (the supervisor's first restart set far off) leaves its share to the
other: every request is still answered, all by the live worker.
"""

from __future__ import annotations

import pytest

import asyncio
import json
import os
import signal

from protocol import topics
from protocol.messages.common import Ping, PingOk
from services.cli import broker, supervision
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import alive, credentials, make_role, metadata_url, wait_until

WORKERS = 2


async def pings(client: BusClient, count: int) -> list[float]:
    """Who answered ``count`` Pings to ``sts``, one after another (their ``started_at``)."""
    answered = []
    for _ in range(count):
        answer = await client.request("sts", Ping(), timeout=5)
        assert isinstance(answer, PingOk), answer
        answered.append(answer.started_at)
    return answered


async def test_sts_workers_share_the_load_and_a_killed_one_leaves_it_to_the_other(make_cluster, broker_options) -> None:  # noqa: ANN001
    if broker_options.get("broker"):
        pytest.skip("--sts-workers needs shared subscriptions, which RabbitMQ 3.10 lacks (ramsim up refuses it)")
    far_off = supervision.RestartPolicy(first_delay=600.0, max_delay=600.0)  # a killed worker stays down
    cluster = await make_cluster(instances=0, sts_workers=WORKERS, restart_policy=far_off)
    names = [broker.worker_identity("sts", k) for k in range(1, WORKERS + 1)]
    assert sorted(p.name for p in cluster.processes if p.name.startswith("sts")) == names
    acl = (cluster.file.state_dir + "/mosquitto.acl")
    assert "user sts-2" in open(acl).read()

    bus = await MqttBus.connect(cluster.broker_url(), broker.tool_client_id(broker.OPERATOR), persistent=False)
    try:
        client = await BusClient(bus, broker.OPERATOR, ScaledClock(cluster.file.time_scale, cluster.file.time_origin)).start()
        replies: list[bytes] = []

        async def collect(topic: str, payload: bytes) -> None:
            replies.append(payload)
        await bus.subscribe(topics.inbox_filter(broker.OPERATOR), collect)
        shared = await pings(client, 20)
        assert len(set(shared)) == WORKERS, shared  # both workers answered
        # each Ping reached one worker: one answer each (a plain subscription would have both answer)
        assert await asyncio.to_thread(wait_until, lambda: len(replies) >= 20, what="the answers") and len(replies) == 20
        assert min(shared.count(w) for w in set(shared)) >= 5, shared  # and neither took (almost) all

        # AssumeRole through the workers: STS's own requests to RAM come back to the worker that made them
        make_role(cluster, "Shared", "AliyunOSSReadOnlyAccess")
        answer = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName="Shared", Amount="4")
        launched = answer["InstanceIdSets"]["InstanceIdSet"]
        for instance_id in launched:
            url = await asyncio.to_thread(metadata_url, cluster, instance_id)
            doc = await asyncio.to_thread(wait_until, lambda: credentials(url, "Shared"), what=f"{instance_id}'s credential")
            assert doc["AccessKeyId"].startswith("STS.")

        # kill -9 one worker and keep it down: the other answers every request
        victim = cluster.process(names[0])
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: not alive(victim.pid), what="the killed worker to be gone")
        survivors = await pings(client, 10)
        assert len(set(survivors)) == 1 and set(survivors) < set(shared), (survivors, shared)
        more = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName="Shared")
        instance_id = more["InstanceIdSets"]["InstanceIdSet"][0]
        url = await asyncio.to_thread(metadata_url, cluster, instance_id)
        assert await asyncio.to_thread(wait_until, lambda: credentials(url, "Shared"), what="a credential with one worker down")
    finally:
        await bus.close()
    listed = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id, InstanceIds=json.dumps(launched))
    assert {i["InstanceId"] for i in listed["Instances"]["Instance"]} == set(launched)
