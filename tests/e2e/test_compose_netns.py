"""compose.yaml's topology without a container engine: read the file (services, networks, fixed
IPv4 addresses, commands, environment, env files, healthchecks, depends_on), build it in Linux
network namespaces (one per service, a bridge per network, no route anywhere else, service names
in each namespace's /etc/hosts) and run every service's own command in its namespace, started in
depends_on order once what it waits for is healthy (each service's own healthcheck command) or,
for the init job, completed.

Then, as tests/e2e/test_compose.py does with podman: the unmodified credentials SDK in an
instance's namespace reads that instance's credential at 100.100.100.200 (answered by the agent's
namespace, which holds that address, by source address), another instance sees only its own,
and the workload's OSS calls succeed from an instance. So the topology is proven where podman is
missing. Needs root and iproute2 (skipped otherwise; reading compose.yaml as a topology runs
everywhere); nothing leaves the namespaces it made.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from services.metadata import netns
from tests.e2e.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
needs_namespaces = pytest.mark.skipif(netns.available() is not None, reason=netns.available() or "")
ROLE = "MyApplicationRole"
IMAGE_ENV = {"PYTHONUNBUFFERED": "1"}  # deploy/Dockerfile's ENV, less what is per service here (state dir, ready file)
READ_CREDENTIAL = """
import json
from alibabacloud_credentials.client import Client
from alibabacloud_credentials.models import Config
c = Client(Config(type="ecs_ram_role")).get_credential()
print(json.dumps({"id": c.access_key_id, "secret": c.access_key_secret, "token": c.security_token}))
"""
CALLER = """
import json, sys
from services.cli import api
c = json.loads(sys.argv[1])
print(api.call("http://gateway:8080", "sts", "GetCallerIdentity", {}, api.Credential(c["id"], c["secret"], c["token"]))["Arn"])
"""


# -- compose.yaml as data ---------------------------------------------------------------------

def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``${NAME:-default}`` and ``${NAME}`` as Compose substitutes them, everywhere in the document."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@dataclass
class Service:
    name: str
    command: list[str]
    addresses: dict[str, str]           # network -> IPv4 address
    environment: dict[str, str]
    env_files: list[str]
    health: list[str]                   # the healthcheck's command ([] = none)
    depends: dict[str, str]             # service -> condition
    proc: subprocess.Popen[bytes] | None = None
    namespace: str = ""
    env: dict[str, str] = field(default_factory=dict)


def topology(env: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, Service]]:
    document = interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()), env)  # PyYAML resolves the << merges
    networks = {name: {"subnet": spec["ipam"]["config"][0]["subnet"], "internal": spec.get("internal")}
                for name, spec in document["networks"].items()}
    services = {}
    for name, spec in document["services"].items():
        depends = spec.get("depends_on", {})
        services[name] = Service(
            name=name, command=list(spec["command"]),
            addresses={net: attached["ipv4_address"] for net, attached in spec["networks"].items()},
            environment={k: str(v) for k, v in (spec.get("environment") or {}).items()},
            env_files=list(spec.get("env_file", [])), health=list(spec.get("healthcheck", {}).get("test", []))[1:],
            depends={d: c["condition"] for d, c in depends.items()} if isinstance(depends, dict) else dict.fromkeys(depends, "service_started"))
    return networks, services


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_compose_yaml_is_a_topology_with_an_address_for_everything() -> None:
    networks, services = topology({})
    assert {"mosquitto", "ram", "sts", "ecs", "gateway", "oss", "metadata", "init",
            "instance-1", "instance-2", "instance-3"} == set(services)
    assert networks["control"]["internal"] is True and networks["instances"]["internal"] is True
    for service in services.values():
        for net, address in service.addresses.items():
            assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(networks[net]["subnet"]), (service.name, net)
    assert services["metadata"].addresses["instances"] == "100.100.100.200"
    for name in ("instance-1", "instance-2", "instance-3"):
        assert set(services[name].addresses) == {"instances"} and not services[name].env_files  # no secret, one network
        assert "--on-instance" in services[name].command and not any("PROXY" in k for k in services[name].environment)
    assert services["ecs"].environment["RAMSIM_VSWITCH_CIDR"] == networks["instances"]["subnet"]


# -- the namespaces ---------------------------------------------------------------------------

def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


class Topology:
    """compose.yaml's networks as bridges in one switch namespace, each service a namespace."""

    def __init__(self, networks: dict[str, dict[str, Any]], services: dict[str, Service], tag: str) -> None:
        self.networks, self.services, self.tag = networks, services, tag
        self.switch = f"rcx-{tag}"
        self.namespaces: list[str] = []

    def build(self) -> None:
        self._add(self.switch)
        for i, net in enumerate(self.networks):
            ip("-n", self.switch, "link", "add", f"br{i}", "type", "bridge")
            ip("-n", self.switch, "link", "set", f"br{i}", "up")
        index = {net: i for i, net in enumerate(self.networks)}
        for n, service in enumerate(self.services.values()):
            service.namespace = f"rcs-{tag_of(service.name)}-{self.tag}"
            self._add(service.namespace)
            ip("-n", service.namespace, "link", "set", "lo", "up")
            for k, (net, address) in enumerate(service.addresses.items()):
                outer, inner = f"rc{self.tag}{n:02d}{k}o", f"rc{self.tag}{n:02d}{k}i"
                ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                ip("link", "set", outer, "netns", self.switch)
                ip("-n", self.switch, "link", "set", outer, "master", f"br{index[net]}")
                ip("-n", self.switch, "link", "set", outer, "up")
                ip("link", "set", inner, "netns", service.namespace)
                ip("-n", service.namespace, "link", "set", inner, "name", f"eth{k}")
                prefix = ipaddress.IPv4Network(self.networks[net]["subnet"]).prefixlen
                ip("-n", service.namespace, "addr", "add", f"{address}/{prefix}", "dev", f"eth{k}")
                ip("-n", service.namespace, "link", "set", f"eth{k}", "up")
            self._hosts(service)

    def _add(self, namespace: str) -> None:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        ip("netns", "add", namespace)
        self.namespaces.append(namespace)

    def _hosts(self, service: Service) -> None:
        """Compose's name lookups: every other service by an address on a network both are on."""
        lines = ["127.0.0.1 localhost"]
        for other in self.services.values():
            shared = [net for net in other.addresses if net in service.addresses]
            if shared:
                lines.append(f"{other.addresses[shared[0]]} {other.name}")
        directory = Path("/etc/netns") / service.namespace
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text("\n".join(lines) + "\n")

    def remove(self) -> None:
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)


