"""I/O shell: ``ramsim up``: a private Mosquitto and every service as its own process.

:func:`running_cluster` is an async context manager (used by ``ramsim up``, ``ramsim demo``
and the end-to-end tests): it makes the cluster's broker identities (:mod:`services.cli.broker`:
a random password for each service, each metadata agent, the operator and the observer) and
writes Mosquitto's password, ACL and config files (loopback only, TCP_NODELAY, no anonymous
access), starts the broker on a free port, starts ram, sts, ecs, the gateway, oss and one
metadata agent per host (each given its own identity in ``RAMSIM_BROKER_URL``), waits until
each answers a Ping on the bus (as the operator), optionally launches instances, writes the
cluster file (with the operator's broker URL), and on exit stops everything it started
(children also get SIGTERM if this process dies, so nothing is orphaned).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from protocol import ids
from protocol.messages.common import Ping, PingOk
from services.cli import api, broker, cluster
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from services.runtime.settings import Settings

INSTALL_HINT = ("Mosquitto (the MQTT broker) is not installed. Install it with\n"
                "  sudo apt-get install -y mosquitto      # Debian, Ubuntu\n"
                "  brew install mosquitto                 # macOS\n"
                "or point ramsim at it with RAMSIM_MOSQUITTO=/path/to/mosquitto.")


class UpError(Exception):
    """The cluster could not start; the message says why and what to do."""


@dataclass
class Options:
    state_dir: Path = Path(cluster.DEFAULT_STATE_DIR)
    cluster_file: Path | None = None
    instances: int = 1
    hosts: int = 1
    time_scale: float = 1.0
    credential_lifetime: int = 3600
    refresh_before: int = 1800
    region_id: str = "cn-hangzhou"
    account_id: str = ""
    log_format: str = "json"
    log_level: str = "info"
    ready_timeout: float = 30.0
    progress: Callable[[str], None] = field(default=lambda line: None)


def find_mosquitto() -> str:
    """$RAMSIM_MOSQUITTO, else mosquitto on PATH, else the usual sbin locations."""
    explicit = os.environ.get("RAMSIM_MOSQUITTO")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise UpError(f"RAMSIM_MOSQUITTO={explicit} is not an executable file.\n{INSTALL_HINT}")
        return explicit
    found = shutil.which("mosquitto") or \
        next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if not found:
        raise UpError(INSTALL_HINT)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_conf(port: int, state_dir: Path, auth: broker.BrokerFiles | None = None) -> str:
    """The broker config ramsim writes. ``set_tcp_nodelay true`` is required (see DESIGN).

    With ``auth`` (what ``ramsim up`` always passes) only the identities in its password file
    may connect, each confined by its ACL file; without it (the tests' bare brokers for the
    bus contract) the broker is anonymous."""
    access = ["allow_anonymous false", f"password_file {auth.password_file}", f"acl_file {auth.acl_file}"] \
        if auth is not None else ["allow_anonymous true"]
    # Started as root, Mosquitto switches to the `mosquitto` user before it reads the password
    # and ACL files (0600, ours) and opens its log (in our state dir): it would fail on both.
    # Keep it as the user who started it, as it does for anyone else.
    as_root = ["user root"] if getattr(os, "geteuid", lambda: -1)() == 0 else []
    return "\n".join([
        f"listener {port} 127.0.0.1",
        *as_root,
        *access,
        "retain_available false",
        "set_tcp_nodelay true",
        "persistence false",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"log_dest file {state_dir / 'logs' / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice",
        "",
    ])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path


@dataclass
class Cluster:
    options: Options
    file: cluster.ClusterFile
    path: Path
    processes: list[Process]
    identities: broker.Identities
    broker_port: int

    def broker_url(self, identity: str = broker.OPERATOR) -> str:
        """The broker URL (with its password) of one of the cluster's identities."""
        return self.identities.url(identity, "127.0.0.1", self.broker_port)

    @property
    def credential(self) -> api.Credential:
        return api.Credential(self.file.access_key_id, self.file.access_key_secret)

    def call(self, product: str, action: str, credential: api.Credential | None = None, **params: str) -> dict:
        return api.call(self.file.gateway_url, product, action, params, credential or self.credential)


