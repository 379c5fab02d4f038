"""``ramsim deploy``'s pure parts: each container's env file holds only its own secrets, the
broker's generated files, the init job's instance list, the healthcheck's refusals, and the
route check that keeps ``ramsim app --on-instance`` off a real metadata service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import broker, deploy, keys
from services.cli.app import metadata_route_problem

ROUTES = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def _keys() -> keys.Keys:
    return keys.generate(account_id="1234567890123456", time_origin=1000.0, time_scale=1.0, broker_port=1883,
                         gateway_port=8080, oss_port=8081)


def test_each_container_gets_only_the_secrets_it_needs() -> None:
    kept = _keys()
    identities = keys.identities(kept, deploy.HOSTS)
    files = deploy.env_files(kept, identities)
    secrets = {"root": kept.root_access_key_secret, "sts": kept.sts_signing_key, "state": kept.state_key}
    holders = {what: sorted(name for name, env in files.items() if any(value == secret for value in env.values()))
               for what, secret in secrets.items()}
    assert holders == {"root": ["init.env", "ram.env"], "sts": ["sts.env"],
                       "state": ["ecs.env", "gateway.env", "metadata.env", "oss.env", "ram.env", "sts.env"]}
    for name, env in files.items():  # a service's broker URL is its own identity, on the services listener
        if "RAMSIM_BROKER_URL" in env:
            user = env["RAMSIM_BROKER_URL"].split("//")[1].split(":")[0]
            assert name == f"{user.split('-')[0]}.env" and env["RAMSIM_BROKER_URL"].endswith("@mosquitto:1884")
            assert sum(p in env["RAMSIM_BROKER_URL"] for p in identities.passwords.values()) == 1
    assert json.loads(files["mosquitto.env"]["RAMSIM_BROKER_PASSWORDS"]) == dict(identities.passwords)
    assert " " not in files["mosquitto.env"]["RAMSIM_BROKER_PASSWORDS"]  # one word: every env-file reader agrees on it


def test_secrets_are_kept_on_a_second_run(tmp_path: Path) -> None:
    first = deploy.write_secrets(tmp_path / "s", gateway_port=8080, oss_port=8081, broker_port=1883)
    again = deploy.write_secrets(tmp_path / "s", gateway_port=9080, oss_port=9081, broker_port=1883)
    assert (again.account_id, again.root_access_key_secret, again.state_key) == (first.account_id, first.root_access_key_secret,
                                                                                 first.state_key)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted([*deploy.env_files(first, keys.identities(first, deploy.HOSTS)),
                                                                        "cluster.json", "keys.json"])
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "s").iterdir())
    assert json.loads((tmp_path / "s" / "cluster.json").read_text())["GatewayUrl"] == "http://127.0.0.1:9080"


def test_the_broker_config_is_ramsims_with_identities_on_the_container_network(tmp_path: Path) -> None:
    identities = broker.Identities.generate(deploy.HOSTS)
    conf = deploy.broker_files(tmp_path, dict(identities.passwords)).read_text().splitlines()
    assert "set_tcp_nodelay true" in conf and "allow_anonymous false" in conf and "use_username_as_clientid true" in conf
    assert [line for line in conf if line.startswith("listener")] == ["listener 1883 0.0.0.0", "listener 1884 0.0.0.0"]
    assert "log_dest stdout" in conf and (tmp_path / "mosquitto.acl").exists() and (tmp_path / "mosquitto.passwd").exists()
    with pytest.raises(deploy.DeployError, match="no password for"):
        deploy.broker_files(tmp_path, {"ram": "x"})


def test_instances_are_name_equals_ip() -> None:
    assert deploy.parse_instances(["a=100.100.100.11", "b=100.100.100.12"]) == {"a": "100.100.100.11", "b": "100.100.100.12"}
    with pytest.raises(deploy.DeployError):
        deploy.parse_instances(["a"])


def test_health_of_a_service_is_its_ready_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ready = tmp_path / "ready"
    monkeypatch.setenv("RAMSIM_READY_FILE", str(ready))
    assert "not ready" in (deploy.health("service") or "")
    ready.write_text("999999999\n")
    assert "is gone" in (deploy.health("service") or "")
    ready.write_text(f"{__import__('os').getpid()}\n")
    assert deploy.health("service") is None
    assert deploy.health("nonsense") == "unknown role 'nonsense'"


@pytest.mark.parametrize("table, allowed", [
    ("eth0\t00646464\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n", True),                # compose: the instances' subnet, on-link
    ("eth0\tC8646464\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n", True),                # namespace mode: a /32, on-link
    ("eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n", False),               # a default route: via a gateway
    ("eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
     "eth0\t00646464\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n", True),                # the more specific route wins
    ("eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n", False),               # no route to it at all
])
def test_on_instance_dials_100_100_100_200_only_on_link(table: str, allowed: bool) -> None:
    assert (metadata_route_problem(ROUTES + table) is None) is allowed
