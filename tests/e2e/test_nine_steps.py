"""The seed's nine steps, walked with the ``ramsim`` command exactly as a user would:
``ramsim up`` in one process, the CLI in others, everything over a private Mosquitto."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import cluster
from services.ram.policy import ECS_TRUST_POLICY
from tests.e2e.conftest import alive, ramsim_up, wait_until

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seed" / "ram-role-for-ecs.md"
SEED_SAMPLE = {"AccessKeyId": "STS.J8XXXXXXXXXX4", "AccessKeySecret": "9PjfXXXXXXXXXBf2XAW", "Expiration": "2017-06-09T09:17:19Z",
               "SecurityToken": "CAIXXXXXXXXXXXwmBkleCTkyI+", "LastUpdated": "2017-06-09T03:17:18Z", "Code": "Success"}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def seed_sample() -> dict[str, str]:
    """The credential sample of the seed's step 8 (from the file when it is beside the repo)."""
    if SEED.exists():
        text = SEED.read_text()
        block = text[text.index('"AccessKeyId"') - 20:]
        return json.loads(block[block.index("{"): block.index("}") + 1])
    return SEED_SAMPLE


class Cli:
    def __init__(self, cluster_file: Path) -> None:
        self.env = {**os.environ, "RAMSIM_CLUSTER": str(cluster_file)}

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "services.cli", *args], env=self.env, capture_output=True, text=True, timeout=60)
        if ok:
            assert done.returncode == 0, f"ramsim {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str) -> dict:
        return json.loads(self.run(*args).stdout)


@pytest.fixture
def cluster_up(tmp_path: Path, broker_options: dict[str, object]):  # noqa: ANN201
    with ramsim_up(tmp_path / "state", "--instances", "1", broker_options=broker_options) as running:
        yield running


@pytest.mark.rabbitmq
def test_nine_steps_with_the_cli(cluster_up) -> None:  # noqa: ANN001
    proc, cluster_file = cluster_up
    cli = Cli(cluster_file)
    target = cluster.load(cluster_file)
    assert oct(cluster_file.stat().st_mode & 0o777) == "0o600"  # it holds the root secret

    # 1. a role that trusts ECS; 2. a policy on it
    role = cli.json("ram", "CreateRole", "--RoleName", "MyApplicationRole", "--AssumeRolePolicyDocument", ECS_TRUST_POLICY)["Role"]
    assert role["Arn"] == f"acs:ram::{target.account_id}:role/MyApplicationRole"
    cli.run("ram", "AttachPolicyToRole", "--PolicyType", "System", "--PolicyName", "AliyunECSReadOnlyAccess", "--RoleName", "MyApplicationRole")
    # 3. a RAM user with an AccessKey; 4. allowed ECS and ram:PassRole on the role
    cli.run("ram", "CreateUser", "--UserName", "alice")
    key = cli.json("ram", "CreateAccessKey", "--UserName", "alice")["AccessKey"]
    cli.run("ram", "AttachPolicyToUser", "--PolicyType", "System", "--PolicyName", "AliyunECSFullAccess", "--UserName", "alice")
    alice = ["--access-key-id", key["AccessKeyId"], "--access-key-secret", key["AccessKeySecret"]]
    refused = cli.run("ecs", "RunInstances", "--RegionId", target.region_id, "--RamRoleName", "MyApplicationRole", *alice, ok=False)
    assert refused.returncode != 0 and "InvalidUser.PassRoleForbidden" in refused.stderr
    pass_role = json.dumps({"Statement": [{"Effect": "Allow", "Action": "ram:PassRole",
                                           "Resource": "acs:ram:*:*:role/MyApplicationRole"}], "Version": "1"})
    cli.run("ram", "CreatePolicy", "--PolicyName", "PassMyRole", "--PolicyDocument", pass_role)
    cli.run("ram", "AttachPolicyToUser", "--PolicyType", "Custom", "--PolicyName", "PassMyRole", "--UserName", "alice")
    # 5. alice runs an instance with the role; 6-7. ECS assumes it from STS
    launched = cli.json("ecs", "RunInstances", "--RegionId", target.region_id, "--RamRoleName", "MyApplicationRole", *alice)
    instance_id = launched["InstanceIdSets"]["InstanceIdSet"][0]
    # 8. the instance's metadata serves the token
    wait_until(lambda: cli.run("metadata", instance_id, "/latest/meta-data/ram/security-credentials/", ok=False).returncode == 0,
               what="role listing")
    listing = cli.run("metadata", instance_id, "/latest/meta-data/ram/security-credentials/").stdout
    assert listing == "MyApplicationRole"  # no trailing newline
    doc = json.loads(cli.run("metadata", instance_id, "/latest/meta-data/ram/security-credentials/MyApplicationRole").stdout)
    sample = seed_sample()
    assert list(doc) == list(sample)  # same fields, same order as the seed
    assert doc["Code"] == "Success" and doc["AccessKeyId"].startswith("STS.")
    assert STAMP.match(doc["Expiration"]) and STAMP.match(doc["LastUpdated"])
    assert cli.run("metadata", instance_id, "/latest/meta-data/instance-id").stdout == instance_id
    # 9. the application calls APIs with the token
    session = ["--access-key-id", doc["AccessKeyId"], "--access-key-secret", doc["AccessKeySecret"], "--security-token", doc["SecurityToken"]]
    who = cli.json("sts", "GetCallerIdentity", *session)
    assert who["Arn"] == f"acs:ram::{target.account_id}:assumed-role/MyApplicationRole/{instance_id}"
    assert who["IdentityType"] == "AssumedRoleUser"
    assert cli.json("ecs", "DescribeInstances", "--RegionId", target.region_id, *session)["TotalCount"] >= 2

    # the instance launched by `ramsim up --instances 1` is running without a role: attach one
    listed = cli.json("instances")
    other = next(i["InstanceId"] for i in listed if i["InstanceId"] != instance_id)
    assert cli.run("metadata", other, "/latest/meta-data/ram/security-credentials/", ok=False).returncode != 0
    cli.run("ecs", "AttachInstanceRamRole", "--RegionId", target.region_id, "--RamRoleName", "MyApplicationRole",
            "--InstanceIds", json.dumps([other]), *alice)
    wait_until(lambda: cli.run("metadata", other, "/latest/meta-data/ram/security-credentials/", ok=False).stdout == "MyApplicationRole",
               what="role on the running instance")
    # detach: the listing goes 404
    cli.run("ecs", "DetachInstanceRamRole", "--RegionId", target.region_id, "--InstanceIds", json.dumps([other]))
    gone = wait_until(lambda: (r := cli.run("metadata", other, "/latest/meta-data/ram/security-credentials/", ok=False)).returncode and r,
                      what="404 after detach")
    assert "404" in gone.stderr

    # Ctrl-C stops everything ramsim up started
    children = list(target.services.values())
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    for pid in children:
        assert not alive(pid), f"process {pid} outlived ramsim up"
    assert not cluster_file.exists()


