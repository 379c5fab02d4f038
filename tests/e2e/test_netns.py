"""Namespace mode: each instance a network namespace this test's cluster creates, where the real
address http://100.100.100.200 is its host's metadata agent and nothing else is reachable.

The official ``alibabacloud-credentials`` provider runs inside an instance's namespace with no
proxy and its default ECS settings, and gets its role's credential; another instance, asking
the same address, sees only its own view; an instance that takes another's private IP gets no
answer at all (the reply is routed to the real owner). Needs root and iproute2 (skipped
otherwise). Nothing here leaves the namespaces the test made or loopback.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from protocol.times import parse_iso
from services.cli.instances import instances, read_metadata
from services.cli.up import Options, running_cluster
from services.metadata import netns
from services.runtime.clock import ScaledClock
from tests.e2e.conftest import make_role, wait_until

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=netns.available() or "")

ROLE = "NamespacedRole"
READ_CREDENTIALS = """
import json
from alibabacloud_credentials.client import Client
from alibabacloud_credentials.models import Config
credential = Client(Config(type="ecs_ram_role", role_name=%r)).get_credential()
print(json.dumps({"AccessKeyId": credential.access_key_id, "SecurityToken": credential.security_token}))
"""
SPOOF = """
import socket, sys
sock = socket.socket()
sock.bind((sys.argv[1], 0))
sock.settimeout(2)
try:
    sock.connect(("100.100.100.200", 80))
    sock.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n")
    print("answered:" + sock.recv(4096).decode(errors="replace"))
except OSError as exc:
    print("no answer:" + type(exc).__name__)
"""


def run_in(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, timeout=60)


async def test_each_namespace_reads_only_its_own_instance_at_the_real_address(make_cluster) -> None:  # noqa: ANN001
    cluster = await make_cluster(instances=2, metadata_mode="netns")
    make_role(cluster, ROLE, "AliyunOSSReadOnlyAccess")
    first, second = wait_until(lambda: [i for i in instances(cluster.file) if i["MetadataUrl"].startswith("netns:")] or None,
                               what="both instances' namespaces")[:2]
    cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName=ROLE,
                 InstanceIds=json.dumps([first["InstanceId"]]))
    ns_first, ns_second = first["MetadataUrl"].removeprefix("netns:"), second["MetadataUrl"].removeprefix("netns:")

    # the same address answers each instance with its own view
    assert read_metadata(first["MetadataUrl"], "/latest/meta-data/instance-id") == (200, first["InstanceId"])
    assert read_metadata(second["MetadataUrl"], "/latest/meta-data/instance-id") == (200, second["InstanceId"])
    wait_until(lambda: read_metadata(first["MetadataUrl"], "/latest/meta-data/ram/security-credentials/")[1] == ROLE,
               what="the role on the first instance")
    assert read_metadata(second["MetadataUrl"], f"/latest/meta-data/ram/security-credentials/{ROLE}")[0] == 404

    # an unmodified SDK, default ECS settings, no proxy: it dials 100.100.100.200 inside the namespace
    env_free = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    read = subprocess.run(["ip", "netns", "exec", ns_first, sys.executable, "-c", READ_CREDENTIALS % ROLE],
                          capture_output=True, text=True, timeout=60, env=env_free)
    assert read.returncode == 0, read.stderr
    credential = json.loads(read.stdout)
    served = json.loads(read_metadata(first["MetadataUrl"], f"/latest/meta-data/ram/security-credentials/{ROLE}")[1])
    assert credential["AccessKeyId"] == served["AccessKeyId"] and credential["AccessKeyId"].startswith("STS.")
    refused = subprocess.run(["ip", "netns", "exec", ns_second, sys.executable, "-c", READ_CREDENTIALS % ROLE],
                             capture_output=True, text=True, timeout=60, env=env_free)
    assert refused.returncode != 0  # the second instance has no such role: the SDK gets a 404, not the first's credential

    # the second instance takes the first's private IP: its request's answer goes to the first's namespace
    private_ip = read_metadata(first["MetadataUrl"], "/latest/meta-data/private-ipv4")[1]
    assert subprocess.run(["ip", "-n", ns_second, "addr", "add", f"{private_ip}/32", "dev", "eth0"]).returncode == 0
    spoofed = run_in(ns_second, sys.executable, "-c", SPOOF, private_ip)
    assert spoofed.stdout.startswith("no answer:"), spoofed.stdout + spoofed.stderr
    honest = run_in(ns_first, sys.executable, "-c", SPOOF, private_ip)
    assert honest.stdout.startswith("answered:") and first["InstanceId"] in honest.stdout

    # nothing else is reachable from an instance: no route anywhere but the metadata address
    routes = run_in(ns_first, "ip", "route").stdout.strip().splitlines()
    assert routes == ["100.100.100.200 dev eth0 scope link"]


async def test_an_expired_credential_is_not_served_in_a_namespace_either(make_cluster) -> None:  # noqa: ANN001
    """STS stopped past the credential's life: the namespace's 100.100.100.200 answers 503 and the
    official provider inside raises; after SIGCONT a fresh credential is served there again."""
    cluster = await make_cluster(instances=1, metadata_mode="netns", time_scale=600, credential_lifetime=3600, refresh_before=1800)
    make_role(cluster, ROLE)
    [instance] = wait_until(lambda: [i for i in instances(cluster.file) if i["MetadataUrl"].startswith("netns:")] or None,
                            what="the instance's namespace")
    cluster.call("ecs", "AttachInstanceRamRole", RegionId=cluster.file.region_id, RamRoleName=ROLE,
                 InstanceIds=json.dumps([instance["InstanceId"]]))
    url, path = instance["MetadataUrl"], f"/latest/meta-data/ram/security-credentials/{ROLE}"
    served = json.loads(wait_until(lambda: (a := read_metadata(url, path))[0] == 200 and a[1], what="the credential"))
    expires = parse_iso(served["Expiration"])
    clock = ScaledClock(cluster.file.time_scale, cluster.file.time_origin)
    sts = cluster.process("sts").proc
    sts.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: clock.now() > expires + 600, timeout=20, what="the credential expired a simulated 10 min")
        status, body = read_metadata(url, path)
        assert status == 503 and json.loads(body)["Code"] != "Success", (status, body)
        sdk = subprocess.run(["ip", "netns", "exec", url.removeprefix("netns:"), sys.executable, "-c", READ_CREDENTIALS % ROLE],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert sdk.returncode != 0 and "HttpCode=503" in sdk.stderr, sdk.stderr[-500:]
    finally:
        sts.send_signal(signal.SIGCONT)
    fresh = json.loads(wait_until(lambda: (a := read_metadata(url, path))[0] == 200 and a[1], timeout=30, what="a fresh credential"))
    assert fresh["AccessKeyId"] != served["AccessKeyId"] and parse_iso(fresh["Expiration"]) > clock.now()


async def test_the_namespaces_go_with_the_cluster(tmp_path) -> None:  # noqa: ANN001
    async with running_cluster(Options(state_dir=tmp_path / "state", instances=1, metadata_mode="netns")) as cluster:
        [instance] = wait_until(lambda: [i for i in instances(cluster.file) if i["MetadataUrl"].startswith("netns:")] or None,
                                what="the instance's namespace")
        namespace = instance["MetadataUrl"].removeprefix("netns:")
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert namespace in listed and "rsm-host-1-" in listed
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace not in listed and "rsm-host-1-" not in listed
