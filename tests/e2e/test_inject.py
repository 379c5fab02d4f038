"""Live faults on a real cluster (real processes, a real Mosquitto): each seen to act, then to heal.

* process: SIGSTOP of STS (no answer) .. SIGCONT; kill -9 of STS and of the broker, SIGTERM of
  ECS, each restarted by the supervisor;
* link (the metadata agent's proxy to the broker): latency, partition, reset;
* message (at the sender's bus): drop, delay, duplicate, corrupt and reorder of STS's PingOk;
* API: STS answering Throttling.User, RAM answering ServiceUnavailable;
* clock: STS's clock an hour ahead; one instance's clock ten minutes ahead, as its agent serves it;
* every fault still active when the injector closes is healed, also when the block raises.

The probe is the operator's Ping (one bus round trip through the node's real driver) or an API
call through the gateway; a Ping with no answer waits its own 0.5 s timeout, nothing else sleeps.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.messages.common import Ping, PingOk
from protocol.times import parse_iso
from services.cli import api, broker
from services.cli.supervision import RestartPolicy
from services.cli.up import Options, UpError, running_cluster
from services.experiment.inject import Injector
from services.experiment.proxy import Toxics
from services.faults.history import Fault
from services.faults.recorder import Recorder
from services.faults.soak import until
from services.runtime import chaos
from services.runtime.bus import BusError
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until

AGENT = "metadata-host-1"


async def ping(faults: Injector, node: str, timeout: float = 0.5) -> float | None:
    """Seconds for ``node`` to answer a Ping, or None without an answer in ``timeout``."""
    assert faults.operator.client is not None
    started = time.monotonic()
    answer = await faults.operator.client.request(node, Ping(), timeout=timeout)
    return time.monotonic() - started if isinstance(answer, PingOk) else None


async def answers(faults: Injector, node: str) -> bool:
    return await until(lambda: ping(faults, node), timeout=20, what=f"{node} answering") is not None


async def test_process_and_link_faults_act_and_heal(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0, proxies=(AGENT,), restart_policy=RestartPolicy(loop_limit=100))
    proxy = cluster.proxies[AGENT]
    async with Recorder(cluster) as rec, Injector(cluster, rec, seed=3) as faults:
        await faults.pause("stop", "sts")
        assert await ping(faults, "sts") is None
        await faults.heal("stop")
        await answers(faults, "sts")

        for fault_id, kind, target in (("k", "kill", "sts"), ("t", "restart", "ecs"), ("b", "kill", "broker")):
            await getattr(faults, kind)(fault_id, target)
            await faults.heal(fault_id)  # back: restarted by the supervisor, every node answering
        assert cluster.restarts == {"sts": 1, "ecs": 1, "mosquitto": 1}

        plain = await until(lambda: ping(faults, AGENT), timeout=10, what="the agent answering")
        await faults.link("slow", AGENT, Toxics(latency=0.2))
        assert await ping(faults, AGENT, timeout=5) >= 0.4  # the request in, the answer out
        await faults.heal("slow")
        assert await ping(faults, AGENT, timeout=5) < 0.4 + plain

        await faults.link("cut", AGENT, Toxics(partition=True))
        assert await ping(faults, AGENT) is None
        await faults.heal("cut")
        await answers(faults, AGENT)  # what the partition held is delivered

        connections = proxy.stats.connections
        await faults.link("rst", AGENT, Toxics(), reset=True)
        assert proxy.stats.resets == 1
        await faults.heal("rst")
        await until(lambda: _true(proxy.stats.connections > connections), timeout=20, what="the agent reconnecting")
        await answers(faults, AGENT)
    windows = rec.history.of(Fault)
    assert [(w.kind, w.target) for w in windows] == [("pause", "sts"), ("kill", "sts"), ("restart", "ecs"),
                                                      ("kill", "mosquitto"), ("link", AGENT), ("link", AGENT), ("link", AGENT)]
    assert all(w.end is not None and w.end >= w.start for w in windows)
    assert set(faults.healed) == {"stop", "k", "t", "b", "slow", "cut", "rst"}


async def test_only_the_operator_sets_faults_and_each_node_reads_only_its_own(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    forger = await MqttBus.connect(cluster.broker_url("ram"), broker.tool_client_id("ram"), persistent=False)
    seen: list[bytes] = []
    try:
        throttled = chaos.Faults(version=1000, api=[chaos.ApiFault(id="forged", throttle=1.0)])
        await forger.publish(topics.control("sts"), chaos.encode(throttled))  # ram may not: the broker drops it
        try:
            await forger.subscribe(topics.control("sts"), lambda topic, payload: _append(seen, payload))
        except BusError:
            pass  # refused outright: as good as reading nothing
        async with Injector(cluster) as faults:
            await faults.api_errors("real", "sts", throttle=1.0)  # the operator's, acknowledged by sts itself
            assert faults.applied["sts"] == 1  # not 1000: the forged state never reached sts
            with pytest.raises(api.ApiError, match="Throttling.User"):
                await asyncio.to_thread(cluster.call, "sts", "GetCallerIdentity")
        assert seen == []  # ram never read what was sent to sts
        await asyncio.to_thread(cluster.call, "sts", "GetCallerIdentity")  # healed on the way out
    finally:
        await forger.close()


async def _append(into: list[bytes], payload: bytes) -> None:
    into.append(payload)


async def test_a_proxy_for_no_such_child_is_refused(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(UpError, match="--proxy nope: not a child of this cluster"):
        async with running_cluster(Options(state_dir=tmp_path, instances=0, proxies=("nope",))):
            pass


async def test_message_api_and_clock_faults_act_and_heal(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1)
    make_role(cluster, "Skewed")
    [instance] = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"]
    instance_id = instance["InstanceId"]
    cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName="Skewed",
                 InstanceIds=f'["{instance_id}"]')
    url = metadata_url(cluster, instance_id)
    served = wait_until(lambda: credentials(url, "Skewed"), what="the role's credential")
    async with Injector(cluster, seed=5) as faults:
        client = faults.operator.client
        assert client is not None and faults.operator.bus is not None
        from_sts: list[Envelope] = []

        async def raw(topic: str, payload: bytes) -> None:
            if topic == topics.inbox("operator", "sts"):
                from_sts.append(codec.decode(payload))

        await faults.operator.bus.subscribe(topics.inbox_filter("operator"), raw)
        assert await ping(faults, "sts") is not None

        await faults.message("drop", nodes=["sts"], types=["PingOk"], drop=1.0)
        assert await ping(faults, "sts") is None
        assert await ping(faults, "ram") is not None  # other nodes, other types: untouched
        await faults.heal("drop")
        assert await ping(faults, "sts") is not None

        await faults.message("slow", nodes=["sts"], types=["PingOk"], delay=0.4)
        assert await ping(faults, "sts", timeout=5) >= 0.4
        await faults.heal("slow")

        unexpected = client.unexpected
        await faults.message("twice", nodes=["sts"], types=["PingOk"], duplicate=1.0)
        assert await ping(faults, "sts") is not None
        await until(lambda: _true(client.unexpected > unexpected), timeout=5, what="the second copy of the answer")
        await faults.heal("twice")

        await faults.message("flip", nodes=["sts"], topics=[topics.inbox("operator", "sts")], corrupt=1.0)
        odd = client.malformed + client.unexpected
        answered = [await ping(faults, "sts") for _ in range(5)]
        assert None in answered and client.malformed + client.unexpected > odd  # what arrived was not the answer sent
        await faults.heal("flip")

        await faults.message("swap", nodes=["sts"], types=["PingOk"], reorder=1.0)
        finished: list[str] = []

        async def named(name: str) -> None:
            assert await ping(faults, "sts", timeout=5) is not None
            finished.append(name)

        await asyncio.gather(named("first"), named("second"))
        assert finished == ["second", "first"]  # the first answer was held until the second had gone
        await faults.heal("swap")

        await faults.api_errors("busy", "sts", throttle=1.0)
        with pytest.raises(api.ApiError) as throttled:
            await asyncio.to_thread(cluster.call, "sts", "GetCallerIdentity")
        assert (throttled.value.code, throttled.value.status) == ("Throttling.User", 400)
        assert throttled.value.message == "Request was denied due to user flow control."
        await faults.api_errors("down", "ram", error_5xx=1.0)
        with pytest.raises(api.ApiError) as unavailable:
            await asyncio.to_thread(cluster.call, "ram", "ListUsers")
        assert (unavailable.value.code, unavailable.value.status) == ("ServiceUnavailable", 503)
        await faults.heal("busy")
        await faults.heal("down")
        assert (await asyncio.to_thread(cluster.call, "sts", "GetCallerIdentity"))["AccountId"] == cluster.file.account_id
        await asyncio.to_thread(cluster.call, "ram", "ListUsers")

        await faults.clock_skew("ahead", "sts", 3600.0)
        from_sts.clear()
        assert await ping(faults, "sts") is not None
        assert abs(from_sts[-1].sent_at - (client.clock.now() + 3600)) < 60
        await faults.heal("ahead")
        assert await ping(faults, "sts") is not None
        assert abs(from_sts[-1].sent_at - client.clock.now()) < 60

        await faults.clock_skew("instance", AGENT, 600.0, instance_id=instance_id)
        skewed = wait_until(lambda: credentials(url, "Skewed"), what="the credential as the skewed instance reads it")
        assert skewed["AccessKeyId"] == served["AccessKeyId"]
        assert parse_iso(skewed["Expiration"]) == parse_iso(served["Expiration"]) - 600
        await faults.pause("left-open", "ecs")  # not healed by the test: the injector heals it on the way out
        with pytest.raises(RuntimeError):
            async with Injector(cluster) as inner:
                await inner.pause("inner", "ram")
                raise RuntimeError("the experiment failed")
        assert inner.healed.keys() == {"inner"} and await ping(faults, "ram") is not None
    assert faults.healed.keys() >= {"instance", "left-open"}
    assert credentials(url, "Skewed")["Expiration"] == served["Expiration"]
    assert cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["TotalCount"] == 1  # ECS continued


async def _true(value: bool) -> bool:
    return value
