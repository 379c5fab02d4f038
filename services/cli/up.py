"""I/O shell: ``ramsim up``: a private Mosquitto and every service as its own process, kept running.

:func:`running_cluster` is an async context manager (used by ``ramsim up``, ``ramsim demo``
and the end-to-end tests). It locks the state directory (one cluster per directory) and
resumes the cluster that ran there before (:mod:`services.cli.keys`: the same account, root
AccessKey, STS and state keys, broker passwords, time origin and, while still free, ports; the
services read their own state back from ``<node>.db``), or makes a new one; ``--reset``
deletes the previous one's state first. It makes the cluster's broker identities
(:mod:`services.cli.broker`) and writes Mosquitto's password, ACL and config files (loopback
only, TCP_NODELAY, no anonymous access), starts the broker, starts ram, sts, ecs, the gateway,
oss and one metadata agent per host (each given its own identity in ``RAMSIM_BROKER_URL``),
waits until each answers a Ping on the bus (as the operator), and from then on supervises
them: a child that exits is started again with the same argv, environment and log, after a
backoff, and a crash loop stops the cluster (:mod:`services.cli.supervision` decides). It
optionally launches instances, writes the cluster file (with the operator's broker URL and
every child's pid, rewritten when one is restarted), and on exit cancels the supervisor first
(stopping is not crashing) and stops everything it started (children also get SIGTERM if this
process dies, so nothing is orphaned).

With ``--broker URL`` (:attr:`Options.broker`) no Mosquitto is started: the children connect to
that broker, with their identities provisioned there by :mod:`services.cli.rabbitmq`
(``--broker-setup rabbitmqctl``) or written down for an operator (deploy/README.md, "Past one broker").
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from protocol.messages.common import Ping, PingOk
from services.cli import api, broker, cluster, keys, supervision
from services.cli.errors import CliError
from services.metadata import netns
from services.runtime import logs
from services.runtime import private
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from services.runtime.settings import Settings

INSTALL_HINT = ("Mosquitto (the MQTT broker) is not installed. Install it with\n"
                "  sudo apt-get install -y mosquitto      # Debian, Ubuntu\n"
                "  brew install mosquitto                 # macOS\n"
                "or point ramsim at it with RAMSIM_MOSQUITTO=/path/to/mosquitto.")
LOCK_FILE = "up.lock"


PORTS = ("broker", "gateway", "oss")  # the loopback ports a cluster listens on besides its metadata views
METADATA_MODES = ("port", "shared", "netns")
INSTANCES_PER_HOST = 2000  # the default --hosts: one metadata agent per this many instances
SHARED_ABOVE = 100         # the default --metadata-mode: shared (one port per agent) above this many instances
RUN_BATCH = 100            # RunInstances' Amount is 1-100, as Alibaba's
LAUNCHERS = 4              # RunInstances calls in flight at once while launching


def host_count(options: "Options") -> int:
    """``--hosts``, or by default one metadata agent per :data:`INSTANCES_PER_HOST` instances."""
    return options.hosts or max(1, -(-options.instances // INSTANCES_PER_HOST))


def mode_for(options: "Options") -> str:
    """``--metadata-mode``, or by default ``shared`` above :data:`SHARED_ABOVE` instances, else ``port``."""
    return options.metadata_mode or ("shared" if options.instances > SHARED_ABOVE else "port")


class UpError(CliError):
    """The cluster could not start; the message says why and what to do."""


@dataclass
class Options:
    state_dir: Path = Path(cluster.DEFAULT_STATE_DIR)
    cluster_file: Path | None = None
    instances: int = 1
    hosts: int = 0  # 0: one per INSTANCES_PER_HOST instances (at least one), see :func:`host_count`
    time_scale: float = 1.0
    credential_lifetime: int = 3600
    refresh_before: int = 1800
    refresh_jitter: float = 0.0  # a refresh comes up to this fraction of refresh_before earlier, at random (the CLI's default: 0.1)
    region_id: str = "cn-hangzhou"
    account_id: str = ""
    log_format: str = "json"
    log_level: str = "info"
    ready_timeout: float = 30.0
    reset: bool = False  # delete the previous cluster's state in state_dir before starting (else it is resumed)
    metadata_mode: str = ""  # port, shared or netns ("": shared above SHARED_ABOVE instances, else port); see :func:`mode_for`
    ports: dict[str, int] = field(default_factory=dict)  # "broker"/"gateway"/"oss": a fixed loopback port (else kept or free)
    restart_policy: supervision.RestartPolicy = supervision.RestartPolicy()
    proxies: tuple[str, ...] = ()  # children that reach the broker through a TCP proxy (services/experiment/proxy.py)
    broker: str = ""  # an external broker (mqtt://host:port[?version=3.1.1]) instead of starting Mosquitto
    broker_vhost: str | None = None  # its RabbitMQ vhost (None: ramsim-<account>; "": plain usernames = identities)
    broker_setup: str = "none"  # "rabbitmqctl": provision the identities there (services/cli/rabbitmq.py)
    sts_workers: int = 1  # STS processes sharing its inbox with a shared subscription (children sts-1 … sts-N)
    gateway_workers: int = 1  # gateway processes sharing its inbox and its HTTP port (SO_REUSEPORT; gateway-1 … gateway-N)
    console: bool = False  # also start the web console (services/console); `ramsim up` does unless --no-console
    console_port: int = 0  # its loopback port (refused when taken; 0: any free one)
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


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now. SO_REUSEADDR, as Mosquitto and
    aiohttp bind: a previous run's connections lingering in TIME_WAIT do not hold the port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def mosquitto_conf(port: int, state_dir: Path, auth: broker.BrokerFiles | None = None, services_port: int = 0,
                   bind: str = "127.0.0.1", log_file: Path | None = None) -> str:
    """The broker config ramsim writes. ``set_tcp_nodelay true`` is required (see DESIGN).

    With ``auth`` (what ``ramsim up`` always passes) only the identities in its password file
    may connect, each confined by its ACL file, and client ids are bound to identities: the
    services listener (``services_port``) replaces a client's id with its username, the tools
    listener (``port``) takes tools' own ids, and every id sent must start with
    ``broker.CLIENT_ID_PREFIX``, which no username does (services/cli/broker.py says why).
    Without ``auth`` (the tests' bare brokers for the bus contract) the broker is anonymous."""
    if auth is not None and not services_port:
        raise ValueError("a broker with identities needs its services listener")
    access = ["allow_anonymous false", f"password_file {auth.password_file}", f"acl_file {auth.acl_file}",
              f"clientid_prefixes {broker.CLIENT_ID_PREFIX}",
              f"listener {services_port} {bind}", "use_username_as_clientid true"] if auth is not None else ["allow_anonymous true"]
    # Started as root, Mosquitto switches to the `mosquitto` user before it reads the password
    # and ACL files (0600, ours) and opens its log (in our state dir): it would fail on both.
    # Keep it as the user who started it, as it does for anyone else.
    as_root = ["user root"] if getattr(os, "geteuid", lambda: -1)() == 0 else []
    return "\n".join([
        f"listener {port} {bind}",
        *as_root,
        *access,
        "retain_available false",
        "set_tcp_nodelay true",
        # Sessions, subscriptions and queued QoS 1 messages survive a broker restart: saved at
        # shutdown and at most a second apart while running (a kill -9 loses at most that second).
        "persistence true",
        f"persistence_location {state_dir}/",
        "persistence_file mosquitto.db",
        "autosave_interval 1",
        "max_queued_messages 100000",
        "max_inflight_messages 100",
        f"log_dest file {log_file or state_dir / 'logs' / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        "",
    ])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """One child of the cluster: its current process, and how to start it again (a restart
    replaces ``proc`` in place, so holders of this object always see the live one)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # holds its secrets
    started_at: float = 0.0  # time.monotonic() of the last start: a long run resets the backoff

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Cluster:
    options: Options
    file: cluster.ClusterFile
    path: Path
    processes: list[Process]
    identities: broker.Identities
    broker_port: int
    restarts: dict[str, int] = field(default_factory=dict)   # name -> times the supervisor started it again
    resumed: bool = False                                    # a previous cluster's state dir, not a new cluster
    supervisor: asyncio.Task[str] | None = None              # ends only on a crash loop, returning what to tell
    announced: bool = False                                  # the cluster file is written (rewrite it on restarts)
    proxies: dict[str, Any] = field(default_factory=dict)    # child name -> its link's Proxy (Options.proxies)
    services_port: int = 0                                   # the broker's services listener (client id = username)
    endpoint: broker.Endpoint | None = None                  # where tools connect (None: the Mosquitto it started)

    def broker_url(self, identity: str = broker.OPERATOR) -> str:
        """The broker URL (with its password) of one of the cluster's identities."""
        return self.identities.at(self.endpoint or broker.Endpoint("127.0.0.1", self.broker_port), identity)

    @property
    def external(self) -> bool:
        """Whether it runs on a broker it did not start (``--broker``)."""
        return bool(self.options.broker)

    def process(self, name: str) -> Process:
        """The child called ``name`` (``mosquitto``, ``sts``, ``metadata-host-1``, …)."""
        return next(p for p in self.processes if p.name == name)

    @property
    def credential(self) -> api.Credential:
        return api.Credential(self.file.access_key_id, self.file.access_key_secret)

    def call(self, product: str, action: str, credential: api.Credential | None = None, **params: str) -> dict:
        return api.call(self.file.gateway_url, product, action, params, credential or self.credential)


async def _exec(argv: list[str], env: dict[str, str], log_path: Path) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
                                                    preexec_fn=_die_with_parent)


