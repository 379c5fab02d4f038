"""Recovery paths of ``ramsim up``: a child killed with SIGKILL (a service, a metadata agent,
Mosquitto itself) is started again and the cluster answers again; a crash loop stops the
cluster with status 1 and no orphans; a state directory is resumed (same account, same root
AccessKey, same URLs) until ``--reset``. Real processes and a real Mosquitto; every wait is a
poll with a bound. The restart policy and the keys file's rules are tested first, without
processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path

import pytest

from protocol.messages.common import Ping, PingOk
from services.cli import api, keys
from services.cli.supervision import GiveUp, History, Restart, RestartPolicy, on_exit
from services.cli.up import Cluster, Options, UpError, running_cluster
from services.faults.soak import until as eventually
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.e2e.conftest import alive, load, metadata_url, ramsim_up, wait_until
from services.cli.instances import read_metadata



# -- the restart policy, pure ----------------------------------------------------------------

def exits(policy: RestartPolicy, uptimes: list[float], start: float = 1000.0) -> list[Restart | GiveUp]:
    """Decisions for a child that runs ``uptimes[i]`` seconds each time, restarted as told."""
    history, now, decisions = History(), start, []
    for uptime in uptimes:
        decision, history = on_exit(policy, history, started_at=now, exited_at=now + uptime)
        decisions.append(decision)
        now += uptime + (decision.delay if isinstance(decision, Restart) else 0)
    return decisions


def test_the_backoff_doubles_from_a_fifth_of_a_second_up_to_ten_seconds() -> None:
    policy = RestartPolicy(loop_limit=100)  # no crash loop here: only the schedule
    decisions = exits(policy, [0.1] * 9)
    assert [d.delay for d in decisions] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert [d.attempt for d in decisions] == list(range(1, 10))
    assert policy.delay(10_000) == 10.0  # no overflow however long the run


def test_a_child_that_stayed_up_thirty_seconds_starts_the_backoff_over() -> None:
    policy = RestartPolicy(loop_limit=100)
    decisions = exits(policy, [0.1, 0.1, 0.1, 30.5, 0.1, 29.5])
    assert [d.delay for d in decisions] == [0.2, 0.4, 0.8, 0.2, 0.4, 0.8]  # 29.5 s is not stable yet
    assert [d.attempt for d in decisions] == [1, 2, 3, 1, 2, 3]


def test_more_than_five_exits_within_sixty_seconds_is_a_crash_loop() -> None:
    policy = RestartPolicy()
    decisions = exits(policy, [0.1] * 6)
    assert all(isinstance(d, Restart) for d in decisions[:5])
    assert decisions[5] == GiveUp(exits=6, window=60.0)
    # the same six exits spread over more than a minute are six separate crashes, restarted each time
    spread = exits(policy, [12.0] * 6)
    assert all(isinstance(d, Restart) for d in spread)
    # and exits older than the window are forgotten: a slow crasher is restarted for ever
    assert all(isinstance(d, Restart) for d in exits(policy, [20.0] * 50))


def test_resume_refuses_another_account_and_a_smaller_time_scale() -> None:
    kept = keys.generate(account_id="1111222233334444", time_origin=1e9, time_scale=60, broker_port=1, gateway_port=2, oss_port=3)
    assert keys.resume_problem(kept, account_id="", time_scale=60) is None
    assert keys.resume_problem(kept, account_id="1111222233334444", time_scale=600) is None  # simulated time only jumps ahead
    assert "account 1111222233334444" in (keys.resume_problem(kept, account_id="9999888877776666", time_scale=60) or "")
    assert "--time-scale 60" in (keys.resume_problem(kept, account_id="", time_scale=1) or "")


def test_reset_deletes_only_what_ramsim_wrote(tmp_path: Path) -> None:
    ours = ["keys.json", "ram.db", "ram.db-wal", "ram.db-shm", "metadata-host-2.db", "oss/meta.sqlite3", "oss/blobs/ab", "oss/tmp/x"]
    theirs = ["notes.db", "logs/ram.log", "oss/README", "rams.db"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    deleted = keys.reset(tmp_path)
    assert sorted(deleted) == sorted(["keys.json", "ram.db", "ram.db-wal", "ram.db-shm", "metadata-host-2.db",
                                      "oss/meta.sqlite3", "oss/blobs", "oss/tmp"])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(theirs)
    assert keys.reset(tmp_path) == []


# -- a running cluster -------------------------------------------------------------------------

async def operator(cluster: Cluster, name: str) -> tuple[MqttBus, BusClient]:
    bus = await MqttBus.connect(cluster.broker_url(), f"ramsim-operator-test-supervision-{name}", persistent=False)
    return bus, await BusClient(bus, "operator", ScaledClock(cluster.file.time_scale, cluster.file.time_origin)).start()


async def ping(client: BusClient, node: str) -> PingOk | None:
    answer = await client.request(node, Ping(), timeout=0.5)
    return answer if isinstance(answer, PingOk) else None


async def kill_and_wait_restart(cluster: Cluster, name: str) -> int:
    """SIGKILL the child ``name``; wait until the supervisor started it again; its new pid."""
    child = cluster.process(name)
    old_pid, restarts = child.pid, cluster.restarts.get(name, 0)
    os.kill(old_pid, signal.SIGKILL)
    await eventually(lambda: _true(cluster.restarts.get(name, 0) == restarts + 1), timeout=10, what=f"{name} restarted")
    assert child.pid != old_pid and child.proc.returncode is None
    assert load(cluster.path).services[name] == child.pid  # the cluster file follows
    return child.pid


async def _true(value: bool) -> bool:
    return value


async def test_a_killed_service_and_metadata_agent_are_restarted_and_answer_again(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=1)
    bus, client = await operator(cluster, "services")
    try:
        before = await eventually(lambda: ping(client, "sts"), timeout=5, what="sts answers")
        await kill_and_wait_restart(cluster, "sts")
        after = await eventually(lambda: ping(client, "sts"), timeout=15, what="the restarted sts answers a Ping")
        assert after.started_at > before.started_at  # a new process answered
        assert cluster.restarts == {"sts": 1}
        # it does its job again: STS verifies for the gateway
        who = await eventually(lambda: asyncio.to_thread(cluster.call, "sts", "GetCallerIdentity"), timeout=15,
                               what="GetCallerIdentity through the restarted sts")
        assert who["AccountId"] == cluster.file.account_id

        instance_id = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"][0]["InstanceId"]
        await kill_and_wait_restart(cluster, "metadata-host-1")
        await eventually(lambda: ping(client, "metadata-host-1"), timeout=15, what="the restarted metadata agent answers a Ping")
        assert cluster.restarts == {"sts": 1, "metadata-host-1": 1}
        # the instance's metadata view serves again (the agent asked ECS for its host's instances)
        await eventually(lambda: asyncio.to_thread(
            lambda: read_metadata(metadata_url(cluster, instance_id), "/latest/meta-data/instance-id") == (200, instance_id)),
            timeout=20, what="the instance's metadata view")
    finally:
        await bus.close()


async def test_a_killed_mosquitto_comes_back_on_its_port_and_services_reconnect(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=0)
    cluster.call("ram", "CreateUser", UserName="survivor")
    port = cluster.broker_port
    await kill_and_wait_restart(cluster, "mosquitto")
    assert cluster.broker_port == port and f":{port}" in cluster.file.broker_url
    # the gateway, RAM and the bus between them work again, with what RAM held before
    users = await eventually(lambda: asyncio.to_thread(cluster.call, "ram", "ListUsers"), timeout=30,
                             what="ListUsers through the gateway after the broker restart")
    assert [u["UserName"] for u in users["Users"]["User"]] == ["survivor"]
    bus, client = await operator(cluster, "broker")  # the operator's password still works: same config
    try:
        for node in ("ram", "sts", "ecs", "gateway", "oss", "metadata-host-1"):
            await eventually(lambda: ping(client, node), timeout=15, what=f"{node} answers after the broker restart")
    finally:
        await bus.close()
    assert cluster.restarts == {"mosquitto": 1}


def test_ramsim_up_rides_out_a_crash_but_stops_on_a_crash_loop_leaving_no_orphans(tmp_path: Path) -> None:
    with ramsim_up(tmp_path / "state", "--instances", "0") as (proc, path):
        seen = set(load(path).services.values())
        for kill in range(1, 7):  # six SIGKILLs of ecs, each after the restart of the one before
            pid = load(path).services["ecs"]
            os.kill(pid, signal.SIGKILL)
            if kill < 6:
                wait_until(lambda: load(path).services["ecs"] != pid, timeout=15, what=f"ecs restarted ({kill})")
                assert proc.poll() is None, "ramsim up stopped after one crash"
                seen |= set(load(path).services.values())
        assert proc.wait(30) == 1
        err = proc.stderr.read() if proc.stderr else ""
    assert "ecs (pid" in err and "was killed by SIGKILL; restarting it in 0.2 s (attempt 1)" in err
    assert "restarting it in 3.2 s (attempt 5)" in err
    assert "ecs was killed by SIGKILL: 6 exits within 60 s is a crash loop, so the cluster stops" in err
    assert len(seen) == 8 + 5  # mosquitto, five services, the console and an agent, and five restarted ecs
    wait_until(lambda: not any(alive(pid) for pid in seen), timeout=10, what="every child ever started to be gone")
    assert not path.exists()


async def test_a_state_dir_is_resumed_until_reset(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with running_cluster(Options(state_dir=state, instances=0)) as first:
        old = first.file
        assert not first.resumed
        with pytest.raises(UpError, match="another `ramsim up`"):  # one cluster per state dir
            async with running_cluster(Options(state_dir=state, instances=0)):
                pass
        kept = json.loads((state / "keys.json").read_text())
        # every service, and only services, gets the state key; only STS the signing key
        assert all(p.env["RAMSIM_STATE_KEY"] == kept["StateKey"] for p in first.processes if p.name != "mosquitto")
        assert first.process("sts").env["RAMSIM_STS_SIGNING_KEY"] == kept["StsSigningKey"]
        assert not {"RAMSIM_STATE_KEY", "RAMSIM_STS_SIGNING_KEY", "RAMSIM_ROOT_ACCESS_KEY_SECRET"} & set(first.process("mosquitto").env)
        assert "RAMSIM_STS_SIGNING_KEY" not in first.process("ram").env
    assert stat.S_IMODE((state / "keys.json").stat().st_mode) == 0o600
    assert kept["AccountId"] == old.account_id and kept["RootAccessKeyId"] == old.access_key_id
    assert len(bytes.fromhex(kept["StateKey"])) == 32 and len(bytes.fromhex(kept["StsSigningKey"])) == 32
    assert kept["TimeOrigin"] == old.time_origin

    async with running_cluster(Options(state_dir=state, instances=0)) as second:
        assert second.resumed
        new = second.file
        assert (new.account_id, new.access_key_id, new.time_origin) == (old.account_id, old.access_key_id, old.time_origin)
        assert (new.broker_url, new.gateway_url, new.oss_url) == (old.broker_url, old.gateway_url, old.oss_url)  # ports were free
        old_root = api.Credential(old.access_key_id, old.access_key_secret)
        assert "Users" in second.call("ram", "ListUsers", old_root)  # the old root AccessKey still works
    assert stat.S_IMODE((state / "keys.json").stat().st_mode) == 0o600

    with ramsim_up(state, "--instances", "0", "--reset") as (proc, path):
        fresh = load(path)
        assert fresh.account_id != old.account_id and fresh.access_key_id != old.access_key_id
        with pytest.raises(api.ApiError) as refused:
            api.call(fresh.gateway_url, "ram", "ListUsers", {}, old_root)
        assert refused.value.code == "InvalidAccessKeyId.NotFound"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        err = proc.stderr.read() if proc.stderr else ""
    assert f"--reset: deleted the previous cluster's state in {state.resolve()} (keys.json" in err
    assert json.loads((state / "keys.json").read_text())["AccountId"] == fresh.account_id
