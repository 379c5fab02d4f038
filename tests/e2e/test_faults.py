"""Faults injected into a running cluster (real processes, a real Mosquitto, real HTTP) while the
instance's metadata view is probed and writes keep coming; each run ends with the invariant
checker (:mod:`services.faults.invariants`) passing over the recorded history:

* kill -9 of every service in turn (ram, sts, ecs, gateway, oss, the metadata agent), each
  restarted by ``ramsim up``'s supervisor, under a stream of writes;
* a broker restart (kill -9 of Mosquitto), then ECS paused (SIGSTOP) past a refresh;
* STS unavailable (paused) across a refresh: the old credential keeps serving and the new one
  arrives before the old one expires;
* STS paused longer than the credential has left, three instances watched: no view serves it
  past its Expiration (each answers an error), and after SIGCONT a fresh one is served;
* a cluster stopped and resumed on its state directory: everything acknowledged is there;
* one request delivered twice (same sender, same msg id), across a kill -9 of RAM: answered
  twice with the same reply, done once;
* a signed API request replayed to a gateway restarted after a kill -9: still refused.

Time runs 600x: a 3600 s credential lasts 6 real seconds and is refreshed 1800 s (3 real
seconds) before it expires. A fault lasts as long as the experiment says (a pause past a
refresh is a timed wait by design); everything else waits on a condition with a bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.messages import ram as m
from protocol.messages.common import Principal
from services.cli import api
from services.cli.up import Cluster, Options, running_cluster
from services.faults.history import History, Probe
from services.faults.invariants import Bounds, Report
from services.faults.recorder import Recorder
from services.faults.soak import keep_writing, pause
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import credentials, make_role, metadata_url, wait_until
from tests.e2e.test_supervision import eventually, kill_and_wait_restart, operator, ping

SCALE, LIFETIME, REFRESH_BEFORE = 600, 3600, 1800
ROLE = "Resilient"
BOUNDS = Bounds(detach_bound=1.0, grace=2.0)
NODES = ("ram", "sts", "ecs", "gateway", "oss", "metadata-host-1")


async def fresh(make_cluster) -> tuple[Cluster, str]:  # noqa: ANN001
    cluster = await make_cluster(time_scale=SCALE, instances=1, credential_lifetime=LIFETIME, refresh_before=REFRESH_BEFORE)
    make_role(cluster, ROLE, "AliyunOSSReadOnlyAccess")
    instance_id = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"][0]["InstanceId"]
    return cluster, instance_id


async def serving(rec: Recorder, instance_id: str) -> Probe:
    attach = await rec.attach(instance_id, ROLE)
    assert attach.ok, attach
    return await rec.wait_for(lambda h: next((p for p in h.probes(instance_id) if p.status == 200), None),
                              what="the first credential")


async def read_back(rec: Recorder) -> None:
    users = (await rec.api("ram", "ListUsers", MaxItems="1000"))["Users"]["User"]
    rec.present("ram.User", [u["UserName"] for u in users])


async def healthy_refreshes(rec: Recorder, count: int) -> None:
    """Wait until the checker has seen ``count`` more credentials replaced in time."""
    start = rec.check(BOUNDS).summary("fresh_before_expiry").checked
    await rec.wait_for(lambda h: rec.check(BOUNDS).summary("fresh_before_expiry").checked >= start + count, timeout=30,
                       what=f"{count} more credential(s) replaced before expiry")


async def replacement(rec: Recorder, instance_id: str, current: Probe, what: str) -> Probe:
    """The first probe serving a credential other than ``current``'s."""
    return await rec.wait_for(lambda h: next((p for p in h.probes(instance_id) if p.status == 200
                                              and p.access_key_id != current.access_key_id), None), what=what)


def last_served(history: History, instance_id: str) -> Probe:
    """The last probe of ``instance_id`` that served a credential."""
    return [p for p in history.probes(instance_id) if p.status == 200][-1]


def passed(report: Report) -> Report:
    print(report.table())
    assert report.ok, report.table()
    return report


