"""I/O shell: ``ramsim deploy``: what ``compose.yaml``'s containers run besides the services.

``ramsim deploy secrets DIR`` (on the host, before ``docker compose up``) makes a cluster's
secrets with :mod:`services.cli.keys` (the same ``keys.json`` as ``ramsim up``; run again, it
keeps the ones there, so a cluster's account survives) and writes one env file per container,
each holding only the secrets that container needs (mode 0600; compose's ``env_file:`` reads them,
so no secret is in the YAML), plus ``cluster.json`` for the host's ``ramsim`` commands (the
ports compose publishes on 127.0.0.1).

In the containers: ``ramsim deploy broker`` writes Mosquitto's config, password and ACL files
(:mod:`services.cli.broker`, as ``ramsim up`` does, listening on the container's network) from
``RAMSIM_BROKER_PASSWORDS`` and becomes Mosquitto; ``ramsim deploy init`` (the one-shot ``init``
service) creates the demo role and an instance per ``--instance NAME=IP`` at that private IP
with the role attached, and does nothing twice (``up`` again finds them); ``ramsim deploy
health ROLE`` is each container's healthcheck.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from services.cli import api, broker, cluster, keys
from services.cli.errors import CliError

HOSTS = ("host-1",)  # compose.yaml's one metadata agent
BROKER_HOST, TOOLS_PORT, SERVICES_PORT = "mosquitto", 1883, 1884  # inside the compose network
STATE_DIR = "/var/lib/ramsim"
READY_FILE = "/tmp/ramsim.ready"
METADATA = "http://100.100.100.200"
ROLE_TRUST = json.dumps({"Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow",
                                        "Principal": {"Service": ["ecs.aliyuncs.com"]}}], "Version": "1"})


class DeployError(CliError):
    """A deploy step cannot go on; the message says why."""


# -- secrets (on the host) --------------------------------------------------------------------

def env_files(kept: keys.Keys, identities: broker.Identities) -> dict[str, dict[str, str]]:
    """File name -> variables: every container's env file, each with only its own secrets."""
    common = {"RAMSIM_ACCOUNT_ID": kept.account_id, "RAMSIM_TIME_ORIGIN": repr(kept.time_origin),
              "RAMSIM_TIME_SCALE": repr(kept.time_scale)}

    def service(identity: str, **extra: str) -> dict[str, str]:
        return {**common, "RAMSIM_BROKER_URL": identities.url(identity, BROKER_HOST, SERVICES_PORT),
                "RAMSIM_STATE_KEY": kept.state_key, **extra}

    return {
        "mosquitto.env": {"RAMSIM_BROKER_PASSWORDS": json.dumps(dict(identities.passwords), sort_keys=True, separators=(",", ":"))},
        "ram.env": service("ram", RAMSIM_ROOT_ACCESS_KEY_ID=kept.root_access_key_id,
                           RAMSIM_ROOT_ACCESS_KEY_SECRET=kept.root_access_key_secret),
        "sts.env": service("sts", RAMSIM_STS_SIGNING_KEY=kept.sts_signing_key),
        "ecs.env": service("ecs"),
        "gateway.env": service("gateway"),
        "oss.env": service("oss"),
        "metadata.env": service(broker.host_identity(HOSTS[0])),
        "init.env": {**common, "RAMSIM_ROOT_ACCESS_KEY_ID": kept.root_access_key_id,
                     "RAMSIM_ROOT_ACCESS_KEY_SECRET": kept.root_access_key_secret},
    }


