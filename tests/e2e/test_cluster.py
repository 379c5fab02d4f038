"""End-to-end behaviour of a running cluster (real processes, real Mosquitto, real HTTP):
credential refresh as time passes, roles reaching running instances as events, and bad
input on every topic."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import msgpack

from protocol import codec, topics
from protocol.errors import Error
from protocol.messages.common import Ping, PingOk
from services.cli import api
from services.cli.up import Cluster
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import CREDENTIALS, as_session, credentials, make_role, metadata_url, wait_until
from services.cli.instances import read_metadata


def launch(cluster: Cluster, **params: str) -> str:
    answer = cluster.call("ecs", "RunInstances", RegionId=cluster.file.region_id, **params)
    return answer["InstanceIdSets"]["InstanceIdSet"][0]


async def test_credentials_refresh_before_expiry_and_the_old_one_stays_valid(make_cluster) -> None:  # noqa: ANN001
    # 600x: a 3600 s credential lasts 6 real seconds and is refreshed 1800 s (3 real s) early.
    cluster = await make_cluster(time_scale=600, instances=0, credential_lifetime=3600, refresh_before=1800)
    make_role(cluster, "Refreshing")
    instance_id = launch(cluster, RamRoleName="Refreshing")
    url = metadata_url(cluster, instance_id)
    first = wait_until(lambda: credentials(url, "Refreshing"), what="first credential")
    second = wait_until(lambda: (c := credentials(url, "Refreshing")) and c["AccessKeyId"] != first["AccessKeyId"] and c,
                        timeout=20, what="a refreshed credential")
    assert second["Expiration"] > first["Expiration"]
    assert second["LastUpdated"] >= first["LastUpdated"]
    # the overlap: the old credential still authenticates until its own expiry
    old = cluster.call("sts", "GetCallerIdentity", as_session(first))
    new = cluster.call("sts", "GetCallerIdentity", as_session(second))
    assert old["Arn"] == new["Arn"] == f"acs:ram::{cluster.file.account_id}:assumed-role/Refreshing/{instance_id}"
    # and once past its expiry it is refused
    def expired() -> bool:
        try:
            cluster.call("sts", "GetCallerIdentity", as_session(first))
            return False
        except api.ApiError as exc:
            return exc.code == "InvalidSecurityToken.Expired"
    wait_until(expired, timeout=20, what="the first credential to expire")
    assert credentials(url, "Refreshing")["Code"] == "Success"  # the instance never serves an expired one


async def test_role_attached_to_a_running_instance_reaches_it_as_an_event(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1, hosts=2)
    make_role(cluster, "Late")
    instance_id = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"][0]["InstanceId"]
    url = metadata_url(cluster, instance_id)
    assert read_metadata(url, CREDENTIALS)[0] == 404
    started = time.monotonic()
    answer = cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName="Late",
                          InstanceIds=json.dumps([instance_id]))
    assert (answer["TotalCount"], answer["FailCount"]) == (1, 0)
    assert answer["AttachInstanceRamRoleResults"]["AttachInstanceRamRoleResult"][0]["Code"] == "200"
    wait_until(lambda: read_metadata(url, CREDENTIALS) == (200, "Late"), timeout=5, what="the role at the metadata path")
    print(f"attach-to-visible: {(time.monotonic() - started) * 1000:.0f} ms")
    # an instance sees only its own credentials: a second instance on the other host has none
    other = launch(cluster)
    other_url = metadata_url(cluster, other)
    assert other_url != url
    assert read_metadata(other_url, CREDENTIALS)[0] == 404
    assert read_metadata(other_url, CREDENTIALS + "Late")[0] == 404


async def test_bad_messages_on_every_topic_are_answered_or_dropped_and_nothing_breaks(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1)
    make_role(cluster, "Survivor", "AliyunECSReadOnlyAccess")
    instance_id = launch(cluster, RamRoleName="Survivor")
    url = metadata_url(cluster, instance_id)
    before = wait_until(lambda: credentials(url, "Survivor"), what="credential")

    bus = await MqttBus.connect(cluster.file.broker_url, "ramsim-fuzzer", persistent=False)  # as the operator identity
    client = await BusClient(bus, "operator", ScaledClock()).start()
    answers: list[Error] = []

    async def collect(topic: str, payload: bytes) -> None:
        body = codec.decode(payload).body
        if isinstance(body, Error):
            answers.append(body)

    await bus.subscribe(topics.inbox_filter("operator"), collect)
    nodes = ["ram", "sts", "ecs", "gateway", "metadata-host-1"]
    garbage = [
        b"", b"\xc1", b"not msgpack", msgpack.packb([1, 2]), msgpack.packb({"src": "x"}),
        msgpack.packb({"src": "operator", "dest": "n", "msg_id": 1, "body": {"type": "CreateRole", "RoleName": 7}}),
        msgpack.packb({"src": "operator", "dest": "n", "msg_id": 2, "body": {"type": "Unknown"}}),
        b"\x00" * 300_000,  # oversized
    ]
    for node in nodes:
        for payload in garbage:
            await bus.publish(topics.inbox(node, "operator"), payload)
    # the identities the broker lets publish on the other topics (as anyone else, the broker drops it)
    for identity, topic in (("ecs", topics.instance("host-1", instance_id)), ("ram", topics.event("ram", "PolicyAttachedToRole")),
                            ("ecs", topics.events("ecs").replace("+", "x"))):
        publisher = await MqttBus.connect(cluster.broker_url(identity), f"ramsim-fuzzer-{identity}", persistent=False)
        for payload in garbage:
            await publisher.publish(topic, payload)
        await publisher.close()
    # Every node that could read a reply address answered with a typed error
    async with asyncio.timeout(10):
        while len(answers) < 2 * len(nodes):  # two addressable bad messages per node
            await asyncio.sleep(0.01)
    assert {a.code for a in answers} == {"InvalidParameter.Malformed"}
    # everyone is still up, and nothing changed
    for node in nodes:
        assert isinstance(await client.request(node, Ping()), PingOk), node
    await bus.close()
    assert cluster.call("ram", "GetRole", RoleName="Survivor")["Role"]["RoleName"] == "Survivor"
    assert credentials(url, "Survivor") == before
    assert cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["TotalCount"] == 2


async def test_a_policy_attached_takes_effect_on_the_very_next_call(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Empty")  # no policies yet
    instance_id = launch(cluster, RamRoleName="Empty")
    session = as_session(wait_until(lambda: credentials(metadata_url(cluster, instance_id), "Empty"), what="credential"))
    region = cluster.file.region_id
    try:
        cluster.call("ecs", "DescribeInstances", session, RegionId=region)
        raise AssertionError("allowed without a policy")
    except api.ApiError as exc:
        assert exc.code == "Forbidden.RAM"
        detail = exc.body["AccessDeniedDetail"]
        assert detail["AuthAction"] == "ecs:DescribeInstances" and detail["NoPermissionType"] == "ImplicitDeny"
    cluster.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="Empty")
    assert cluster.call("ecs", "DescribeInstances", session, RegionId=region)["TotalCount"] == 1  # the next call
    cluster.call("ram", "DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="Empty")
    try:
        cluster.call("ecs", "DescribeInstances", session, RegionId=region)
        raise AssertionError("still allowed after the detach")
    except api.ApiError as exc:
        assert exc.code == "Forbidden.RAM"


async def test_a_user_without_pass_role_is_allowed_after_one_attach(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Passable")
    cluster.call("ram", "CreateUser", UserName="ops")
    key = cluster.call("ram", "CreateAccessKey", UserName="ops")["AccessKey"]
    ops = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
    cluster.call("ram", "AttachPolicyToUser", PolicyType="System", PolicyName="AliyunECSFullAccess", UserName="ops")
    try:
        launch_as = cluster.call("ecs", "RunInstances", ops, RegionId=cluster.file.region_id, RamRoleName="Passable")
        raise AssertionError(f"allowed without ram:PassRole: {launch_as}")
    except api.ApiError as exc:
        assert exc.code == "InvalidUser.PassRoleForbidden"
        assert exc.body["AccessDeniedDetail"]["AuthAction"] == "ram:PassRole"
    explained = cluster.call("ram", "SimulatePrincipalPolicy", PrincipalType="User", PrincipalName="ops",
                             ActionName="ram:PassRole", ResourceName=f"acs:ram:*:{cluster.file.account_id}:role/Passable")
    assert explained["Decision"]["Allowed"] is False
    pass_role = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ram:PassRole", "Resource": "acs:ram:*:*:role/Passable"}]})
    cluster.call("ram", "CreatePolicy", PolicyName="PassPassable", PolicyDocument=pass_role)
    cluster.call("ram", "AttachPolicyToUser", PolicyType="Custom", PolicyName="PassPassable", UserName="ops")
    launched = cluster.call("ecs", "RunInstances", ops, RegionId=cluster.file.region_id, RamRoleName="Passable")
    assert launched["InstanceIdSets"]["InstanceIdSet"][0].startswith("i-")
    explained = cluster.call("ram", "SimulatePrincipalPolicy", PrincipalType="User", PrincipalName="ops",
                             ActionName="ram:PassRole", ResourceName=f"acs:ram:*:{cluster.file.account_id}:role/Passable")
    assert explained["Decision"]["Allowed"] is True
    assert explained["Decision"]["Matches"][0]["Policy"] == "Custom:PassPassable"


async def test_the_state_directory_and_everything_in_it_is_private(make_cluster, tmp_path) -> None:  # noqa: ANN001
    """ram.db, ecs.db, gateway.db and their -wal/-shm, the logs, the generated broker files, OSS's
    objects, keys.json: 0700 directories and 0600 files. What an earlier run left with looser
    modes is tightened when ``ramsim up`` opens the directory."""
    import oss2

    state = tmp_path / "cluster0"  # where make_cluster's first cluster lives
    (state / "logs").mkdir(parents=True, mode=0o755)
    (state / "logs" / "old.log").write_text("from an older ramsim\n")
    os.chmod(state / "logs", 0o755)
    os.chmod(state / "logs" / "old.log", 0o644)
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Private")
    instance_id = launch(cluster, RamRoleName="Private")
    wait_until(lambda: credentials(metadata_url(cluster, instance_id), "Private"), what="the role's credential")
    bucket = oss2.Bucket(oss2.Auth(cluster.file.access_key_id, cluster.file.access_key_secret), cluster.file.oss_url, "private-objects")
    await asyncio.to_thread(bucket.create_bucket)
    await asyncio.to_thread(bucket.put_object, "kept.txt", b"an object on disk")
    expected = {"keys.json", "ram.db", "ram.db-wal", "ecs.db", "gateway.db", "gateway.db-wal", "mosquitto.conf", "logs/ram.log",
                "logs/gateway.log", "logs/metadata-host-1.log", "logs/mosquitto.log", "logs/old.log", "oss", "mosquitto.db"}

    def made() -> set[str]:
        return {str(p.relative_to(state)) for p in state.rglob("*")}

    wait_until(lambda: expected <= made(), timeout=20, what=f"the state files (missing {expected - made()})")
    loose = {}
    for path in (state, *state.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            loose[str(path.relative_to(state))] = oct(mode)
    assert not loose, loose
    assert [p for p in (state / "oss").rglob("*") if p.is_file()]  # OSS's object (and its metadata) are among them