async def _spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Process:
    proc = await _exec(argv, env, log_path)
    return Process(name, proc, log_path, argv, env, time.monotonic())


async def _respawn(child: Process) -> None:
    """Start ``child`` again exactly as it was first started (its log is appended to)."""
    child.proc = await _exec(child.argv, child.env, child.log)
    child.started_at = time.monotonic()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


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
    """Ping every node until it answers; fail fast if one exits (before supervision starts, an
    exit is a broken setup, not a crash to ride out). The workers of one node id (``sts-1``, …)
    are one node on the bus: it is ready when as many workers (told apart by ``started_at``) answered."""
    need: dict[str, int] = {}
    for p in processes:
        if p.name != "mosquitto":
            need[node_of(p.name)] = need.get(node_of(p.name), 0) + 1
    seen: dict[str, set[float]] = {node: set() for node in need}
    waiting = set(need)
    while waiting:
        for p in processes:
            if p.proc.returncode is not None:
                raise UpError(f"{p.name} exited with code {p.proc.returncode}; last lines of {p.log}:\n  {_tail(p.log)}")
        asked = [name for name in sorted(waiting) for _ in range(need[name])]
        answers = await asyncio.gather(*(client.request(name, Ping(), timeout=0.5) for name in asked))
        for a in answers:
            if isinstance(a, PingOk) and a.node in seen:
                seen[a.node].add(a.started_at)
        waiting = {node for node in need if len(seen[node]) < need[node]}
        if waiting and time.monotonic() > deadline:
            raise UpError(f"not ready in time: {', '.join(sorted(waiting))}; logs are in {processes[0].log.parent}")
        if waiting:
            await asyncio.sleep(0.02)  # a node answered "starting": ask again shortly


