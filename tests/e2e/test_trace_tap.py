"""The trace tap against a real cluster (real Mosquitto with the ACLs ``ramsim up`` generates,
real processes): it sees a flow's messages grouped by trace id, it never yields a secret, and
its broker identity can write nothing.
"""

from __future__ import annotations

import json
import os

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.messages.common import Ping, PingOk
from protocol.trace import TraceEvent
from services.cli import broker
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from services.runtime.tap import Tap, cluster_url
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until
from tests.e2e.test_broker_acl import blocking, eventually


def _types(events: list[TraceEvent], trace_id: str) -> list[str]:
    return [e.type for e in events if e.trace_id == trace_id]


async def test_the_tap_sees_an_attach_by_trace_id_and_no_secret(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1)
    await blocking(make_role, cluster, "TapRole")
    instance_id = (await blocking(cluster.call, "ecs", "DescribeInstances", RegionId=cluster.file.region_id))["Instances"]["Instance"][0]["InstanceId"]
    url = await blocking(metadata_url, cluster, instance_id)
    seen: list[TraceEvent] = []
    async with Tap(cluster.broker_url(broker.TRACE)) as tap:
        assert tap.client_id.startswith(broker.CLIENT_ID_PREFIX + broker.TRACE + "-")
        await blocking(cluster.call, "ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName="TapRole",
                       InstanceIds=json.dumps([instance_id]))
        doc = await blocking(wait_until, lambda: credentials(url, "TapRole"), what="the role's credential")

        def attached() -> str:
            seen.extend(tap.drain())
            return next((e.trace_id for e in seen if e.type == "RoleAttachedToInstance"), "")

        try:
            trace_id = await eventually(attached, what="RoleAttachedToInstance at the tap")
        except AssertionError:
            raise AssertionError([(e.type, e.src, e.dest, e.trace_id) for e in seen]) from None
        # the gateway's request, ECS checking PassRole with RAM, assuming the role at STS, the push, the event, the answer
        types = _types(seen, trace_id)
        for expected in ("AttachInstanceRamRole", "AssumeRole", "AssumeRoleOk", "InstanceChanged", "RoleAttachedToInstance",
                         "AttachInstanceRamRoleOk"):
            assert expected in types, (expected, types)
        assert types.index("AttachInstanceRamRole") < types.index("AssumeRole") < types.index("AssumeRoleOk")
        assert types.index("AssumeRoleOk") < types.index("AttachInstanceRamRoleOk")
        first = next(e for e in seen if e.trace_id == trace_id and e.type == "AttachInstanceRamRole")
        assert first.src == "gateway" and first.dest == "ecs" and first.fields["RamRoleName"] == "TapRole"
        assert tap.malformed == 0
    text = repr(seen)
    for secret in (doc["AccessKeySecret"], doc["SecurityToken"], cluster.file.access_key_secret):
        assert secret not in text
    assert doc["AccessKeyId"] in text  # not secret: the tour shows which credential was pushed


async def test_the_trace_identity_writes_nothing(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    async with Tap(cluster.broker_url(broker.TRACE)) as tap:
        writer = await MqttBus.connect(cluster.broker_url(broker.TRACE), broker.tool_client_id(broker.TRACE), persistent=False)
        operator = await MqttBus.connect(cluster.file.broker_url, broker.tool_client_id(broker.OPERATOR), persistent=False)
        try:
            forged = Envelope(src=broker.TRACE, dest="ram", msg_id=int.from_bytes(os.urandom(6), "big"), body=Ping())
            await writer.publish(topics.inbox("ram", broker.TRACE), codec.encode(forged))
            for topic in (topics.event("ram", "Forged"), topics.deadletter(broker.TRACE), topics.control_applied(broker.TRACE)):
                await writer.publish(topic, codec.encode(forged))
            # one connection's packets are handled in order: once this SUBACK is back, the broker has
            # routed (or dropped) every PUBLISH above
            await writer.subscribe(topics.inbox(broker.TRACE, "ram"), lambda t, p: None)
            client = await BusClient(operator, broker.OPERATOR, ScaledClock()).start()
            assert isinstance(await client.request("ram", Ping()), PingOk)  # control: the operator is answered

            # the tap reads every topic on one connection, in the order the broker routes them: RAM's
            # answer to the operator is there, so an answer to the trace identity's earlier Ping would be too
            events: list[TraceEvent] = []

            def answered() -> bool:
                events.extend(tap.drain())
                return any(e.type == "PingOk" and e.dest == broker.OPERATOR for e in events)

            await eventually(answered, what="RAM's answer to the operator at the tap")
            assert [e for e in events if e.src == broker.TRACE or e.dest == broker.TRACE] == []
        finally:
            await writer.close()
            await operator.close()


async def test_a_tap_finds_its_identity_through_the_cluster_file(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    url = cluster_url(cluster.path)
    assert url == cluster.broker_url(broker.TRACE)
    async with Tap.for_cluster(cluster.path) as tap:
        client_bus = await MqttBus.connect(cluster.file.broker_url, broker.tool_client_id(broker.OPERATOR), persistent=False)
        try:
            client = await BusClient(client_bus, broker.OPERATOR, ScaledClock()).start()
            await client.request("ram", Ping())
            event = await tap.get(timeout=10)
            assert event is not None and event.type in ("Ping", "PingOk")
        finally:
            await client_bus.close()