def tag_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:4]


def argv(command: list[str]) -> list[str]:
    """The image's commands with this checkout's Python: ``ramsim`` and ``python`` as here."""
    if command[0] == "ramsim":
        return [sys.executable, "-m", "services.cli", *command[1:]]
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def in_namespace(service: Service, command: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", service.namespace, *argv(command)], capture_output=True, text=True,
                          env=service.env if env is None else env, timeout=timeout, cwd=ROOT)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Service]]:
    secrets = tmp_path / "secrets"
    subprocess.run([sys.executable, "-m", "services.cli", "deploy", "secrets", str(secrets)], check=True, capture_output=True, cwd=ROOT)
    networks, services = topology({"RAMSIM_SECRETS": str(secrets)})
    net = Topology(networks, services, hashlib.sha256(str(tmp_path).encode()).hexdigest()[:4])
    base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **IMAGE_ENV}
    for service in services.values():
        state = tmp_path / "state" / service.name
        state.mkdir(parents=True, mode=0o700)
        files = {k: v for f in service.env_files for k, v in read_env_file(Path(f)).items()}
        service.env = {**base, **files, **service.environment, "RAMSIM_STATE_DIR": str(state),
                       "RAMSIM_READY_FILE": str(state / "ready"), "PYTHONPATH": str(ROOT)}
    try:
        net.build()
        started: set[str] = set()
        deadline = time.monotonic() + 90
        while len(started) < len(services):
            for service in services.values():
                if service.name not in started and all(_met(services[d], c) for d, c in service.depends.items()):
                    log = open(tmp_path / f"{service.name}.log", "wb")
                    service.proc = subprocess.Popen(["ip", "netns", "exec", service.namespace, *argv(service.command)],
                                                    env=service.env, stdout=log, stderr=log, cwd=ROOT, start_new_session=True)
                    started.add(service.name)
            if time.monotonic() > deadline:
                logs = {p.stem: p.read_text()[-600:] for p in tmp_path.glob("*.log")}
                raise AssertionError(f"not started in time: {sorted(set(services) - started)}; logs: {json.dumps(logs, indent=1)}")
            time.sleep(0.2)
        for service in services.values():
            if service.health:
                wait_until(lambda s=service: _met(s, "service_healthy"), timeout=60, what=f"{service.name} healthy")
        yield services
    finally:
        for service in services.values():
            if service.proc is not None and service.proc.poll() is None:
                os.killpg(service.proc.pid, signal.SIGTERM)
        for service in services.values():
            if service.proc is not None:
                try:
                    service.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(service.proc.pid, signal.SIGKILL)
                    service.proc.wait()
        net.remove()


