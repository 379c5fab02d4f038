"""Broker identities and ACLs, proven by delivery against a real cluster (real Mosquitto, real
processes, the files ``ramsim up`` generates; with ``RAMSIM_TEST_BROKER=rabbitmq``, RabbitMQ's
MQTT plugin with the definitions ``ramsim up --broker`` imports).

RabbitMQ differs: it answers a forbidden PUBLISH or SUBSCRIBE by closing the connection, so there
the proof that a forbidden message was never routed is that the broker closed its connection
(it checks before routing; :func:`forbidden`), and the test goes on over a new connection.

Mosquitto drops a forbidden PUBLISH silently (the publisher still gets its PUBACK) and may
grant a SUBSCRIBE whose messages it will never deliver, so nothing here asserts on an
acknowledgement. Each test shows that a forbidden message never *arrives* (at a subscriber,
an agent, a service), next to a control that the same path does deliver what is allowed, so
every test can fail. "Never arrived" is bounded by ordering, not by sleeping: MQTT keeps the
order of one connection's messages to one subscriber, and each node handles its messages one
at a time, so an answer to a later message (a Ping, a real change) proves the earlier one
was not delivered.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.errors import Error
from protocol.messages import common, ecs, ram, sts
from protocol.messages.common import Ping, PingOk
from services.cli import broker
from services.cli.instances import instances
from services.cli.up import Cluster
from services.runtime.bus import BusError
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until

T = TypeVar("T")
Seen = list[tuple[str, bytes]]


async def connect(cluster: Cluster, identity: str, client_id: str) -> MqttBus:
    # ramsim-<identity>-…: on RabbitMQ an identity may only make queues for client ids of its own
    return await MqttBus.connect(cluster.broker_url(identity), f"{broker.CLIENT_ID_PREFIX}{identity}-{client_id}", persistent=False)


async def forbidden(cluster: Cluster, bus: MqttBus, identity: str, client_id: str, topic: str, payload: bytes) -> MqttBus:
    """Publish what the ACL forbids. Mosquitto drops it silently (the same connection goes on); RabbitMQ
    closes the connection before routing it: wait for that, and go on over a new one."""
    await bus.publish(topic, payload)
    if not cluster.external:
        return bus
    await eventually(lambda: not bus.connected, timeout=5, what=f"RabbitMQ to close {identity}'s connection for {topic}")
    await bus.close()
    return await connect(cluster, identity, client_id + "-again")


def collector(seen: Seen) -> Callable[[str, bytes], object]:
    async def collect(topic: str, payload: bytes) -> None:
        seen.append((topic, payload))
    return collect


async def eventually(probe: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Like ``wait_until``, but lets this process's bus clients run while it waits."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


def bodies(seen: Seen, kind: type[T]) -> list[T]:
    return [b for b in (codec.decode(p).body for _, p in seen) if isinstance(b, kind)]


def forged_envelope(src: str, dest: str, body: object) -> bytes:
    return codec.encode(Envelope(src=src, dest=dest, msg_id=int.from_bytes(os.urandom(6), "big"), body=body))  # type: ignore[arg-type]


async def blocking(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def log_events(cluster: Cluster, service: str) -> list[dict[str, object]]:
    lines = (Path(cluster.file.state_dir) / "logs" / f"{service}.log").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


# -- (a), (b): who may connect ---------------------------------------------------------------
async def test_only_the_clusters_identities_with_their_own_passwords_may_connect(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    at = cluster.endpoint
    assert at is not None
    refused = {
        "anonymous": at.url("x", "x").replace(f"{at.username('x')}:x@", ""),
        "wrong password": at.url("ram", "not-the-password"),
        "another identity's password": at.url("gateway", cluster.identities.passwords["ecs"]),
        "unknown user": at.url("intruder", cluster.identities.passwords["ram"]),
    }
    for what, url in refused.items():
        with pytest.raises(BusError, match="cannot connect"):
            await MqttBus.connect(url, f"ramsim-refused-{what.replace(' ', '-')}", persistent=False, timeout=5)
    if cluster.external:
        # control: the operator identity is answered on the bus (RabbitMQ: the files below are Mosquitto's)
        bus = await MqttBus.connect(cluster.file.broker_url, "ramsim-operator-acl", persistent=False)
        try:
            assert isinstance(await (await BusClient(bus, broker.OPERATOR, ScaledClock()).start()).request("ram", Ping()), PingOk)
        finally:
            await bus.close()
        return
    # control: the operator identity of the cluster file connects and is answered on the bus
    bus = await MqttBus.connect(cluster.file.broker_url, "ramsim-acl-operator", persistent=False)
    try:
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        assert isinstance(await client.request("ram", Ping()), PingOk)
    finally:
        await bus.close()
    conf = (Path(cluster.file.state_dir) / "mosquitto.conf").read_text().splitlines()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    for name in ("mosquitto.passwd", "mosquitto.acl"):
        assert (Path(cluster.file.state_dir) / name).stat().st_mode & 0o777 == 0o600


# -- (c): an agent's identity reads only its own host ------------------------------------------
async def test_an_agent_identity_never_receives_another_hosts_credentials(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0, hosts=2)
    make_role(cluster, "Pushed")
    cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, Amount="2")

    def one_per_host() -> dict[str, str] | None:
        placed = {i["HostId"]: i["InstanceId"] for i in instances(cluster.file) if i["MetadataUrl"]}
        return placed if len(placed) == 2 else None

    placed = await blocking(wait_until, one_per_host, what="an instance on each host")
    a, b = placed["host-1"], placed["host-2"]

    # a rogue client with metadata-host-1's credentials (its own client id) reaches for host-2 and everything
    rogue = await connect(cluster, "metadata-host-1", "rogue-agent")
    control = await connect(cluster, "metadata-host-1", "control-agent")
    stolen: Seen = []
    own: Seen = []
    granted = []
    try:
        for topic_filter in (topics.host_instances("host-2"), "#"):
            try:
                await rogue.subscribe(topic_filter, collector(stolen))  # Mosquitto 2.0.11 grants these; it filters on delivery
                granted.append(topic_filter)
            except BusError:  # a broker that refuses the SUBSCRIBE outright is as good (RabbitMQ: closing the connection)
                await rogue.close()
                rogue = await connect(cluster, "metadata-host-1", f"rogue-agent-{len(stolen)}-{topic_filter == '#'}")
        await control.subscribe(topics.host_instances("host-1"), collector(own))

        # B (host-2) first: once host-2's agent serves B's credential, the broker has routed that push
        cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName="Pushed", InstanceIds=json.dumps([b]))
        b_url = await blocking(metadata_url, cluster, b)
        b_secret = (await blocking(wait_until, lambda: credentials(b_url, "Pushed"), what="B's credential"))["AccessKeySecret"]
        # then A (host-1): the control subscription, same identity, receives A's push
        cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName="Pushed", InstanceIds=json.dumps([a]))
        pushed = await eventually(lambda: [c.view for c in bodies(own, ecs.InstanceChanged)
                                           if c.view.instance_id == a and c.view.credentials is not None],
                                  what="host-1's own push at the control subscription")
        assert pushed[0].host_id == "host-1"
        # '#' does deliver the rogue its own host's push of A, which ECS published after B's: by then
        # B's push, had the broker let the rogue read it, would already be here
        if "#" in granted:
            await eventually(lambda: [c for c in bodies(stolen, ecs.InstanceChanged) if c.view.instance_id == a and c.view.credentials],
                             what="A's push at the rogue's '#'")
        assert [t for t, _ in stolen if topics.matches(topics.host_instances("host-2"), t)] == []
        assert not any(b_secret.encode() in payload for _, payload in stolen)

        # nor can it ask ECS for host-2's views by registering as host-2 (ECS knows who is asking)
        client = await BusClient(rogue, "metadata-host-1", ScaledClock()).start()
        refused = await client.request("ecs", ecs.RegisterHost(host_id="host-2"))
        assert isinstance(refused, Error) and refused.code == "NoPermission", refused
        answered = await client.request("ecs", ecs.RegisterHost(host_id="host-1"))  # control: as itself, it is answered
        assert isinstance(answered, ecs.RegisterHostOk) and {v.instance_id for v in answered.instances} == {a}
    finally:
        await rogue.close()
        await control.close()


# -- (d): only ECS pushes to hosts ------------------------------------------------------------
def forged_view(cluster: Cluster, instance_id: str, generation: int) -> ecs.InstanceView:
    network = ecs.NetworkInterface(mac="00:16:3e:00:00:01", private_ip="172.16.0.9", network_interface_id="eni-forged",
                                   vpc_id="vpc-forged", vswitch_id="vsw-forged", vpc_cidr_block="172.16.0.0/12",
                                   vswitch_cidr_block="172.16.0.0/24", gateway="172.16.0.253", netmask="255.255.255.0")
    fake = ecs.InstanceCredentials(access_key_id="STS.FORGEDFORGEDFORGEDFORGED", access_key_secret="forged-secret",
                                   security_token="forged-token", expiration=4102444800.0, last_updated=0.0)
    return ecs.InstanceView(instance_id=instance_id, host_id="host-1", generation=generation, account_id=cluster.file.account_id,
                            region_id=cluster.file.region_id, zone_id=f"{cluster.file.region_id}-i", host_name="forged",
                            instance_type="ecs.g7.large", image_id="forged", serial_number="forged", network=network,
                            ram_role_name="Real", credentials=fake)


async def test_a_forged_instance_push_never_reaches_the_agent(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Real")
    answer = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName="Real")
    instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]
    url = await blocking(metadata_url, cluster, instance_id)
    real = await blocking(wait_until, lambda: credentials(url, "Real"), what="the real credential")
    forged = forged_envelope("ecs", "*", ecs.InstanceChanged(view=forged_view(cluster, instance_id, 10**9)))

    for identity in ("gateway", "operator"):
        bus = await connect(cluster, identity, f"forger-{identity}")
        try:
            bus = await forbidden(cluster, bus, identity, f"forger-{identity}", topics.instance("host-1", instance_id), forged)
            client = await BusClient(bus, identity, ScaledClock()).start()
            # nor as a direct message in its own name, on the agent's inbox (which any identity may write to)
            await bus.publish(topics.inbox("metadata-host-1", identity), forged_envelope(
                identity, "metadata-host-1", ecs.InstanceChanged(view=forged_view(cluster, instance_id, 10**9))))
            # the agent answers a later message from the same connection: the forged push, had the
            # broker delivered it, was handled before this Ping
            assert isinstance(await client.request("metadata-host-1", Ping()), PingOk)
        finally:
            await bus.close()
        assert credentials(url, "Real")["AccessKeyId"] == real["AccessKeyId"], identity

    # a later real change still arrives
    cluster.call("ecs", "DetachInstanceRamRole", RegionId=cluster.file.region_id, InstanceIds=json.dumps([instance_id]))
    await blocking(wait_until, lambda: credentials(url, "Real") is None, what="the detach to reach the agent")

    # control: the very same message published by ECS's identity is applied (so the test above can fail)
    bus = await connect(cluster, "ecs", "control-ecs")
    try:
        await bus.publish(topics.instance("host-1", instance_id), forged)
        served = await blocking(wait_until, lambda: credentials(url, "Real"), what="the ECS-published view")
        assert served["AccessKeyId"] == "STS.FORGEDFORGEDFORGEDFORGED"
    finally:
        await bus.close()


# -- (e): the envelope's src must be the topic's sender -----------------------------------------
async def test_a_direct_message_claiming_another_sender_is_dropped_by_the_receiver(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Trusting")  # trusts ecs.aliyuncs.com
    account = cluster.file.account_id
    service = common.Principal(identity_type="Service", account_id=account, arn="ecs.aliyuncs.com", principal_id="ecs.aliyuncs.com")
    assume = sts.AssumeRole(role_arn=f"acs:ram::{account}:role/Trusting", role_session_name="forged-session",
                            duration_seconds=3600, caller=service)
    observer = await connect(cluster, broker.OBSERVER, "acl-observer")
    bus = await connect(cluster, broker.OPERATOR, "acl-forger")
    minted: Seen = []
    try:
        await observer.subscribe(topics.events("sts"), collector(minted))  # STS announces every session it mints
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        # the operator identity publishes on its own from/operator topic, but the envelope claims ecs
        await bus.publish(topics.inbox("sts", broker.OPERATOR), forged_envelope("ecs", "sts", assume))
        # control: the same request, honestly from the operator, is read and refused (only the gateway
        # and a service acting as itself may name a caller)
        honest = await client.request("sts", assume)
        assert isinstance(honest, Error) and honest.code == "NoPermission" and "operator may not make API calls on behalf of others" in honest.message
        # STS received the forged message and dropped it (the broker delivered it: it was on an allowed topic)
        await blocking(wait_until, lambda: [e for e in log_events(cluster, "sts") if e.get("event") == "message_forged"
                                            and e.get("src") == "ecs" and e.get("body") == "AssumeRole"],
                       what="STS to log the forged message")
        # a real AssumeRole by ECS (an instance launched with the role) is announced; the forged one never was
        answer = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, RamRoleName="Trusting")
        instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]
        await eventually(lambda: [e for e in bodies(minted, sts.RoleAssumed) if e.session_name == instance_id],
                         what="the real RoleAssumed event")
        assert [e for e in bodies(minted, sts.RoleAssumed) if e.session_name == "forged-session"] == []
    finally:
        await bus.close()
        await observer.close()


# -- (f): only RAM publishes RAM events --------------------------------------------------------
async def test_only_rams_identity_can_publish_ram_events(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Watched")
    observer = await connect(cluster, broker.OBSERVER, "acl-observer")
    events: Seen = []
    try:
        await observer.subscribe(topics.events("ram"), collector(events))
        forged = forged_envelope("ram", "*", ram.PolicyAttachedToRole(policy_type="System", policy_name="AdministratorAccess",
                                                                      role_name="Forged", generation=10**9))
        for identity in ("gateway", "operator", "ecs", "metadata-host-1"):
            bus = await connect(cluster, identity, f"forger-{identity}")
            try:
                bus = await forbidden(cluster, bus, identity, f"forger-{identity}", topics.event("ram", "PolicyAttachedToRole"), forged)
                client = await BusClient(bus, identity, ScaledClock()).start()
                assert isinstance(await client.request("ram", Ping()), PingOk)  # the broker has routed the publish
            finally:
                await bus.close()
        # a real change is announced, after every forged one would have been
        cluster.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="Watched")
        await eventually(lambda: [e for e in bodies(events, ram.PolicyAttachedToRole) if e.role_name == "Watched"],
                         what="the real PolicyAttachedToRole event")
        assert [e for e in bodies(events, ram.PolicyAttachedToRole) if e.role_name == "Forged"] == []
        # control: RAM's own identity can publish there (so the assertion above can fail)
        bus = await connect(cluster, "ram", "control-ram")
        try:
            await bus.publish(topics.event("ram", "PolicyAttachedToRole"), forged)
            await eventually(lambda: [e for e in bodies(events, ram.PolicyAttachedToRole) if e.role_name == "Forged"],
                             what="RAM's identity's event at the observer")
        finally:
            await bus.close()
    finally:
        await observer.close()


# -- (g): dead letters: each node writes only its own, only the observer reads them -------------------
def letter(node: str, detail: str) -> common.DeadLetter:
    return common.DeadLetter(node=node, topic=topics.inbox(node, "nobody"), reason="forged", size=0, sha256="0" * 64, detail=detail)


async def test_dead_letters_are_written_by_their_node_alone_and_read_by_the_observer_alone(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    observer = await connect(cluster, broker.OBSERVER, "acl-observer")
    seen: Seen = []
    try:
        await observer.subscribe(topics.deadletters(), collector(seen))

        def letters(node: str, detail: str = "") -> list[common.DeadLetter]:
            return [d for t, d in ((t, codec.decode(p).body) for t, p in seen)
                    if t == topics.deadletter(node) and isinstance(d, common.DeadLetter) and detail in d.detail]

        # nobody else reads them: a snooper subscribed to every dead-letter topic (and to '#') sends RAM a message RAM
        # drops; RAM publishes its dead letter before it answers the snooper's next Ping, so by that answer the letter
        # would have reached the snooper, had the broker let it read there
        for identity in ("gateway", "operator", "ecs"):
            snooper = await connect(cluster, identity, f"snooper-{identity}")
            snooped: Seen = []
            try:
                for topic_filter in (topics.deadletters(), "#"):
                    try:
                        await snooper.subscribe(topic_filter, collector(snooped))
                    except BusError:  # refusing the SUBSCRIBE outright is as good (RabbitMQ: closing the connection)
                        await snooper.close()
                        snooper = await connect(cluster, identity, f"snooper-{identity}-{topic_filter == '#'}")
                client = await BusClient(snooper, identity, ScaledClock()).start()
                await snooper.publish(topics.inbox("ram", identity), b"\xc1 dropped by RAM")
                assert isinstance(await client.request("ram", Ping()), PingOk)
            finally:
                await snooper.close()
            assert [t for t, _ in snooped if topics.matches(topics.deadletters(), t)] == [], identity
            # control: the observer does receive that very letter
            await eventually(lambda: [d for d in letters("ram") if d.reason == "malformed" and d.topic == topics.inbox("ram", identity)],
                             what=f"RAM's dead letter for {identity}'s message at the observer")

        # nobody writes another's: a forger publishes on RAM's dead-letter topic, then on its own (allowed, and
        # delivered to the observer after the first, had the broker let the first through)
        for identity in ("gateway", "operator", "ecs"):
            forger = await connect(cluster, identity, f"forger-{identity}")
            try:
                forger = await forbidden(cluster, forger, identity, f"forger-{identity}", topics.deadletter("ram"),
                                         forged_envelope(identity, "*", letter("ram", f"forged by {identity}")))
                await forger.publish(topics.deadletter(identity), forged_envelope(identity, "*", letter(identity, f"own, from {identity}")))
                await eventually(lambda: letters(identity, f"own, from {identity}"), what=f"{identity}'s own dead letter at the observer")
            finally:
                await forger.close()
        assert letters("ram", "forged by") == []
        # control: RAM's identity can publish there (so the assertion above can fail)
        control = await connect(cluster, "ram", "control-ram")
        try:
            await control.publish(topics.deadletter("ram"), forged_envelope("ram", "*", letter("ram", "forged by ram's identity")))
            await eventually(lambda: letters("ram", "forged by ram's identity"), what="RAM's identity's letter at the observer")
        finally:
            await control.close()
    finally:
        await observer.close()


async def test_a_retained_publish_is_refused_and_never_delivered(make_cluster, broker_kind: str) -> None:  # noqa: ANN001
    if broker_kind != "mosquitto":
        pytest.skip("RabbitMQ 3.10 cannot refuse retained messages (no retain_available); the bus never sets the flag")
    cluster = await make_cluster(instances=0)
    observer = await connect(cluster, broker.OBSERVER, "acl-observer")
    seen: Seen = []
    try:
        await observer.subscribe(topics.events("ram"), collector(seen))
        topic = topics.event("ram", "Retained")
        retainer = await connect(cluster, "ram", "retainer")
        try:  # our bus never sets the flag; gmqtt can. Mosquitto (retain_available false) drops the client
            retainer._client.publish(topic, b"retained", qos=1, retain=True)
            await eventually(lambda: not retainer.connected, timeout=5, what="the broker to drop a retaining client")
        finally:
            await retainer.close()
        live = await connect(cluster, "ram", "live")  # control: the same identity, topic and observer, no retain flag
        try:
            await live.publish(topic, b"live")
            await eventually(lambda: [p for _, p in seen if p == b"live"], what="the live publish at the observer")
        finally:
            await live.close()
        assert [p for _, p in seen if p == b"retained"] == []
    finally:
        await observer.close()


async def test_every_node_refuses_a_forged_caller_the_same_way(make_cluster) -> None:  # noqa: ANN001
    """An API command naming a caller its sender may not claim (only the gateway speaks for
    callers): every node, a core's driver or a bus client (the gateway, OSS), answers
    NoPermission, logs ``caller_refused`` and records a ``caller_refused`` dead letter."""
    cluster = await make_cluster(instances=0)
    account = cluster.file.account_id
    root = common.Principal(identity_type="Account", account_id=account, arn=f"acs:ram::{account}:root", principal_id=account)
    nodes = ["ram", "sts", "ecs", "gateway", "oss", broker.host_identity("host-1")]
    observer = await connect(cluster, broker.OBSERVER, "refusal-observer")
    bus = await connect(cluster, broker.OPERATOR, "refusal-operator")
    letters: Seen = []
    try:
        await observer.subscribe(topics.deadletters(), collector(letters))
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        for node in nodes:
            refused = await client.request(node, ram.GetRole(role_name="Anything", caller=root), timeout=10)
            assert isinstance(refused, Error) and refused.code == "NoPermission", (node, refused)
            assert "operator may not make API calls on behalf of others" in refused.message
        seen = await eventually(lambda: (got := {d.node for d in bodies(letters, common.DeadLetter) if d.reason == "caller_refused"
                                                 and d.src == broker.OPERATOR and d.body == "GetRole"}) >= set(nodes) and got,
                                what="a caller_refused dead letter from every node")
        assert seen == set(nodes)
    finally:
        await bus.close()
        await observer.close()
    for node in nodes:
        assert [e for e in log_events(cluster, node) if e.get("event") == "caller_refused" and e.get("caller") == root.arn], node


# -- (h): a client id is bound to its identity: nobody takes a service's session ------------------
NODES = ("ram", "sts", "ecs", "gateway", "oss", "metadata-host-1")
TAKEOVER = "already connected, closing old connection"  # what Mosquitto logs (before its CONNACK) when it closes a session's holder


async def attempt(url: str, client_id: str) -> MqttBus | None:
    """Connect as a rogue would, resuming the session (clean start off); None when refused."""
    try:
        return await MqttBus.connect(url, client_id, timeout=5)
    except BusError as exc:
        assert "Not authorized" in str(exc), exc
        return None


async def test_no_identity_can_take_a_services_client_id(make_cluster, broker_kind: str) -> None:  # noqa: ANN001
    if broker_kind != "mosquitto":
        pytest.skip("Mosquitto's listeners and log; on RabbitMQ: test_no_identity_can_take_a_services_session_on_rabbitmq")
    cluster = await make_cluster(instances=0)
    broker_log = Path(cluster.file.state_dir) / "logs" / "mosquitto.log"
    ports = {"tools": cluster.broker_port, "services": cluster.services_port}
    accepted: list[tuple[str, str, str]] = []
    held: list[MqttBus] = []
    try:
        # every identity but a running service's own on the services listener (there it *is* that service)
        for rogue in (broker.OPERATOR, broker.OBSERVER, "gateway", "metadata-host-1", "ram"):
            for listener, port in ports.items():
                if listener == "services" and rogue in NODES:
                    continue
                for node in NODES:
                    for client_id in (broker.service_client_id(node), node):  # what a service sends, and what it is bound to
                        bus = await attempt(cluster.identities.url(rogue, "127.0.0.1", port), client_id)
                        if bus is not None:
                            await bus.close()  # (on the services listener the next attempt would take this one's id: its own)
                            accepted.append((rogue, listener, client_id))
                        taken = [n for n in NODES for held_as in (n, broker.service_client_id(n))
                                 if f"Client {held_as} {TAKEOVER}" in broker_log.read_text()]
                        assert taken == [], (rogue, listener, client_id)
        # a bare node name is refused everywhere (no prefix); the prefixed one is accepted, as someone else's id
        assert {c for _, _, c in accepted} == {broker.service_client_id(n) for n in NODES}
        assert len(accepted) == len(NODES) * (2 * 5 - 3)
        # every service is still connected: none lost its broker connection, each answers on the bus
        bus = await connect(cluster, broker.OPERATOR, "acl-pinger")
        held.append(bus)
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        for node in NODES:
            assert isinstance(await client.request(node, Ping()), PingOk), node
            assert [e for e in log_events(cluster, node) if e.get("event") == "broker_connection_lost"] == [], node
    finally:
        for bus in held:
            await bus.close()

    # control: OSS's own identity on the services listener does take OSS's session, whatever id it sends,
    # and OSS, knocked off, reconnects and answers again (so the assertions above can fail)
    control = await attempt(cluster.identities.url("oss", "127.0.0.1", ports["services"]), broker.tool_client_id("oss"))
    assert control is not None
    await control.close()
    assert f"Client oss {TAKEOVER}" in broker_log.read_text()
    await oss_reconnects_and_answers(cluster)


async def test_a_persistent_session_follows_the_identity_not_the_client_id_it_sends(make_cluster) -> None:  # noqa: ANN001
    """On the services listener a session is the identity's: a service restarted (any client id)
    gets what was published for it while it was away."""
    cluster = await make_cluster(instances=0)
    url = cluster.identities.url(broker.OBSERVER, "127.0.0.1", cluster.services_port)
    ids = [broker.tool_client_id(broker.OBSERVER), broker.tool_client_id(broker.OBSERVER)]
    if cluster.external:  # RabbitMQ: a session follows its client id, so a service's is derived from its password
        url = cluster.broker_url(broker.OBSERVER)
        ids = [broker.service_client_id(broker.OBSERVER, cluster.identities.passwords[broker.OBSERVER])] * 2
    seen: Seen = []
    first = await MqttBus.connect(url, ids[0])
    await first.subscribe(topics.events("ram"), collector(seen))
    await first.close()
    make_role(cluster, "WhileAway", "AliyunECSReadOnlyAccess")  # RAM announces the attach while the observer is away
    again = await MqttBus.connect(url, ids[1], hold=True)  # another client id (on Mosquitto)
    try:
        await again.subscribe(topics.events("ram"), collector(seen))
        again.open()
        await eventually(lambda: [e for e in bodies(seen, ram.PolicyAttachedToRole) if e.role_name == "WhileAway"],
                         what="the event published while the session's holder was away")
    finally:
        await again.close()


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
async def test_no_identity_can_take_a_services_session_on_rabbitmq(make_cluster) -> None:  # noqa: ANN001
    """RabbitMQ binds no client id to a username and takes any id, and a second connection with an
    id closes the first; a service's id is derived from its password, so no other identity can
    know it. Every rogue attempt (a service's plain ids, as every identity) is accepted and
    knocks nobody off; the control, OSS's own identity and derived id, does."""
    cluster = await make_cluster(instances=0)
    assert cluster.external and cluster.endpoint is not None and cluster.endpoint.vhost
    accepted = 0
    for rogue in (broker.OPERATOR, broker.OBSERVER, "gateway", "metadata-host-1", "ram"):
        for node in NODES:
            for client_id in (broker.service_client_id(node), node):
                bus = await attempt(cluster.broker_url(rogue), client_id)
                assert bus is not None, (rogue, client_id)  # RabbitMQ refuses no client id
                await bus.close()
                accepted += 1
    assert accepted == 5 * len(NODES) * 2
    bus = await connect(cluster, broker.OPERATOR, "acl-pinger")
    try:
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        for node in NODES:
            assert isinstance(await client.request(node, Ping()), PingOk), node
            assert [e for e in log_events(cluster, node) if e.get("event") == "broker_connection_lost"] == [], node
    finally:
        await bus.close()

    # control: OSS's identity with OSS's derived client id does take OSS's session (so the above can fail);
    # OSS, knocked off, reconnects and answers again
    oss_id = broker.service_client_id("oss", cluster.identities.passwords["oss"])
    control = await attempt(cluster.broker_url("oss"), oss_id)
    assert control is not None
    await blocking(wait_until, lambda: [e for e in log_events(cluster, "oss") if e.get("event") == "broker_connection_lost"],
                   what="OSS to lose its connection to the control")
    await control.close()
    await oss_reconnects_and_answers(cluster)


async def oss_reconnects_and_answers(cluster) -> None:  # noqa: ANN001
    """After a control took OSS's session: OSS reconnects by itself and answers a Ping again."""
    await blocking(wait_until, lambda: [e for e in log_events(cluster, "oss") if e.get("event") == "broker_reconnected"],
                   what="OSS to reconnect after the control took its session")
    bus = await connect(cluster, broker.OPERATOR, "acl-pinger-again")
    try:
        client = await BusClient(bus, broker.OPERATOR, ScaledClock()).start()
        assert isinstance(await client.request("oss", Ping()), PingOk)
    finally:
        await bus.close()