async def _spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                                                    preexec_fn=_die_with_parent)
    return Process(name, proc, log_path)


async def _wait_port(port: int, deadline: float, broker: Process) -> None:
    while True:
        if broker.proc.returncode is not None:
            raise UpError(f"mosquitto exited with code {broker.proc.returncode}; see {broker.log}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UpError(f"mosquitto did not listen on port {port} in time; see {broker.log}") from None
            await asyncio.sleep(0.05)


async def _wait_ready(client: BusClient, processes: list[Process], deadline: float) -> None:
    """Ping every node until it answers; fail fast if one exits."""
    waiting = {p.name for p in processes if p.name != "mosquitto"}
    while waiting:
        for p in processes:
            if p.proc.returncode is not None:
                tail = p.log.read_text(errors="replace").strip().splitlines()[-5:]
                raise UpError(f"{p.name} exited with code {p.proc.returncode}; last lines of {p.log}:\n  " + "\n  ".join(tail))
        answers = await asyncio.gather(*(client.request(name, Ping(), timeout=0.5) for name in sorted(waiting)))
        waiting -= {a.node for a in answers if isinstance(a, PingOk)}
        if waiting and time.monotonic() > deadline:
            raise UpError(f"not ready in time: {', '.join(sorted(waiting))}; logs are in {processes[0].log.parent}")
        if waiting:
            await asyncio.sleep(0.02)  # a node answered "starting": ask again shortly


async def _stop(processes: list[Process], grace: float = 5.0) -> None:
    for p in reversed(processes):
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
    for p in reversed(processes):
        try:
            await asyncio.wait_for(p.proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.proc.kill()
            await p.proc.wait()


@contextlib.asynccontextmanager
async def running_cluster(options: Options) -> AsyncIterator[Cluster]:
    say = options.progress
    mosquitto = find_mosquitto()
    state = options.state_dir.resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    path = (options.cluster_file or state / "cluster.json").resolve()
    port, gateway_port, oss_port = free_port(), free_port(), free_port()
    hosts = [f"host-{i}" for i in range(1, options.hosts + 1)]
    identities = broker.Identities.generate(hosts)
    conf = state / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port, state, broker.write_files(state, identities)))
    origin = time.time()
    settings = Settings(
        broker_url=f"mqtt://127.0.0.1:{port}", state_dir=str(state), time_scale=options.time_scale, time_origin=origin,
        log_format=options.log_format, log_level=options.log_level,
        account_id=options.account_id or ids.numeric_id(os.urandom(8), 16), region_id=options.region_id,
        zone_id=f"{options.region_id}-i", credential_lifetime=options.credential_lifetime,
        refresh_before=options.refresh_before)
    root_id, root_secret = ids.access_key_id(os.urandom(20)), ids.secret(os.urandom(30))
    base_env = {**os.environ, **settings.environment(), "PYTHONUNBUFFERED": "1"}
    base_env.pop("RAMSIM_ROOT_ACCESS_KEY_SECRET", None)
    processes: list[Process] = []
    try:
        say(f"starting mosquitto on 127.0.0.1:{port}")
        processes.append(await _spawn("mosquitto", [mosquitto, "-c", str(conf)], base_env, state / "logs" / "mosquitto.out"))
        deadline = time.monotonic() + options.ready_timeout
        await _wait_port(port, deadline, processes[0])
        py = sys.executable
        plan = [("ram", {"RAMSIM_ROOT_ACCESS_KEY_ID": root_id, "RAMSIM_ROOT_ACCESS_KEY_SECRET": root_secret}),
                ("sts", {"RAMSIM_STS_SIGNING_KEY": os.urandom(32).hex()}), ("ecs", {}), ("gateway", {"RAMSIM_HTTP_PORT": str(gateway_port)}),
                ("oss", {"RAMSIM_HTTP_PORT": str(oss_port)})]
        plan += [(broker.host_identity(host), {"RAMSIM_HOST_ID": host, "RAMSIM_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"})
                 for host in hosts]
        for name, extra in plan:
            module = name.split("-")[0]
            env = {**base_env, **extra, "RAMSIM_BROKER_URL": identities.url(name, "127.0.0.1", port)}  # node id = identity
            processes.append(await _spawn(name, [py, "-m", f"services.{module}"], env, state / "logs" / f"{name}.log"))
        say(f"started {', '.join(n for n, _ in plan)}; waiting until each answers on the bus")
        operator_url = identities.url(broker.OPERATOR, "127.0.0.1", port)
        bus = await MqttBus.connect(operator_url, client_id=f"ramsim-up-{os.getpid()}", persistent=False)
        try:
            client = await BusClient(bus, broker.OPERATOR, ScaledClock(options.time_scale, origin)).start()
            await _wait_ready(client, processes, deadline)
        finally:
            await bus.close()
        file = cluster.ClusterFile(
            broker_url=operator_url, gateway_url=f"http://127.0.0.1:{gateway_port}", account_id=settings.account_id,
            oss_url=f"http://127.0.0.1:{oss_port}",
            region_id=settings.region_id, access_key_id=root_id, access_key_secret=root_secret, state_dir=str(state),
            time_scale=options.time_scale, time_origin=origin, pid=os.getpid(),
            services={p.name: p.proc.pid for p in processes})
        running = Cluster(options, file, path, processes, identities, port)
        if options.instances:
            say(f"launching {options.instances} instance(s)")
            await asyncio.to_thread(launch_instances, running, options.instances, deadline)
        cluster.save(path, file)
        say(f"cluster ready; cluster file {path}")
        yield running
    finally:
        say("stopping the cluster")
        await _stop(processes)
        with contextlib.suppress(FileNotFoundError):
            if path.exists() and cluster.load(path).pid == os.getpid():
                path.unlink()