def _met(service: Service, condition: str) -> bool:
    if service.proc is None:
        return False
    if condition == "service_completed_successfully":
        return service.proc.poll() == 0
    if condition == "service_healthy":
        return service.proc.poll() is None and in_namespace(service, service.health, timeout=20).returncode == 0
    return True


@needs_namespaces
def test_the_compose_topology_in_namespaces_serves_each_instance_its_own_credential(cluster: dict[str, Service]) -> None:
    init = cluster["init"]
    sdk_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}  # nothing points the SDK anywhere
    arns = {}
    for name in ("instance-1", "instance-2"):
        read = in_namespace(cluster[name], ["python", "-c", READ_CREDENTIAL], env=sdk_env)
        assert read.returncode == 0, read.stderr[-2000:]
        credential = json.loads(read.stdout)
        caller = in_namespace(init, ["python", "-c", CALLER, json.dumps(credential)])
        assert caller.returncode == 0, caller.stderr[-2000:]
        arns[name] = caller.stdout.strip()
        instance_id = in_namespace(cluster[name], ["python", "-c", "import urllib.request as u; print(u.urlopen('http://100.100.100.200/latest/meta-data/instance-id').read().decode())"],
                                   env=sdk_env).stdout.strip()
        assert arns[name].endswith(f":assumed-role/{ROLE}/{instance_id}") and instance_id.startswith("i-"), (arns[name], instance_id)
    assert arns["instance-1"] != arns["instance-2"]
    # a namespace on the instances' network that is no instance (OSS's) gets no one's view
    other = in_namespace(cluster["oss"], ["python", "-c", "import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://100.100.100.200/latest/meta-data/instance-id', timeout=3); print('answered')\nexcept e.HTTPError as x: print(x.code)"])
    assert other.stdout.strip() == "403", other.stdout + other.stderr
    # an instance reaches nothing but its own network: the only route is the instances' subnet
    routes = in_namespace(cluster["instance-1"], ["ip", "route"]).stdout.strip().splitlines()
    assert routes == ["100.100.100.0/24 dev eth0 proto kernel scope link src 100.100.100.11"], routes
    # step 9 from an instance, as compose.yaml's instances run it
    command = [*cluster["instance-3"].command]
    command[command.index("--duration") + 1] = "2"
    summary = json.loads(in_namespace(cluster["instance-3"], [*command, "--rate", "20", "--output", "json"], timeout=90).stdout)
    assert summary["calls"] > 0 and summary["ok"] == summary["calls"], summary
