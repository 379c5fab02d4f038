"""End-to-end fixtures: real processes, a real Mosquitto, real HTTP. Nothing in memory.

Which broker: Mosquitto (started by each cluster) unless ``RAMSIM_TEST_BROKER=rabbitmq``, which
runs every cluster of these tests on the local RabbitMQ's MQTT plugin (``ramsim up --broker``,
one vhost per cluster, removed afterwards). A test marked ``@pytest.mark.rabbitmq`` runs on both
in the default suite. RabbitMQ's MQTT listener is set up by :func:`rabbitmq_broker` (idempotent,
no restart); where RabbitMQ is absent those runs skip, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, TypeVar

import pytest

from services.cli import api, cluster as cluster_file, rabbitmq
from services.cli.instances import instances, read_metadata
from services.cli.up import Cluster, Options, running_cluster
from services.ram.policy import ECS_TRUST_POLICY

T = TypeVar("T")
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"


def wait_until(probe: Callable[[], T], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Is ``pid`` a running process? (A zombie awaiting its parent's wait() is gone for our purposes.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def metadata_url(cluster: Cluster, instance_id: str) -> str:
    return wait_until(lambda: next((i["MetadataUrl"] for i in instances(cluster.file) if i["InstanceId"] == instance_id), ""),
                      what=f"metadata URL of {instance_id}")


def credentials(url: str, role: str) -> dict[str, str] | None:
    status, body = read_metadata(url, CREDENTIALS + role)
    return json.loads(body) if status == 200 else None


def make_role(cluster: Cluster, name: str, *policies: str) -> None:
    cluster.call("ram", "CreateRole", RoleName=name, AssumeRolePolicyDocument=ECS_TRUST_POLICY)
    for policy in policies:
        cluster.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=policy, RoleName=name)


def as_session(doc: dict[str, str]) -> api.Credential:
    return api.Credential(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"])


BROKERS = ("mosquitto", "rabbitmq")
RABBITMQ_PORT = int(os.environ.get("RAMSIM_TEST_RABBITMQ_PORT", "11883"))  # RabbitMQ's MQTT listener for tests (1883 is Mosquitto's)


def selected_broker() -> str:
    chosen = os.environ.get("RAMSIM_TEST_BROKER", "mosquitto")
    if chosen not in BROKERS:
        raise pytest.UsageError(f"RAMSIM_TEST_BROKER={chosen!r}: choose one of {', '.join(BROKERS)}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``broker_kind``: the selected broker; a ``rabbitmq``-marked test also runs on the other."""
    if "broker_kind" not in metafunc.fixturenames:
        return
    chosen = selected_broker()
    if metafunc.definition.get_closest_marker("rabbitmq") is not None:
        metafunc.parametrize("broker_kind", BROKERS if chosen == "mosquitto" else ("rabbitmq",), indirect=True)


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", None) or selected_broker()


_rabbitmq_ready: list[str] = []  # once per session: "" when ready, else why not


def rabbitmq_broker() -> str:
    """The test broker URL of RabbitMQ's MQTT listener (set up idempotently); skips when absent."""
    if not _rabbitmq_ready:
        why = ""
        try:
            rabbitmq.rabbitmqctl()
            rabbitmq.run("status", timeout=60)
            rabbitmq.ensure_mqtt_listener(RABBITMQ_PORT)
            wait_until(lambda: _listening(RABBITMQ_PORT), timeout=30, what=f"RabbitMQ's MQTT listener on {RABBITMQ_PORT}")
        except (rabbitmq.RabbitError, OSError, subprocess.SubprocessError, AssertionError) as exc:
            why = f"RabbitMQ is not usable here: {exc}"
        _rabbitmq_ready.append(why)
    if _rabbitmq_ready[0]:
        pytest.skip(_rabbitmq_ready[0])
    return f"mqtt://127.0.0.1:{RABBITMQ_PORT}?version=3.1.1"


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def broker_options(broker_kind: str) -> Iterator[dict[str, object]]:
    """The :class:`Options` a cluster of this test runs with for its broker; RabbitMQ vhosts and
    users this test's clusters made are removed afterwards."""
    if broker_kind == "mosquitto":
        yield {}
        return
    yield {"broker": rabbitmq_broker(), "broker_setup": "rabbitmqctl"}


def remove_from_rabbitmq(running: Cluster) -> None:
    if running.external and running.endpoint is not None and running.endpoint.vhost:
        with contextlib.suppress(rabbitmq.RabbitError, OSError, subprocess.SubprocessError):
            rabbitmq.remove(running.endpoint.vhost)


def up_args(options: dict[str, object]) -> list[str]:
    """``ramsim up`` arguments for :func:`broker_options`."""
    return ["--broker", str(options["broker"]), "--broker-setup", str(options["broker_setup"])] if options else []


@pytest.fixture
async def make_cluster(tmp_path: Path, broker_options: dict[str, object]) -> AsyncIterator[Callable[..., object]]:
    """``await make_cluster(time_scale=..., instances=...)`` -> a running :class:`Cluster`."""
    stack: list[object] = []
    made: list[Cluster] = []

    async def make(**overrides: object) -> Cluster:
        options = Options(state_dir=tmp_path / f"cluster{len(stack)}", log_format="json", **{**broker_options, **overrides})  # type: ignore[arg-type]
        context = running_cluster(options)
        stack.append(context)
        running = await context.__aenter__()
        made.append(running)
        return running

    yield make
    for context in reversed(stack):
        await context.__aexit__(None, None, None)  # type: ignore[attr-defined]
    for running in made:
        remove_from_rabbitmq(running)


@contextlib.contextmanager
def ramsim_up(state: Path, *args: str, broker_options: dict[str, object] | None = None) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Run ``ramsim up`` as a user would (its own process); yield it and its cluster file.
    With :func:`broker_options` for RabbitMQ, on RabbitMQ (its vhost removed afterwards)."""
    path = state / "cluster.json"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--state-dir", str(state), "--cluster-file", str(path),
                             *up_args(broker_options or {}), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    vhost = ""
    try:
        wait_until(lambda: path.exists() or proc.poll() is not None, timeout=60, what="ramsim up")
        assert proc.poll() is None, f"ramsim up exited:\n{proc.stderr.read() if proc.stderr else ''}"
        vhost = vhost_of(path)
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        if vhost:
            with contextlib.suppress(rabbitmq.RabbitError, OSError, subprocess.SubprocessError):
                rabbitmq.remove(vhost)


def vhost_of(path: Path) -> str:
    """The RabbitMQ vhost a cluster file's broker URL names ("" for none: Mosquitto)."""
    from services.runtime.mqtt_bus import parse

    user = parse(cluster_file.load(path).broker_url).user or ""
    return user.split(":", 1)[0] if ":" in user else ""


def load(path: Path) -> cluster_file.ClusterFile:
    return cluster_file.load(path)