def env_text(variables: dict[str, str]) -> str:
    for name, value in variables.items():
        if "\n" in value or "'" in value:
            raise ValueError(f"{name} cannot be written to an env file")
    return "".join(f"{name}={value}\n" for name, value in variables.items())


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def write_secrets(directory: Path, *, gateway_port: int, oss_port: int, broker_port: int,
                  region_id: str = "cn-hangzhou", say: Callable[[str], None] = lambda line: None) -> keys.Keys:
    """Make (or keep) the cluster's keys in ``directory`` and write every env file and cluster.json."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    try:
        kept = keys.load(directory)
    except keys.KeysError as exc:
        raise DeployError(str(exc)) from None
    if kept is None:
        kept = keys.generate(account_id="", time_origin=time.time(), time_scale=1.0, broker_port=broker_port,
                             gateway_port=gateway_port, oss_port=oss_port)
        say(f"new cluster: account {kept.account_id}; secrets in {directory}")
    else:
        say(f"kept the cluster's secrets in {directory} (account {kept.account_id})")
    kept.broker_port, kept.gateway_port, kept.oss_port, kept.services_port = broker_port, gateway_port, oss_port, SERVICES_PORT
    identities = keys.identities(kept, HOSTS)
    keys.save(directory, kept)
    for name, variables in env_files(kept, identities).items():
        _write_private(directory / name, env_text(variables))
    cluster.save(directory / "cluster.json", cluster.ClusterFile(
        broker_url=identities.url(broker.OPERATOR, "127.0.0.1", broker_port), gateway_url=f"http://127.0.0.1:{gateway_port}",
        oss_url=f"http://127.0.0.1:{oss_port}", account_id=kept.account_id, region_id=region_id,
        access_key_id=kept.root_access_key_id, access_key_secret=kept.root_access_key_secret, state_dir=str(directory),
        time_scale=kept.time_scale, time_origin=kept.time_origin, pid=0))
    return kept


# -- the broker (in its container) -------------------------------------------------------------

def broker_files(state: Path, passwords: dict[str, str]) -> Path:
    """Mosquitto's config (both listeners on every address of the container), password and ACL files."""
    from services.cli.up import mosquitto_conf

    identities = broker.Identities(broker.acl_rules(HOSTS), passwords)
    missing = sorted(set(identities.rules) - set(passwords))
    if missing:
        raise DeployError(f"RAMSIM_BROKER_PASSWORDS has no password for {', '.join(missing)}: run `ramsim deploy secrets` again")
    state.mkdir(parents=True, exist_ok=True)
    conf = mosquitto_conf(TOOLS_PORT, state, broker.write_files(state, identities), services_port=SERVICES_PORT, bind="0.0.0.0")
    conf = "\n".join("log_dest stdout" if line.startswith("log_dest ") else line for line in conf.splitlines()) + "\n"
    path = state / "mosquitto.conf"
    _write_private(path, conf)
    return path


def run_broker(state: Path) -> None:
    raw = os.environ.pop("RAMSIM_BROKER_PASSWORDS", "")
    if not raw:
        raise DeployError("RAMSIM_BROKER_PASSWORDS is not set (compose reads it from mosquitto.env: `ramsim deploy secrets`)")
    conf = broker_files(state, json.loads(raw))
    from services.cli.up import find_mosquitto

    mosquitto = find_mosquitto()
    sys.stdout.flush()
    os.execv(mosquitto, [mosquitto, "-c", str(conf)])


# -- init: the role and the instances ---------------------------------------------------------

def parse_instances(specs: list[str]) -> dict[str, str]:
    """``NAME=IP`` arguments -> {name: ip}."""
    out: dict[str, str] = {}
    for spec in specs:
        name, _, ip = spec.partition("=")
        if not name or not ip:
            raise DeployError(f"--instance {spec!r}: give NAME=PRIVATE_IP")
        out[name] = ip
    return out


def _call(endpoint: str, credential: api.Credential, product: str, action: str, **params: str) -> dict[str, Any]:
    return api.call(endpoint, product, action, params, credential)


