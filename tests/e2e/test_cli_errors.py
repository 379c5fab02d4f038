"""The mistakes a newcomer makes with ``ramsim``: each ends in one line that says what to do, with
the exit status the README gives (1: the API refused, 2: the command could not run), and never
a Python traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from services.cli import cluster as cluster_file

pytestmark = pytest.mark.e2e


def ramsim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def said(done: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """The last line on stderr, checked: the exit status, no traceback, and each of ``words``."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == status, f"exit {done.returncode}, stderr:\n{done.stderr}"
    for word in words:
        assert word in last, f"{word!r} not in the last line: {last!r}"
    return last


async def test_api_mistakes_end_in_the_apis_error_line(make_cluster: Callable) -> None:
    cluster = await make_cluster(instances=0)
    at = ("--cluster-file", str(cluster.path))
    said(ramsim("ram", "CreateRoel", "--RoleName", "X", *at), 1, "ERROR: InvalidApi.NotFound", "CreateRoel")
    said(ramsim("ram", "CreateRole", "--RoleName", "X", *at), 1, "ERROR: MissingParameter", "AssumeRolePolicyDocument")
    said(ramsim("ram", "CreatePolicy", "--PolicyName", "P", "--PolicyDocument", '{"Statement": [', *at), 1,
         "ERROR: MalformedPolicyDocument")
    said(ramsim("ram", "GetRole", "--RoleName", "Nobody", *at), 1, "ERROR: EntityNotExist.Role")
    said(ramsim("ram", "GetRole", "--RoleName", *at), 2, "ramsim ram: --RoleName needs a value")
    said(ramsim("ram", "GetRole", "RoleName", "X", *at), 2, "expected --ParameterName value")
    said(ramsim("ram", *at), 2, "ramsim ram --help")
    said(ramsim("metadata", "i-nope", "/latest/meta-data/", *at), 1, "InvalidInstanceId.NotFound", "ramsim instances")
    said(ramsim("ram", "GetRole", "--RoleName", "X", "--access-key-id", "LTAIonly", *at), 2, "--access-key-secret")


def test_no_cluster_running_says_to_start_one(tmp_path: Path) -> None:
    said(ramsim("instances", "--cluster-file", str(tmp_path / "none.json")), 2, "ramsim up")
    env = {**os.environ, "RAMSIM_CLUSTER": str(tmp_path / "none.json")}
    said(ramsim("ram", "ListRoles", env=env), 2, "no cluster file", "ramsim up")
    (tmp_path / "junk.json").write_text("{not json")
    said(ramsim("instances", "--cluster-file", str(tmp_path / "junk.json")), 2, "not a ramsim cluster file")
    # A cluster that stopped without removing its file (killed): its gateway's port answers nothing.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    stale = cluster_file.ClusterFile(broker_url="mqtt://127.0.0.1:1", gateway_url=f"http://127.0.0.1:{dead}", account_id="1",
                                     region_id="cn-hangzhou", access_key_id="LTAIx", access_key_secret="y", state_dir=str(tmp_path),
                                     time_scale=1.0, time_origin=0.0, pid=0)
    cluster_file.save(tmp_path / "stale.json", stale)
    for command in (("ram", "ListRoles"), ("instances",), ("metadata", "i-x", "/latest/meta-data/")):
        said(ramsim(*command, "--cluster-file", str(tmp_path / "stale.json")), 2, "cannot reach the gateway", "ramsim up")


def test_up_refuses_a_taken_port_and_impossible_settings(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said(ramsim("up", "--state-dir", str(tmp_path / "a"), "--gateway-port", str(port)), 2,
             f"--gateway-port {port}", "taken")
    said(ramsim("up", "--state-dir", str(tmp_path / "b"), "--refresh-before", "4000"), 2, "--refresh-before", "less than")
    said(ramsim("demo", "--time-scale", "0"), 2, "--time-scale")
    said(ramsim("up", "--state-dir", str(tmp_path / "c"), "--hosts", "0"), 2, "--hosts")
    usage = ramsim("up", "--instances", "many")
    assert usage.returncode == 2 and "invalid int value: 'many'" in usage.stderr and "Traceback" not in usage.stderr
    said(ramsim("bogus"), 2, "invalid choice: 'bogus'")


def test_up_without_mosquitto_ends_with_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "RAMSIM_MOSQUITTO": str(tmp_path / "missing")}
    done = ramsim("up", "--state-dir", str(tmp_path / "s"), env=env)
    said(done, 2, "RAMSIM_MOSQUITTO=/path/to/mosquitto")
    assert "apt-get install -y mosquitto" in done.stderr


def test_check_and_app_mistakes(tmp_path: Path) -> None:
    said(ramsim("check", str(tmp_path / "missing.jsonl")), 2, "ramsim check: cannot read")
    said(ramsim("app", "i-x", "--rate", "-1"), 2, "ramsim app: --rate")
    (tmp_path / "c.json").write_text(json.dumps({"nope": 1}))
    said(ramsim("app", "i-x", "--cluster-file", str(tmp_path / "c.json"), "--duration", "1"), 2, "not a ramsim cluster file")