def node_of(child: str) -> str:
    """The node id a child runs as: a worker ``sts-2`` is node ``sts``."""
    node, _, number = child.rpartition("-")
    return node if node in broker.WORKERS and number.isdigit() else child


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


# -- supervision ------------------------------------------------------------------------------

async def _supervise(running: Cluster) -> str:
    """Keep every child running (one watcher each) until one is in a crash loop; return what
    to tell the user. Cancelled (before the ordered shutdown) to stop supervising."""
    watchers = [asyncio.create_task(_watch(running, child), name=f"supervise:{child.name}") for child in running.processes]
    try:
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _watch(running: Cluster, child: Process) -> str:
    """Restart ``child`` whenever it exits, as the policy says; return when it gives up."""
    say, policy, history = running.options.progress, running.options.restart_policy, supervision.History()
    while True:
        code = await child.proc.wait()
        decision, history = supervision.on_exit(policy, history, started_at=child.started_at, exited_at=time.monotonic())
        if isinstance(decision, supervision.GiveUp):
            return (f"{child.name} {_exit_text(code)}: {decision.exits} exits within {decision.window:g} s is a crash loop, "
                    f"so the cluster stops. Last lines of {child.log}:\n  {_tail(child.log)}")
        say(f"{child.name} (pid {child.proc.pid}) {_exit_text(code)}; restarting it in {decision.delay:g} s "
            f"(attempt {decision.attempt})")
        await asyncio.sleep(decision.delay)
        spawning = asyncio.ensure_future(_respawn(child))
        try:
            await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Cancelled mid-spawn (the cluster is stopping): let the spawn finish so that the new
            # process is in child.proc, where the ordered shutdown will stop it too.
            with contextlib.suppress(Exception):
                await spawning
            raise
        except OSError as exc:
            say(f"cannot start {child.name} again: {exc}")
            child.started_at = time.monotonic()  # its old, exited process stands in: the next wait() counts another exit
            continue
        running.restarts[child.name] = running.restarts.get(child.name, 0) + 1
        running.file.services[child.name] = child.proc.pid
        if running.announced:
            try:
                cluster.save(running.path, running.file)
            except OSError as exc:  # a stale pid in the cluster file is no reason to stop supervising
                say(f"cannot update the cluster file {running.path}: {exc}")
        say(f"{child.name} restarted (pid {child.proc.pid}, restart {running.restarts[child.name]})")


# -- state: resume or start afresh ------------------------------------------------------------