def _wait_gateway(endpoint: str, credential: api.Credential, region: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _call(endpoint, credential, "ecs", "DescribeInstances", RegionId=region, PageSize="1")
            return
        except (api.Unreachable, api.ApiError) as exc:
            if isinstance(exc, api.ApiError) and exc.status < 500:
                raise
            if time.monotonic() > deadline:
                raise DeployError(f"the gateway at {endpoint} did not answer within {timeout:g} s: {exc}") from None
            time.sleep(0.5)


def described(endpoint: str, credential: api.Credential, region: str) -> dict[str, dict[str, Any]]:
    """Every instance by InstanceName."""
    found: dict[str, dict[str, Any]] = {}
    page = 1
    while True:
        answer = _call(endpoint, credential, "ecs", "DescribeInstances", RegionId=region, PageSize="100", PageNumber=str(page))
        listed = answer["Instances"]["Instance"]
        found.update({i["InstanceName"]: i for i in listed})
        if page * 100 >= answer.get("TotalCount", 0) or not listed:
            return found
        page += 1


def init(endpoint: str, credential: api.Credential, region: str, role: str, policies: list[str], wanted: dict[str, str],
         say: Callable[[str], None], timeout: float = 60.0) -> dict[str, str]:
    """Role, policies, instances at their IPs, role attached; what exists already is left as it is.
    Returns {name: instance id}."""
    _wait_gateway(endpoint, credential, region, timeout)
    try:
        _call(endpoint, credential, "ram", "GetRole", RoleName=role)
    except api.ApiError as exc:
        if exc.code != "EntityNotExist.Role":
            raise
        _call(endpoint, credential, "ram", "CreateRole", RoleName=role, AssumeRolePolicyDocument=ROLE_TRUST)
        say(f"created role {role}")
    attached = {p["PolicyName"] for p in _call(endpoint, credential, "ram", "ListPoliciesForRole", RoleName=role)["Policies"]["Policy"]}
    for policy in policies:
        if policy not in attached:
            _call(endpoint, credential, "ram", "AttachPolicyToRole", PolicyType="System", PolicyName=policy, RoleName=role)
            say(f"attached {policy} to {role}")
    have = described(endpoint, credential, region)
    for name, ip in wanted.items():
        if name not in have:
            _call(endpoint, credential, "ecs", "RunInstances", RegionId=region, InstanceName=name, PrivateIpAddress=ip)
            say(f"launched {name} at {ip}")
    deadline = time.monotonic() + timeout
    while True:
        have = described(endpoint, credential, region)
        pending = [n for n in wanted if have.get(n, {}).get("Status") != "Running"]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise DeployError(f"not Running within {timeout:g} s: {', '.join(pending)}")
        time.sleep(0.2)
    ids = {name: have[name]["InstanceId"] for name in wanted}
    for name, instance_id in ids.items():
        ip = have[name]["VpcAttributes"]["PrivateIpAddress"]["IpAddress"]
        if ip != [wanted[name]]:
            raise DeployError(f"{name} ({instance_id}) has private IP {ip}, not {wanted[name]}: delete the ecs volume to start over")
        current = _call(endpoint, credential, "ecs", "DescribeInstanceRamRole", RegionId=region, InstanceIds=json.dumps([instance_id]))
        roles = [r.get("RamRoleName", "") for r in current["InstanceRamRoleSets"]["InstanceRamRoleSet"]]
        if role not in roles:
            _call(endpoint, credential, "ecs", "AttachInstanceRamRole", RegionId=region, RamRoleName=role,
                  InstanceIds=json.dumps([instance_id]))
            say(f"attached {role} to {name} ({instance_id})")
    return ids


# -- health -----------------------------------------------------------------------------------

def health(role: str, port: int = 0) -> str | None:
    """None when ``role``'s container is healthy, else why not."""
    if role == "broker":
        try:
            with socket.create_connection(("127.0.0.1", port or TOOLS_PORT), timeout=2) as s:
                s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 5, 0, 0]))  # CONNECT, no client id
                answer = s.recv(4)
            return None if answer[:1] == b"\x20" else f"no CONNACK: {answer!r}"
        except OSError as exc:
            return f"broker: {exc}"
    if role in ("gateway", "oss"):
        return _http(f"http://127.0.0.1:{port}/", any_status=True)
    if role == "instance":
        return _http(f"{METADATA}/latest/meta-data/instance-id")
    if role == "service":  # ram, sts, ecs, the metadata agent: ready on the bus (service.mark_ready)
        ready = os.environ.get("RAMSIM_READY_FILE") or READY_FILE
        try:
            pid = int(Path(ready).read_text())
        except (OSError, ValueError):
            return f"not ready: no {ready}"
        return None if Path(f"/proc/{pid}").exists() else f"not ready: pid {pid} is gone"
    return f"unknown role {role!r}"