def launch_instances(running: Cluster, count: int, deadline: float) -> list[str]:
    """RunInstances as root, then wait until each is Running (its metadata view serves)."""
    answer = running.call("ecs", "RunInstances", RegionId=running.file.region_id, Amount=str(count))
    instance_ids = answer["InstanceIdSets"]["InstanceIdSet"]
    wait_running(running, instance_ids, deadline)
    return instance_ids


def wait_running(running: Cluster, instance_ids: list[str], deadline: float) -> None:
    while True:
        answer = running.call("ecs", "DescribeInstances", RegionId=running.file.region_id,
                              InstanceIds=json.dumps(instance_ids), PageSize="100")
        if all(i["Status"] == "Running" for i in answer["Instances"]["Instance"]):
            return
        if time.monotonic() > deadline:
            raise UpError(f"instances not Running in time: {instance_ids}")
        time.sleep(0.05)


async def up(options: Options) -> int:
    """``ramsim up``: run until Ctrl-C / SIGTERM, or until a service dies."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_cluster(options) as running:
        f = running.file
        print(f"ramsim cluster up: account {f.account_id}, region {f.region_id}\n"
              f"  broker   {broker.without_password(f.broker_url)} (password in the cluster file)\n"
              f"  gateway  {f.gateway_url}\n  oss      {f.oss_url}\n  cluster  {running.path}\n"
              f"  logs     {Path(f.state_dir) / 'logs'}\n"
              f"Try: ramsim instances   |   ramsim demo   |   ramsim ecs DescribeInstances --RegionId {f.region_id}\n"
              "Ctrl-C stops everything.", flush=True)
        waits = [asyncio.create_task(stop.wait())] + [asyncio.create_task(p.proc.wait()) for p in running.processes]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        dead = [p for p in running.processes if p.proc.returncode is not None]
        for p in dead:
            print(f"{p.name} exited with code {p.proc.returncode}; see {p.log}. Stopping the cluster.", file=sys.stderr)
        return 1 if dead else 0