@pytest.mark.rabbitmq
async def test_kill_9_of_each_service_under_writes_keeps_every_invariant(make_cluster) -> None:  # noqa: ANN001
    cluster, instance_id = await fresh(make_cluster)
    bus, client = await operator(cluster, "faults")
    try:
        async with Recorder(cluster, interval=0.05) as rec:
            await serving(rec, instance_id)
            stop = asyncio.Event()
            writer = asyncio.create_task(keep_writing(rec, "w", stop, pause=0.02))
            for node in NODES:
                async with rec.fault("kill", node):
                    await kill_and_wait_restart(cluster, node)
                    await eventually(lambda: ping(client, node), timeout=20, what=f"the restarted {node} answers")
                    if node == "metadata-host-1":  # its view is back (on the same port, from ECS's view)
                        await rec.wait_for(lambda h: h.probes(instance_id)[-1].status == 200, what="the view serving again")
            await healthy_refreshes(rec, 2)
            stop.set()
            written = await writer
            detach = await rec.detach(instance_id, ROLE)
            assert detach.ok and detach.at_acknowledged is not None, detach
            await rec.wait_for(lambda h: any(p.at > detach.at_acknowledged + BOUNDS.detach_bound for p in h.probes(instance_id)),
                               what="probes past the detach bound")
            await read_back(rec)
        report = passed(rec.check(BOUNDS))
        assert cluster.restarts == {node: 1 for node in NODES}
        assert written > 20 and report.summary("acknowledged_writes_survive").checked > 10
        assert report.summary("never_serves_expired").checked > 50
        assert report.summary("detach_within_bound").checked == 1
    finally:
        await bus.close()


async def test_a_broker_restart_then_ecs_paused_past_a_refresh_keeps_every_invariant(make_cluster, broker_kind: str) -> None:  # noqa: ANN001
    if broker_kind != "mosquitto":
        pytest.skip("kills the Mosquitto `ramsim up` started; an external broker is not the cluster's to kill")
    cluster, instance_id = await fresh(make_cluster)
    bus, client = await operator(cluster, "broker")
    try:
        async with Recorder(cluster, interval=0.05) as rec:
            await serving(rec, instance_id)
            stop = asyncio.Event()
            writer = asyncio.create_task(keep_writing(rec, "b", stop, pause=0.02))
            async with rec.fault("kill", "mosquitto"):
                await kill_and_wait_restart(cluster, "mosquitto")
                for node in NODES:  # the operator's own bus reconnects by itself, as the services' do
                    await eventually(lambda: ping(client, node), timeout=20, what=f"{node} answers after the broker restart")
            await healthy_refreshes(rec, 1)

            current = rec.latest(instance_id)
            assert current is not None and current.status == 200
            refresh_at = current.expiration - REFRESH_BEFORE / SCALE  # wall clock
            async with rec.fault("pause", "ecs"):
                await pause(cluster, "ecs", max(0.0, refresh_at + 1.0 - time.time()))  # paused a second past its refresh
            # resumed, ECS refreshes at once: a new credential before the old one expires
            replaced = await replacement(rec, instance_id, current, "the overdue refresh")
            assert replaced.at < current.expiration
            await healthy_refreshes(rec, 1)
            stop.set()
            await writer
            await read_back(rec)
        passed(rec.check(BOUNDS))
    finally:
        await bus.close()


async def test_sts_paused_across_a_refresh_the_old_credential_serves_and_the_new_arrives_in_time(make_cluster) -> None:  # noqa: ANN001
    cluster, instance_id = await fresh(make_cluster)
    async with Recorder(cluster, interval=0.05) as rec:
        await serving(rec, instance_id)
        await healthy_refreshes(rec, 1)
        current = rec.latest(instance_id)
        assert current is not None and current.status == 200
        refresh_at = current.expiration - REFRESH_BEFORE / SCALE
        async with rec.fault("outage", "sts"):
            await asyncio.sleep(max(0.0, refresh_at - 0.5 - time.time()))
            await pause(cluster, "sts", max(0.0, refresh_at + 1.5 - time.time()))  # from 0.5 s before the refresh to 1.5 s after
            resumed = time.time()
        during = [p for p in rec.history.probes(instance_id) if refresh_at < p.at < resumed and p.status == 200]
        assert during and {p.access_key_id for p in during} == {current.access_key_id}  # the old one kept serving
        replaced = await replacement(rec, instance_id, current, "the refresh after STS returned")
        assert replaced.at < current.expiration  # caught up before the old credential expired
        await healthy_refreshes(rec, 1)
    passed(rec.check(BOUNDS))