def _http(url: str, any_status: bool = False) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2):
            return None
    except urllib.error.HTTPError as exc:
        return None if any_status else f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


# -- the command ------------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    p = sub.add_parser("deploy", description="What compose.yaml's containers run besides the services: `secrets DIR` (on the "
                       "host) makes or keeps the cluster's secrets and writes one env file per container and cluster.json; "
                       "`broker` writes Mosquitto's files and runs it; `init` creates the role and the instances at their "
                       "private IPs, once; `health ROLE` is a container's healthcheck. See deploy/README.md.")
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser("secrets", help="make (or keep) the cluster's secrets; write DIR/<container>.env and DIR/cluster.json")
    s.add_argument("directory", type=Path, nargs="?", default=Path("deploy/secrets"))
    for what, default in (("gateway", 8080), ("oss", 8081), ("broker", 1883)):
        s.add_argument(f"--{what}-port", type=int, default=int(os.environ.get(f"RAMSIM_{what.upper()}_PORT", default)),
                       help=f"the port compose publishes the {what} on at 127.0.0.1 (default $RAMSIM_{what.upper()}_PORT or {default})")
    b = actions.add_parser("broker", help="(in the mosquitto container) write its config from RAMSIM_BROKER_PASSWORDS; run it")
    b.add_argument("--state-dir", type=Path, default=Path(os.environ.get("RAMSIM_STATE_DIR") or STATE_DIR))
    i = actions.add_parser("init", help="(the init container) role, policies, instances at their IPs with the role; idempotent")
    i.add_argument("--gateway-url", default="http://gateway:8080")
    i.add_argument("--region-id", default="cn-hangzhou")
    i.add_argument("--role", default="MyApplicationRole")
    i.add_argument("--policy", action="append", default=[], help="a system policy for the role (repeatable; default AliyunOSSFullAccess)")
    i.add_argument("--instance", action="append", default=[], metavar="NAME=IP", help="an instance and its private IP (repeatable)")
    i.add_argument("--timeout", type=float, default=60.0)
    h = actions.add_parser("health", help="a container's healthcheck: exit 0 when healthy")
    h.add_argument("role", nargs="?", choices=("broker", "service", "gateway", "oss", "instance"),
                   default=os.environ.get("RAMSIM_HEALTH", "service"), help="what to check (default $RAMSIM_HEALTH or service)")
    h.add_argument("--port", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(f"[ramsim deploy] {line}", file=sys.stderr, flush=True)

    if args.action == "secrets":
        write_secrets(args.directory, gateway_port=args.gateway_port, oss_port=args.oss_port, broker_port=args.broker_port, say=say)
        say(f"wrote keys.json, one <container>.env each and cluster.json (for the host's ramsim commands) in {args.directory}")
        return 0
    if args.action == "broker":
        run_broker(args.state_dir)
        return 0
    if args.action == "init":
        key_id, secret = os.environ.get("RAMSIM_ROOT_ACCESS_KEY_ID", ""), os.environ.get("RAMSIM_ROOT_ACCESS_KEY_SECRET", "")
        if not key_id or not secret:
            raise DeployError("RAMSIM_ROOT_ACCESS_KEY_ID/SECRET are not set (compose reads them from init.env)")
        ids = init(args.gateway_url, api.Credential(key_id, secret), args.region_id, args.role,
                   args.policy or ["AliyunOSSFullAccess"], parse_instances(args.instance), say, args.timeout)
        print(json.dumps(ids, sort_keys=True), flush=True)
        return 0
    why = health(args.role, args.port)
    if why:
        print(why, file=sys.stderr)
        return 1
    return 0