@contextlib.contextmanager
def _state_lock(state: Path) -> Iterator[None]:
    """One cluster per state directory: an exclusive lock on ``<state>/up.lock`` while it runs
    (released by the kernel if this process dies; the descriptor is not inherited by children),
    so a second ``ramsim up`` (or ``--reset``) cannot pull the state from under a running one."""
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UpError(f"another `ramsim up` (pid {holder}) is running in {state}: stop it first, "
                          "or give this one its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _cluster_keys(options: Options, state: Path) -> tuple[keys.Keys, bool]:
    """The kept keys of the cluster in ``state`` (resumed: True), or a new cluster's."""
    say = options.progress
    if options.reset:
        deleted = keys.reset(state)
        say(f"--reset: deleted the previous cluster's state in {state} ({', '.join(deleted)})" if deleted
            else f"--reset: no previous cluster state in {state}")
    try:
        kept = keys.load(state)
    except keys.KeysError as exc:
        raise UpError(str(exc)) from None
    if kept is None:
        leftovers = keys.service_databases(state)
        if leftovers:
            raise UpError(f"{state} holds service state ({', '.join(p.name for p in leftovers)}) but no {keys.FILE}: the "
                          "secrets it was made under are lost. `ramsim up --reset` deletes it and starts a new cluster.")
        new = keys.generate(account_id=options.account_id, time_origin=time.time(), time_scale=options.time_scale,
                            broker_port=0, gateway_port=0, oss_port=0)
        _choose_ports(new, options)
        return new, False
    problem = keys.resume_problem(kept, account_id=options.account_id, time_scale=options.time_scale)
    if problem:
        raise UpError(f"cannot resume the cluster in {state}: {problem}; or `ramsim up --reset` to start a new one there")
    if options.time_scale > kept.time_scale:
        say(f"time scale {kept.time_scale:g} -> {options.time_scale:g}: simulated time jumps ahead")
        kept.time_scale = options.time_scale
    _choose_ports(kept, options)
    say(f"resuming the cluster in {state} (account {kept.account_id}); `ramsim up --reset` starts a new one")
    return kept, True


def _choose_ports(kept: keys.Keys, options: Options) -> None:
    """Each of the broker's, gateway's and OSS's port: the one asked for (refused when taken),
    else the one kept from before while it is free, else any free one."""
    for what in PORTS:
        attr, asked, previous = f"{what}_port", options.ports.get(what, 0), getattr(kept, f"{what}_port")
        if asked:
            if not port_free(asked):
                raise UpError(f"--{what}-port {asked}: 127.0.0.1:{asked} is taken by another program; free it, choose "
                              f"another port, or leave --{what}-port out for a free one")
            setattr(kept, attr, asked)
        elif not previous or not port_free(previous):
            setattr(kept, attr, _another_free_port(kept))
            if previous:
                options.progress(f"the {what}'s previous port {previous} is taken; it gets {getattr(kept, attr)}")
    if not kept.services_port or not port_free(kept.services_port) or kept.services_port in (kept.broker_port, kept.gateway_port, kept.oss_port):
        kept.services_port = _another_free_port(kept)  # the broker's services listener: only the cluster's own children use it


def _another_free_port(kept: keys.Keys) -> int:
    """A free port none of the cluster's others is (nothing listens on them yet, so the kernel
    may hand the same free port out twice)."""
    ours = {kept.broker_port, kept.gateway_port, kept.oss_port, kept.services_port}
    while (port := free_port()) in ours:
        pass
    return port


def _private_state(state: Path, say: Callable[[str], None]) -> Path:
    """Make the state directory (under the private umask), and take others' permissions off
    whatever an earlier run left there with looser ones."""
    (state / "logs").mkdir(parents=True, exist_ok=True)
    loose = [p for p in private.tighten(state) if p != state]  # a directory the user made for it is no news
    if loose:
        say(f"made {len(loose)} file(s) in {state} private to their owner (0700 directories, 0600 files)")
    return state


def _secret_variables() -> set[str]:
    """``RAMSIM_*`` names of the secret settings: each child gets only the ones it needs."""
    return {f"RAMSIM_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.metadata.get("secret")}


# -- the cluster ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running_cluster(options: Options) -> AsyncIterator[Cluster]:
    say = options.progress
    mosquitto = "" if options.broker else find_mosquitto()
    metadata_mode = mode_for(options)
    if metadata_mode == "netns" and netns.available():
        raise UpError(f"--metadata-mode netns: {netns.available()}")
    if options.gateway_workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise UpError("--gateway-workers needs SO_REUSEPORT (the workers share the gateway's port), which this platform lacks")
    state = options.state_dir.resolve()
    path = (options.cluster_file or state / "cluster.json").resolve()
    hosts = [f"host-{i}" for i in range(1, host_count(options) + 1)]
    with private.private_files(), _state_lock(_private_state(state, say)):  # 0700/0600: see services/runtime/private.py
        kept, resumed = _cluster_keys(options, state)
        port, gateway_port, oss_port = kept.broker_port, kept.gateway_port, kept.oss_port
        identities = keys.identities(kept, hosts, workers={"sts": options.sts_workers, "gateway": options.gateway_workers})
        keys.save(state, kept)  # before any service writes state under these keys
        if options.broker:
            tools = services = _external_broker(options, kept.account_id, identities, state)
            port = tools.port
        else:
            tools, services = broker.Endpoint("127.0.0.1", port), broker.Endpoint("127.0.0.1", kept.services_port)
            conf = state / "mosquitto.conf"
            conf.write_text(mosquitto_conf(port, state, broker.write_files(state, identities), services_port=kept.services_port))
        settings = Settings(
            broker_url=f"mqtt://127.0.0.1:{port}", state_dir=str(state), time_scale=kept.time_scale, time_origin=kept.time_origin,
            log_format=options.log_format, log_level=options.log_level, account_id=kept.account_id, region_id=options.region_id,
            zone_id=f"{options.region_id}-i", credential_lifetime=options.credential_lifetime,
            refresh_before=options.refresh_before, refresh_jitter=options.refresh_jitter, metadata_mode=metadata_mode)
        base_env = {**os.environ, **settings.environment(), "PYTHONUNBUFFERED": "1"}
        for name in _secret_variables():
            base_env.pop(name, None)
        processes: list[Process] = []
        running: Cluster | None = None
        proxies: dict[str, Any] = {}
        try:
            deadline = time.monotonic() + options.ready_timeout
            if not options.broker:
                say(f"starting mosquitto on 127.0.0.1:{port}")
                processes.append(await _spawn("mosquitto", [mosquitto, "-c", str(conf)], base_env, state / "logs" / "mosquitto.out"))
                await _wait_port(port, deadline, processes[0])
            py = sys.executable
            plan = [("ram", {"RAMSIM_ROOT_ACCESS_KEY_ID": kept.root_access_key_id,
                             "RAMSIM_ROOT_ACCESS_KEY_SECRET": kept.root_access_key_secret}),
                    *_workers("sts", options.sts_workers, {"RAMSIM_STS_SIGNING_KEY": kept.sts_signing_key}), ("ecs", {}),
                    *_workers("gateway", options.gateway_workers, {"RAMSIM_HTTP_PORT": str(gateway_port)}), ("oss", {"RAMSIM_HTTP_PORT": str(oss_port)})]
            plan += [(broker.host_identity(host), {"RAMSIM_HOST_ID": host, "RAMSIM_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}"})
                     for host in hosts]
            console_url = _console_plan(plan, options, kept, gateway_port, path, identities.at(tools, broker.TRACE))
            proxies = await _start_proxies(options.proxies, [n for n, _ in plan], services.port)
            for name, extra in plan:
                module = name.split("-")[0]
                via = dataclasses.replace(services, host="127.0.0.1", port=proxies[name].port) if name in proxies else services
                env = {**base_env, **extra, "RAMSIM_STATE_KEY": kept.state_key,  # every service seals its secrets at rest
                       # node id = identity = client id, on the services listener (through its proxy, if it has one)
                       "RAMSIM_BROKER_URL": identities.at(via, name)}
                processes.append(await _spawn(name, [py, "-m", f"services.{module}"], env, state / "logs" / f"{name}.log"))
            say(f"started {', '.join(n for n, _ in plan)}; waiting until each answers on the bus")
            operator_url = identities.at(tools, broker.OPERATOR)
            bus = await MqttBus.connect(operator_url, client_id=broker.tool_client_id(broker.OPERATOR), persistent=False)
            try:
                client = await BusClient(bus, broker.OPERATOR, ScaledClock(kept.time_scale, kept.time_origin)).start()
                await _wait_ready(client, processes, deadline)
            finally:
                await bus.close()
            file = cluster.ClusterFile(
                broker_url=operator_url, gateway_url=f"http://127.0.0.1:{gateway_port}", account_id=kept.account_id,
                oss_url=f"http://127.0.0.1:{oss_port}", console_url=console_url,
                region_id=settings.region_id, access_key_id=kept.root_access_key_id, access_key_secret=kept.root_access_key_secret,
                state_dir=str(state), time_scale=kept.time_scale, time_origin=kept.time_origin, pid=os.getpid(),
                services={p.name: p.proc.pid for p in processes})
            running = Cluster(options, file, path, processes, identities, port, resumed=resumed, proxies=proxies,
                              services_port=services.port, endpoint=tools)
            running.supervisor = asyncio.create_task(_supervise(running), name="ramsim-up:supervisor")
            if options.instances:
                say(f"launching {options.instances} instance(s) on {len(hosts)} host(s), metadata mode {metadata_mode}")
                await asyncio.to_thread(launch_instances, running, options.instances, launch_deadline(options), say)
            cluster.save(path, file)
            running.announced = True
            say(f"cluster ready; cluster file {path}")
            yield running
        finally:
            if running is not None and running.supervisor is not None:
                running.supervisor.cancel()  # first: the exits of the shutdown are not crashes
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running.supervisor
            say("stopping the cluster")
            await _stop(processes)
            for proxy in proxies.values():
                await proxy.close()
            with contextlib.suppress(FileNotFoundError):
                if path.exists() and cluster.load(path).pid == os.getpid():
                    path.unlink()


def _workers(node: str, count: int, env: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The children of ``node``: itself, or ``count`` workers (``node-1`` …) sharing its inbox."""
    if count <= 1:
        return [(node, env)]
    return [(broker.worker_identity(node, k), {**env, "RAMSIM_SHARE_GROUP": node}) for k in range(1, count + 1)]


def _external_broker(options: Options, account_id: str, identities: broker.Identities, state: Path) -> broker.Endpoint:
    """The endpoint of ``--broker``, its identities provisioned there (``--broker-setup rabbitmqctl``)
    or written down for an operator to import (services/cli/rabbitmq.py)."""
    from services.cli import rabbitmq
    from services.runtime.bus import BusError
    from services.runtime.mqtt_bus import parse

    try:
        address = parse(options.broker)
    except BusError as exc:
        raise UpError(f"--broker: {exc}") from None
    if address.user is not None:
        raise UpError("--broker: leave the credentials out of the URL; every service connects with its own identity")
    vhost = rabbitmq.vhost_for(account_id) if options.broker_vhost is None else options.broker_vhost
    if vhost and (options.sts_workers > 1 or options.gateway_workers > 1):
        raise UpError("--sts-workers and --gateway-workers need shared subscriptions ($share/…), which RabbitMQ 3.10's "
                      "MQTT plugin does not offer")
    version = address.version if "version=" in options.broker else ""
    endpoint = broker.Endpoint(address.host, address.port, vhost=vhost, version=version)
    if vhost:
        document = rabbitmq.definitions(endpoint, identities)
        if options.broker_setup == "rabbitmqctl":
            options.progress(f"provisioning vhost {vhost} and {len(identities.rules)} users on RabbitMQ (rabbitmqctl)")
            rabbitmq.provision(document)
        else:
            written = rabbitmq.write_definitions(state / rabbitmq.DEFINITIONS_FILE, document)
            options.progress(f"RabbitMQ definitions for vhost {vhost} in {written}: import them with "
                             f"`rabbitmqctl import_definitions --format json < {written}` (or --broker-setup rabbitmqctl)")
    elif options.broker_setup == "rabbitmqctl":
        raise UpError("--broker-setup rabbitmqctl needs a vhost (leave --broker-vhost out for ramsim-<account>)")
    return endpoint


def _console_plan(plan: list[tuple[str, dict[str, str]]], options: Options, kept: keys.Keys, gateway_port: int, path: Path,
                  trace_url: str) -> str:
    """Add the web console to ``plan`` when asked for (signed in with the root AccessKey, calling
    the gateway as it; the cluster file tells it the children's pids; its live feed follows the
    bus as the read-only ``trace`` identity); its URL, or ""."""
    if not options.console:
        return ""
    port = options.console_port or free_port()
    if options.console_port and not port_free(port):
        raise UpError(f"--console-port {port}: 127.0.0.1:{port} is taken by another program; free it, choose another "
                      "port, or leave --console-port out for a free one")
    plan.append(("console", {"RAMSIM_HTTP_PORT": str(port), "RAMSIM_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
                             "RAMSIM_ROOT_ACCESS_KEY_ID": kept.root_access_key_id,
                             "RAMSIM_ROOT_ACCESS_KEY_SECRET": kept.root_access_key_secret, "RAMSIM_CLUSTER": str(path),
                             "RAMSIM_TRACE_BROKER_URL": trace_url}))
    return f"http://127.0.0.1:{port}"


async def _start_proxies(names: tuple[str, ...], children: list[str], broker_port: int) -> dict[str, Any]:
    """A TCP proxy to the broker for each child named (its link, which an experiment can degrade)."""
    unknown = sorted(set(names) - set(children))
    if unknown:
        raise UpError(f"--proxy {','.join(unknown)}: not a child of this cluster; choose from {', '.join(children)}")
    from services.experiment.proxy import Proxy

    proxies = {name: Proxy(name, broker_port) for name in names}
    for proxy in proxies.values():
        await proxy.start()
    return proxies


def launch_deadline(options: Options) -> float:
    """When a launch must be done: ``ready_timeout``, plus a second per 100 instances."""
    return time.monotonic() + options.ready_timeout + options.instances / RUN_BATCH


def launch_instances(running: Cluster, count: int, deadline: float, say: Callable[[str], None] = lambda line: None) -> list[str]:
    """RunInstances as root in batches of :data:`RUN_BATCH` (the API's limit), :data:`LAUNCHERS`
    at a time, then wait until each is Running (its metadata view serves)."""
    batches = [min(RUN_BATCH, count - start) for start in range(0, count, RUN_BATCH)]
    progress = Progress(say, "launched", count)

    def run(amount: int) -> list[str]:
        answer = running.call("ecs", "RunInstances", RegionId=running.file.region_id, Amount=str(amount))
        launched = answer["InstanceIdSets"]["InstanceIdSet"]
        progress.add(len(launched))
        return launched

    if len(batches) == 1:
        instance_ids = run(batches[0])
    else:
        with concurrent.futures.ThreadPoolExecutor(LAUNCHERS, thread_name_prefix="ramsim-launch") as pool:
            instance_ids = [i for launched in pool.map(run, batches) for i in launched]
    progress.done()
    wait_running(running, instance_ids, deadline, say)
    return instance_ids


class Progress:
    """A plain progress line (``launched 2300/10000``) at most once a second, for long work only."""

    def __init__(self, say: Callable[[str], None], what: str, total: int, every: float = 1.0) -> None:
        self.say, self.what, self.total, self.every = say, what, total, every
        self.count = 0
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._shown = False

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n
            if time.monotonic() - self._last >= self.every and self.count < self.total:
                self._last = time.monotonic()
                self._shown = True
                self.say(f"{self.what} {self.count}/{self.total}")

    def done(self) -> None:
        if self._shown or self.total > RUN_BATCH:
            self.say(f"{self.what} {self.count}/{self.total}")


def wait_running(running: Cluster, instance_ids: list[str], deadline: float, say: Callable[[str], None] = lambda line: None) -> None:
    """Until every one of ``instance_ids`` is Running (asked 100 at a time, the API's page)."""
    waiting = list(instance_ids)
    progress = Progress(say, "running", len(instance_ids))
    while True:
        still: list[str] = []
        for start in range(0, len(waiting), RUN_BATCH):
            chunk = waiting[start:start + RUN_BATCH]
            answer = running.call("ecs", "DescribeInstances", RegionId=running.file.region_id,
                                  InstanceIds=json.dumps(chunk), PageSize=str(RUN_BATCH))
            status = {i["InstanceId"]: i["Status"] for i in answer["Instances"]["Instance"]}
            still += [i for i in chunk if status.get(i) != "Running"]
        progress.add(len(waiting) - len(still))
        waiting = still
        if not waiting:
            progress.done()
            return
        if time.monotonic() > deadline:
            shown = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
            raise UpError(f"instances not Running in time: {shown}")
        time.sleep(0.05)


async def up(options: Options) -> int:
    """``ramsim up``: run until Ctrl-C / SIGTERM (0), or until a child is in a crash loop (1).

    A child that exits is restarted by the supervisor; that alone never stops the cluster.
    Ctrl-C or SIGTERM while the cluster is still starting cancels the start, which stops
    whatever had started (130)."""
    stop = asyncio.Event()
    starting = asyncio.current_task()
    ready = interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if not ready and not interrupted and starting is not None:
            interrupted = True
            starting.cancel()  # once: a second Ctrl-C must not cut the stopping short
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with running_cluster(options) as running:
            ready = True
            f = running.file
            print(f"ramsim cluster up{' (resumed)' if running.resumed else ''}: account {f.account_id}, region {f.region_id}\n"
                  f"  broker   {broker.without_password(f.broker_url)} (password in the cluster file)\n"
                  f"  gateway  {f.gateway_url}\n  oss      {f.oss_url}\n"
                  + (f"  console  {f.console_url} (sign in with the root AccessKey pair in the cluster file)\n" if f.console_url else "")
                  + f"  cluster  {running.path}\n"
                  f"  state    {f.state_dir} (kept: the next `ramsim up --state-dir` there resumes this cluster)\n"
                  f"  logs     {Path(f.state_dir) / 'logs'}\n"
                  f"Try: ramsim instances   |   ramsim demo   |   ramsim ecs DescribeInstances --RegionId {f.region_id}\n"
                  "Ctrl-C stops everything.", flush=True)
            assert running.supervisor is not None
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, running.supervisor}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if running.supervisor.done():
                failure = running.supervisor.exception() or running.supervisor.result()
                print(f"ramsim: {failure}", file=sys.stderr, flush=True)
                return 1
            return 0
    except asyncio.CancelledError:
        if not interrupted or starting is None:
            raise
        starting.uncancel()
        print("ramsim: interrupted while starting; stopped what had started", file=sys.stderr, flush=True)
        return 130


def cluster_options(p: argparse.ArgumentParser) -> None:
    """The settings of a cluster ``ramsim up`` and ``ramsim demo`` start."""
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second (default 1)")
    p.add_argument("--credential-lifetime", type=int, default=3600, help="seconds an instance credential lasts (default 3600)")
    p.add_argument("--refresh-before", type=int, default=1800, help="seconds before expiry that ECS refreshes it (default 1800)")
    p.add_argument("--refresh-jitter", type=float, default=0.1,
                   help="refresh each credential up to this fraction of --refresh-before earlier, at random, so instances "
                        "attached together do not refresh together (default 0.1; 0: exactly --refresh-before early)")


def options(args: argparse.Namespace, progress: bool) -> Options:
    """:class:`Options` from parsed ``up``/``demo`` arguments (:class:`UpError` when they cannot work)."""
    if not 0 <= getattr(args, "refresh_jitter", 0.1) <= 1:
        raise UpError("--refresh-jitter is a fraction of --refresh-before, from 0 to 1")
    if args.time_scale <= 0 or args.credential_lifetime <= 0 or not 0 <= args.refresh_before < args.credential_lifetime:
        raise UpError("--time-scale and --credential-lifetime must be > 0, and --refresh-before from 0 to less than "
                      f"--credential-lifetime ({args.credential_lifetime}): a credential is refreshed before it expires")
    return Options(state_dir=getattr(args, "state_dir", None) or Path(cluster.DEFAULT_STATE_DIR),
                   cluster_file=args.cluster_file, instances=getattr(args, "instances", 0),
                   hosts=getattr(args, "hosts", None) or 0, time_scale=args.time_scale,
                   credential_lifetime=args.credential_lifetime, refresh_before=args.refresh_before,
                   refresh_jitter=getattr(args, "refresh_jitter", 0.1),
                   log_format=getattr(args, "log_format", "json"), reset=getattr(args, "reset", False),
                   metadata_mode=getattr(args, "metadata_mode", None) or "",
                   ports={what: getattr(args, f"{what}_port", 0) or 0 for what in PORTS},
                   proxies=tuple(n for n in (getattr(args, "proxy", "") or "").split(",") if n),
                   broker=getattr(args, "broker", "") or "", broker_vhost=getattr(args, "broker_vhost", None),
                   broker_setup=getattr(args, "broker_setup", "none") or "none",
                   sts_workers=getattr(args, "sts_workers", 1) or 1,
                   gateway_workers=getattr(args, "gateway_workers", 1) or 1,
                   console=hasattr(args, "no_console") and not args.no_console, console_port=getattr(args, "console_port", 0) or 0,
                   progress=(lambda line: print(f"[ramsim] {line}", file=sys.stderr, flush=True)) if progress else (lambda line: None))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("up", description="Start a private Mosquitto on a loopback port and every service (ram, sts, ecs, "
                       "gateway, oss, one metadata agent per host, the web console unless --no-console) as its own process; wait until all "
                       "answer; write the "
                       "cluster file; run until Ctrl-C or SIGTERM, then stop everything. A process that exits meanwhile is "
                       "restarted (backoff 0.2 s doubling to 10 s); more than 5 exits of one within 60 s is a crash loop "
                       "that stops the cluster (exit status 1). A --state-dir a previous `ramsim up` used is resumed: same "
                       "account, root AccessKey, keys and (when free) ports, from its keys.json (at a --time-scale no "
                       "smaller than before: simulated time never runs backwards); --reset starts a new cluster there instead. "
                       "--broker runs it on an external MQTT broker (RabbitMQ: --broker-setup rabbitmqctl) instead of Mosquitto.")
    cluster_options(p)
    p.add_argument("--cluster-file", type=Path, default=None, help="where to write the cluster file (default <state-dir>/cluster.json)")
    p.add_argument("--instances", type=int, default=1, help="instances to launch at start, without a role (default 1)")
    p.add_argument("--hosts", type=int, default=None,
                   help=f"simulated hosts, one metadata agent each (default: one per {INSTANCES_PER_HOST} instances, at least one)")
    p.add_argument("--state-dir", type=Path, default=Path(cluster.DEFAULT_STATE_DIR),
                   help="the cluster's state (keys.json with its secrets, 0600; each service's <node>.db; OSS objects), logs "
                        "and generated config; one running cluster per directory (default .ramsim)")
    p.add_argument("--reset", action="store_true",
                   help="delete the previous cluster's state in --state-dir (keys.json, the services' databases, OSS "
                        "objects; logs stay) and start a new cluster, with a new account")
    for what in PORTS:
        p.add_argument(f"--{what}-port", type=int, default=0, metavar="PORT",
                       help=f"the {what}'s loopback port (default: the one this state dir used before, if free, else any free one)")
    p.add_argument("--log-format", choices=("json", "console"), default="json", help="service log format (default json)")
    p.add_argument("--broker", default="", metavar="URL",
                   help="use this external MQTT broker (mqtt://host:port, ?version=3.1.1 for RabbitMQ) instead of starting "
                        "Mosquitto; every service connects with its own identity (deploy/README.md, 'Past one broker')")
    p.add_argument("--broker-vhost", default=None, metavar="NAME",
                   help="with --broker: the RabbitMQ vhost of this cluster, users <identity>@<vhost> (default "
                        "ramsim-<account id>; '' for a broker whose usernames are the identities themselves)")
    p.add_argument("--broker-setup", choices=("none", "rabbitmqctl"), default="none",
                   help="with --broker: rabbitmqctl creates the vhost, users, permissions and topic permissions on the "
                        "local RabbitMQ (idempotent); none (default) writes them to <state-dir>/rabbitmq-definitions.json")
    p.add_argument("--sts-workers", type=int, default=1, metavar="N",
                   help="run STS as N worker processes (sts-1 … sts-N, one broker identity each) sharing its inbox with a "
                        "shared subscription, so each request reaches one of them and a killed worker's load goes to the "
                        "others (default 1)")
    p.add_argument("--gateway-workers", type=int, default=1, metavar="N",
                   help="run the gateway as N worker processes (gateway-1 … gateway-N, one broker identity each, all node "
                        "gateway) listening on the one gateway port with SO_REUSEPORT, so the kernel spreads connections "
                        "between them and a killed worker's connections go to the others (default 1; Linux)")
    p.add_argument("--console-port", type=int, default=0, metavar="PORT",
                   help="the web console's loopback port (default any free one; its URL is printed and in the cluster file)")
    p.add_argument("--no-console", action="store_true",
                   help="do not start the web console (docs/console.md), which `ramsim up` starts by default")
    p.add_argument("--proxy", default="", metavar="NAMES",
                   help="children (e.g. ecs,metadata-host-1) that reach the broker through a TCP proxy in this process, "
                        "whose link an experiment can slow, break or partition (default none)")
    p.add_argument("--metadata-mode", choices=METADATA_MODES, default=None,
                   help="port: each instance's metadata view is its own loopback port; shared: one loopback port per "
                        "metadata agent, which tells its instances apart by the user name in the URL "
                        "(http://<InstanceId>:@127.0.0.1:PORT, used as an HTTP proxy it arrives as Proxy-Authorization) or "
                        "by a path prefix (http://127.0.0.1:PORT/<InstanceId>/latest/meta-data/); netns: each instance is a "
                        "network namespace (rsi-<id>) where http://100.100.100.200 answers by source address, so an "
                        "unmodified SDK needs no proxy: `ip netns exec rsi-<id> <app>` (needs root and iproute2). "
                        f"Default: shared above {SHARED_ABOVE} instances, else port")


def main(args: argparse.Namespace) -> int:
    if args.instances < 0 or (args.hosts is not None and args.hosts < 1) or args.sts_workers < 1 or args.gateway_workers < 1:
        raise UpError("--instances must be >= 0, --hosts, --sts-workers and --gateway-workers >= 1")
    if not all(0 <= getattr(args, f"{what}_port") <= 65535 for what in (*PORTS, "console")):
        raise UpError("a --*-port is 1-65535 (or 0: any free port)")
    chosen = options(args, progress=True)
    logs.configure(level="warning")  # this process's own bus client: only problems
    return asyncio.run(up(chosen))