async def test_sts_paused_past_the_credential_s_expiry_no_view_serves_it_expired(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(time_scale=SCALE, instances=3, credential_lifetime=LIFETIME, refresh_before=REFRESH_BEFORE)
    make_role(cluster, ROLE)
    ids = [i["InstanceId"] for i in cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"]]
    async with Recorder(cluster, interval=0.05) as rec:
        for instance_id in ids:
            await serving(rec, instance_id)
        sts = cluster.process("sts").proc
        async with rec.fault("outage", "sts"):
            sts.send_signal(signal.SIGSTOP)
            try:  # stopped until every view's newest credential has been expired for 2 s
                await rec.wait_for(lambda h: all(time.time() > last_served(h, i).expiration + 2.0 for i in ids), timeout=30,
                                   what="every view's credential expired for 2 s")
            finally:
                sts.send_signal(signal.SIGCONT)
            resumed = time.time()
        current = {instance_id: last_served(rec.history, instance_id) for instance_id in ids}
        for instance_id, old in current.items():
            past = [p for p in rec.history.probes(instance_id) if old.expiration < p.at < resumed]
            assert past and {p.status for p in past} == {503}, past  # never Success past its Expiration: an error
        for instance_id, old in current.items():  # SIGCONT: a fresh credential arrives, and Success resumes
            fresh_one = await rec.wait_for(lambda h: next((p for p in h.probes(instance_id) if p.at > resumed and p.status == 200), None),
                                           timeout=30, what=f"Success again on {instance_id}")
            assert fresh_one.access_key_id != old.access_key_id and fresh_one.expiration > fresh_one.at
    report = passed(rec.check(BOUNDS))
    assert report.summary("never_serves_expired").checked > 3 * 20 and report.summary("never_serves_expired").skipped == 0
    logged = (Path(cluster.file.state_dir) / "logs" / "metadata-host-1.log").read_text()
    for instance_id in ids:  # each run of refusals is logged once when it starts and once when it ends
        assert [line for line in logged.splitlines() if "credential_expired_unserved" in line and instance_id in line]
        assert [line for line in logged.splitlines() if "credential_available_again" in line and instance_id in line]


async def test_a_stopped_cluster_resumes_with_everything_it_acknowledged(tmp_path: Path) -> None:
    options = dict(state_dir=tmp_path / "state", log_format="json", time_scale=SCALE, credential_lifetime=LIFETIME,
                   refresh_before=REFRESH_BEFORE)
    document = '{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:GetObject","Resource":"*"}]}'
    async with running_cluster(Options(instances=1, **options)) as first:  # type: ignore[arg-type]
        make_role(first, ROLE, "AliyunOSSReadOnlyAccess")
        instance_id = first.call("ecs", "DescribeInstances", RegionId=first.file.region_id)["Instances"]["Instance"][0]["InstanceId"]
        first.call("ecs", "AttachInstanceRamRole", RegionId=first.file.region_id, RamRoleName=ROLE, InstanceIds=f'["{instance_id}"]')
        first.call("ram", "CreateUser", UserName="kept")
        first.call("ram", "CreatePolicy", PolicyName="Kept", PolicyDocument=document)
        first.call("ram", "AttachPolicyToUser", PolicyType="Custom", PolicyName="Kept", UserName="kept")
        key = first.call("ram", "CreateAccessKey", UserName="kept")["AccessKey"]
        url = metadata_url(first, instance_id)
        wait_until(lambda: credentials(url, ROLE), what="the role's credential")

    async with running_cluster(Options(instances=0, **options)) as again:  # type: ignore[arg-type]
        assert again.resumed
        [user] = again.call("ram", "ListUsers")["Users"]["User"]
        assert user["UserName"] == "kept"
        assert [p["PolicyName"] for p in again.call("ram", "ListPoliciesForUser", UserName="kept")["Policies"]["Policy"]] == ["Kept"]
        assert again.call("ram", "GetPolicy", PolicyType="Custom", PolicyName="Kept")["DefaultPolicyVersion"]["PolicyDocument"] == document
        # the user's AccessKey (its secret sealed at rest) still signs requests
        mine = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
        assert again.call("sts", "GetCallerIdentity", credential=mine)["Arn"].endswith(":user/kept")
        [instance] = again.call("ecs", "DescribeInstances", RegionId=again.file.region_id)["Instances"]["Instance"]
        assert instance["InstanceId"] == instance_id
        roles = again.call("ecs", "DescribeInstanceRamRole", RegionId=again.file.region_id, InstanceIds=f'["{instance_id}"]')
        assert [r["RamRoleName"] for r in roles["InstanceRamRoleSets"]["InstanceRamRoleSet"]] == [ROLE]
        assert metadata_url(again, instance_id) == url  # the restarted agent listens where it did
        assert wait_until(lambda: credentials(url, ROLE), what="the role's credential after the resume")["Code"] == "Success"
        for path in (again.path.parent / "ram.db", again.path.parent / "ecs.db"):
            assert key["AccessKeySecret"].encode() not in _raw(path)  # sealed at rest


def _raw(db: Path) -> bytes:
    wal = Path(f"{db}-wal")
    return db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_a_request_delivered_twice_is_done_once_even_across_a_kill_9(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    # Join as the gateway (the one identity that may speak for callers), as a second client.
    bus = await MqttBus.connect(cluster.broker_url("gateway"),
                                f"ramsim-gateway-test-dedupe-{os.getpid()}", persistent=False)
    answers: list[Envelope] = []
    try:
        client = BusClient(bus, "gateway", ScaledClock(cluster.file.time_scale, cluster.file.time_origin))
        await bus.subscribe(topics.inbox("gateway", "ram"), lambda topic, payload: _collect(answers, payload))
        await client.start()
        root = Principal(identity_type="Account", account_id=cluster.file.account_id,
                         arn=f"acs:ram::{cluster.file.account_id}:root", principal_id=cluster.file.account_id)
        env = client.envelope("ram", m.CreateUser(user_name="once", caller=root), trace_id="dedupe")
        await client.post(env)
        await eventually(lambda: _true(len(_to(answers, env)) >= 1), timeout=10, what="the first reply")
        await client.post(env)  # delivered again (as after a lost PUBACK)
        await eventually(lambda: _true(len(_to(answers, env)) >= 2), timeout=10, what="the second reply")
        await kill_and_wait_restart(cluster, "ram")
        await client.post(env)  # and again, to a RAM restarted from disk
        await eventually(lambda: _true(len(_to(answers, env)) >= 3), timeout=20, what="the reply from the restarted RAM")
        replies = _to(answers, env)
        assert all(isinstance(r.body, m.CreateUserOk) for r in replies)  # never EntityAlreadyExists: it ran once
        assert len({r.body.user.user_id for r in replies}) == 1  # type: ignore[union-attr]
        assert [u["UserName"] for u in cluster.call("ram", "ListUsers")["Users"]["User"]] == ["once"]
        assert "request_duplicate" in (Path(cluster.file.state_dir) / "logs" / "ram.log").read_text()
    finally:
        await bus.close()


def _to(answers: list[Envelope], request: Envelope) -> list[Envelope]:
    return [a for a in answers if a.in_reply_to == request.msg_id]


async def _collect(into: list[Envelope], payload: bytes) -> None:
    into.append(codec.decode(payload))


async def _true(value: bool) -> bool:
    return value


async def test_a_restarted_gateway_still_refuses_a_replayed_request(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    url = f"{cluster.file.gateway_url}/?" + api.signed_query("ram", "ListUsers", {}, cluster.credential)

    def send() -> tuple[int, dict]:
        try:
            with api.opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert (await asyncio.to_thread(send))[0] == 200
    await kill_and_wait_restart(cluster, "gateway")
    status, body = await eventually(lambda: asyncio.to_thread(send), timeout=20, what="the restarted gateway answering")
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")  # the window came back from gateway.db