def test_cli_errors_are_alibaba_codes(cluster_up) -> None:  # noqa: ANN001
    _, cluster_file = cluster_up
    cli = Cli(cluster_file)
    unknown = cli.run("ram", "NoSuchAction", ok=False)
    assert unknown.returncode == 1 and "InvalidApi.NotFound" in unknown.stderr
    missing = cli.run("ram", "CreateRole", "--RoleName", "X", ok=False)
    assert missing.returncode == 1 and "MissingParameter" in missing.stderr and "AssumeRolePolicyDocument" in missing.stderr
    wrong_type = cli.run("ecs", "RunInstances", "--RegionId", "cn-hangzhou", "--Amount", "many", ok=False)
    assert wrong_type.returncode == 1 and "InvalidParameter" in wrong_type.stderr and "Amount" in wrong_type.stderr
    bad_key = cli.run("ram", "GetRole", "--RoleName", "X", "--access-key-id", "LTAInope", "--access-key-secret", "x", ok=False)
    assert bad_key.returncode == 1 and "InvalidAccessKeyId.NotFound" in bad_key.stderr
    target = cluster.load(cluster_file)
    bad_secret = cli.run("ram", "GetRole", "--RoleName", "X", "--access-key-id", target.access_key_id, "--access-key-secret", "wrong", ok=False)
    assert "SignatureDoesNotMatch" in bad_secret.stderr
    assert target.access_key_secret not in bad_secret.stderr + bad_secret.stdout
    no_cluster = subprocess.run([sys.executable, "-m", "services.cli", "instances", "--cluster-file", "/nonexistent/c.json"],
                                capture_output=True, text=True, timeout=30)
    assert no_cluster.returncode == 2 and "ramsim up" in no_cluster.stderr


def test_up_without_mosquitto_says_how_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "RAMSIM_MOSQUITTO": str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-m", "services.cli", "up", "--state-dir", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "apt-get install -y mosquitto" in done.stderr
