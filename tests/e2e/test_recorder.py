"""The Recorder against a real cluster (real processes, Mosquitto, HTTP): it probes an instance's
metadata view, sees the bus's events as the observer, records an attach, credential refreshes
under scaled time, a SIGSTOPped metadata agent as a fault window, a write, the workload's calls
and a detach; the checker then finds every invariant kept, each checked at least once."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from services.cli.main import main
from services.cli.up import Cluster
from services.faults.history import NO_ANSWER, Call, Event, Fault, History, decode_jsonl
from services.faults.invariants import Bounds, check
from services.faults.recorder import Recorder, loopback
from services.ram.policy import ECS_TRUST_POLICY
from tests.e2e.conftest import make_role

ROLE = "Recorded"
BOUNDS = Bounds(detach_bound=1.0, grace=2.0)


def agent(cluster: Cluster, host: str = "host-1"):  # noqa: ANN201
    return next(p.proc for p in cluster.processes if p.name == f"metadata-{host}")


async def run_app(cluster: Cluster, instance_id: str, *args: str) -> dict:
    """``ramsim app`` on the instance, as a user runs it; its JSON summary."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "app", instance_id, "--cluster-file", str(cluster.path), "--output", "json",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def credential_probes(history: History, instance_id: str) -> list:  # noqa: ANN201
    return [p for p in history.probes(instance_id) if p.status == 200]


async def test_a_recorded_run_keeps_every_invariant(make_cluster, tmp_path) -> None:  # noqa: ANN001
    # 600x: a 3600 s credential lasts 6 real seconds and is refreshed 1800 s (3 real s) before it expires
    cluster = await make_cluster(time_scale=600, instances=1, credential_lifetime=3600, refresh_before=1800)
    make_role(cluster, ROLE, "AliyunOSSFullAccess")
    instance_id = cluster.call("ecs", "DescribeInstances", RegionId=cluster.file.region_id)["Instances"]["Instance"][0]["InstanceId"]
    journal = tmp_path / "run.jsonl"

    async with Recorder(cluster, interval=0.05, journal=journal) as rec:
        assert set(rec.targets) == {instance_id} and rec.targets[instance_id].host_id == "host-1"
        await rec.wait_for(lambda h: any(p.status == 404 for p in h.probes(instance_id)), what="a probe before the attach")

        attach = await rec.attach(instance_id, ROLE)
        assert attach.ok and attach.at_acknowledged is not None, attach
        first = await rec.wait_for(lambda h: next(iter(credential_probes(h, instance_id)), None), what="the first credential")
        assert first.role == ROLE and first.access_key_id.startswith("STS.")
        assert 4 < first.expiration - first.at < 7  # wall-clock: 3600 simulated seconds at 600x

        # the workload's calls reach the recorder as the observer sees them
        summary = await run_app(cluster, instance_id, "--rate", "10", "--duration", "1.5")
        calls = await rec.wait_for(lambda h: len(h.of(Call)) >= summary["calls"] and h.of(Call), what="every call as a Call")
        assert len(calls) == summary["calls"] > 0 and {c.instance_id for c in calls} == {instance_id}

        # a frozen metadata agent: probes get no answer inside the window, answers again after it
        stopped = agent(cluster)
        async with rec.fault("stop", "metadata-host-1") as window:
            stopped.send_signal(signal.SIGSTOP)
            try:
                await rec.wait_for(lambda h: any(p.status == NO_ANSWER and p.at > window.start for p in h.probes(instance_id)),
                                   what="a probe that got no answer from the stopped agent")
            finally:
                stopped.send_signal(signal.SIGCONT)
            await rec.wait_for(lambda h: h.probes(instance_id)[-1].status == 200, what="the agent answering again")

        # a write made during the run, read back at its end
        await rec.api("ram", "CreateRole", RoleName="WrittenDuringTheRun", AssumeRolePolicyDocument=ECS_TRUST_POLICY)
        rec.write("ram.Role", "WrittenDuringTheRun", acknowledged=True)

        # long enough that the checker has seen two credentials replaced (one after the fault's grace)
        await rec.wait_for(lambda h: check(h, BOUNDS).summary("fresh_before_expiry").checked >= 2, timeout=30,
                           what="two credentials' deadlines covered by probes")

        detach = await rec.detach(instance_id, ROLE)
        assert detach.ok and detach.at_acknowledged is not None, detach
        await rec.wait_for(lambda h: any(p.at > detach.at_acknowledged + BOUNDS.detach_bound for p in h.probes(instance_id)),
                           what="probes past the detach bound")
        # every credential probed was announced by ECS, and the attach and the detach too
        def events(h: History, name: str) -> list[Event]:
            return [e for e in h.of(Event) if e.name == name and e.instance_id == instance_id]

        await rec.wait_for(lambda h: {p.access_key_id for p in credential_probes(h, instance_id)}
                           <= {e.access_key_id for e in events(h, "InstanceCredentialsRefreshed")}
                           and events(h, "RoleDetachedFromInstance"), what="ECS's events for what was probed")
        assert [e.role for e in events(rec.history, "RoleAttachedToInstance")] == [ROLE]
        roles = (await rec.api("ram", "ListRoles", MaxItems="1000"))["Roles"]["Role"]
        rec.present("ram.Role", [r["RoleName"] for r in roles])

    report = rec.check(BOUNDS)
    print(report.table())
    assert report.ok, report.table()
    checked = {s.invariant: s.checked for s in report.summaries}
    assert checked["acknowledged_writes_survive"] == 1
    # every credential served is checked by both; a fault excuses no expired credential, so none is skipped
    assert checked["never_serves_expired"] > 50 and checked["never_serves_expired"] == checked["only_attached_role"] + \
        report.summary("only_attached_role").skipped
    assert checked["fresh_before_expiry"] >= 2
    assert checked["detach_within_bound"] == 1
    assert checked["exactly_one_reply"] >= 5  # DescribeInstanceRamRole, Attach, CreateRole, Detach, ListRoles
    assert report.summary("never_serves_expired").skipped == 0 and {f.target for f in rec.history.of(Fault)} == {"metadata-host-1"}
    assert rec.probe_errors > 0 and rec.bad_events == 0
    # the journal holds the same run, and `ramsim check` agrees
    assert decode_jsonl(journal.read_bytes()).of(Call) == rec.history.of(Call)
    assert check(decode_jsonl(journal.read_bytes()), BOUNDS).summaries == report.summaries
    assert main(["check", str(journal), "--detach-bound", "1", "--grace", "2"]) == 0


def test_only_loopback_metadata_urls_are_probed() -> None:
    """Pure string checks: loopback() refuses these addresses before any socket exists, so nothing
    here is dialed (no proxy or namespace is needed; tests/conftest.py would refuse it anyway)."""
    assert loopback("http://127.0.0.1:4000/") == "http://127.0.0.1:4000"
    assert loopback("http://localhost:4000") == "http://localhost:4000"
    assert loopback("http://[::1]:4000") == "http://[::1]:4000"
    for url in ("http://100.100.100.200", "http://100.100.100.200:80/latest", "https://127.0.0.1:1", "http://10.0.0.1:80",
                "http://127.0.0.1.example.com:80", "http://[::ffff:100.100.100.200]:80", "http://0.0.0.0:80"):
        try:
            loopback(url)
        except ValueError:
            continue
        raise AssertionError(f"accepted {url}")
