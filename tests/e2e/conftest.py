"""End-to-end fixtures: real processes, a real Mosquitto, real HTTP. Nothing in memory."""

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

from services.cli import api, cluster as cluster_file
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


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """``await make_cluster(time_scale=..., instances=...)`` -> a running :class:`Cluster`."""
    stack: list[object] = []

    async def make(**overrides: object) -> Cluster:
        options = Options(state_dir=tmp_path / f"cluster{len(stack)}", log_format="json", **overrides)  # type: ignore[arg-type]
        context = running_cluster(options)
        stack.append(context)
        return await context.__aenter__()

    yield make
    for context in reversed(stack):
        await context.__aexit__(None, None, None)  # type: ignore[attr-defined]


@contextlib.contextmanager
def ramsim_up(state: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Run ``ramsim up`` as a user would (its own process); yield it and its cluster file."""
    path = state / "cluster.json"
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--state-dir", str(state), "--cluster-file", str(path),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: path.exists() or proc.poll() is not None, timeout=60, what="ramsim up")
        assert proc.poll() is None, f"ramsim up exited:\n{proc.stderr.read() if proc.stderr else ''}"
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def load(path: Path) -> cluster_file.ClusterFile:
    return cluster_file.load(path)
