"""I/O shell: namespace mode: every instance a Linux network namespace that reaches the real
address ``http://100.100.100.200``, answered by source address, as on a real ECS host.

Local mode (:mod:`services.metadata.http`) stands a port in for each instance. Here (``ramsim up
--metadata-mode netns``, root and iproute2 required) the agent builds, for its host:

* a metadata namespace ``rsm-<host>-<cluster tag>`` holding ``100.100.100.200/32`` on its loopback and one
  listening socket on ``100.100.100.200:80`` (made inside that namespace with ``setns``; the
  agent itself stays in the host's namespace, on the broker);
* per instance, a namespace ``rsi-<instance suffix>`` whose ``eth0`` carries the instance's
  private IP and is one end of a veth pair; the other end sits in the metadata namespace with a
  /32 route back to that IP only. Inside the instance's namespace 100.100.100.200 is the only
  address there is: an unmodified SDK, with no proxy, reads its instance's metadata there, and
  nothing can leave for the real network.

A request is answered for the instance whose private IP it came from. An instance that claims
another's address gets nowhere: the answer is routed to the other namespace, so the TCP
handshake never completes. Applications run "on" an instance with
``ip netns exec rsi-<suffix> <command>``; the announced endpoint is ``netns:rsi-<suffix>``.
Namespaces are removed when the agent stops (and any left by a killed agent are replaced).

Address mode (``--metadata-mode address``, :class:`AddressListener`) is the same answer without
making anything: the agent already runs where ``100.100.100.200`` is its own address (a
container given that fixed IP on the instances' network, as in ``compose.yaml``), binds
``100.100.100.200:80`` and answers each request for the instance whose private IP it came from;
the instances are whatever holds those IPs on that network. The announced endpoint is
``address:<private ip>``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import socket
import subprocess
from contextlib import contextmanager
from typing import Iterator

import structlog
from aiohttp import web

from services.metadata.core import MetadataCore
from services.metadata.http import Announce, Ways, server
from services.runtime.clock import Clock

log = structlog.get_logger("metadata.netns")
METADATA_IP = "100.100.100.200"
CLONE_NEWNET = 0x40000000
PREFIX = "netns:"
ADDRESS_PREFIX = "address:"


class NamespaceError(Exception):
    """Namespace mode cannot run here (not root, no iproute2, a command failed)."""


@functools.cache
def available() -> str | None:
    """None when namespace mode can run here (tried once: a container may deny it even to root),
    else why not."""
    if getattr(os, "geteuid", lambda: -1)() != 0:
        return "namespace mode needs root (it creates network namespaces)"
    if shutil.which("ip") is None:
        return "namespace mode needs iproute2's `ip` command"
    probe = f"rs-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    _delete(probe)
    if made.returncode != 0:
        return f"this machine does not let ramsim create network namespaces: {made.stderr.strip()}"
    return None


def instance_namespace(instance_id: str) -> str:
    return "rsi-" + instance_id.removeprefix("i-")[:20]


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _delete(namespace: str) -> None:
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@contextmanager
def _inside(namespace: str) -> Iterator[None]:
    """Run the block with this thread in ``namespace`` (sockets made there stay there)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise NamespaceError(f"setns into {namespace}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # never carry on in the wrong namespace
                raise SystemExit(f"setns back to the host namespace failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(target)
        os.close(home)


class NamespaceListeners(Ways):
    """The agent's HTTP side in namespace mode: one listener at 100.100.100.200 in the metadata
    namespace, and a namespace per instance as its way in."""

    def __init__(self, core: MetadataCore, clock: Clock, announce: Announce, cluster: str = "") -> None:
        why = available()
        if why:
            raise NamespaceError(why)
        super().__init__(core, clock, announce)
        # one per host and cluster (two clusters' host-1 agents must not share one)
        self.namespace = f"rsm-{core.host_id}-{hashlib.sha256(cluster.encode()).hexdigest()[:6]}"
        self._wired: dict[str, tuple[str, str]] = {}  # instance -> (its namespace, its private IP)
        self._runner: web.ServerRunner | None = None

    async def start(self) -> None:
        _delete(self.namespace)  # one a killed agent left behind
        _ip("netns", "add", self.namespace)
        _ip("-n", self.namespace, "link", "set", "lo", "up")
        _ip("-n", self.namespace, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
        with _inside(self.namespace):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((METADATA_IP, 80))
            sock.listen(128)
            sock.setblocking(False)
        self._runner = web.ServerRunner(server(self._handle), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("metadata_namespace_ready", namespace=self.namespace, address=f"{METADATA_IP}:80")

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        return by_source(self, {i: ip for i, (_, ip) in self._wired.items()}, request)

    async def _close(self, instance_id: str) -> None:
        _delete(self._wired.pop(instance_id)[0])

    async def _open(self, instance_id: str) -> str:
        ip = self.core.views[instance_id].network.private_ip
        if any(ip == other for _, other in self._wired.values()):
            log.warning("private_ip_taken", instance_id=instance_id, private_ip=ip)  # its requests would be another's
            return ""
        namespace = instance_namespace(instance_id)
        tag = hashlib.sha256(instance_id.encode()).hexdigest()[:10]
        outer, inner = f"rv{tag}", f"ri{tag}"
        _delete(namespace)
        _ip("netns", "add", namespace)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", self.namespace)
        _ip("link", "set", inner, "netns", namespace)
        _ip("-n", namespace, "link", "set", inner, "name", "eth0")
        _ip("-n", namespace, "addr", "add", f"{ip}/32", "dev", "eth0")
        for device in ("lo", "eth0"):
            _ip("-n", namespace, "link", "set", device, "up")
        _ip("-n", namespace, "route", "add", f"{METADATA_IP}/32", "dev", "eth0")
        _ip("-n", self.namespace, "link", "set", outer, "up")
        _ip("-n", self.namespace, "route", "add", f"{ip}/32", "dev", outer)
        self._wired[instance_id] = (namespace, ip)
        log.info("instance_namespace_ready", instance_id=instance_id, namespace=namespace, private_ip=ip)
        return PREFIX + namespace

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for namespace, _ in self._wired.values():
            _delete(namespace)
        self._wired.clear()
        _delete(self.namespace)


def by_source(ways: Ways, addresses: dict[str, str], request: web.BaseRequest) -> web.Response:
    """The view of the instance whose private IP ``request`` came from (``addresses``: instance ->
    IP); 403 for an address no instance has."""
    source = request.remote or ""
    instance_id = next((i for i, ip in addresses.items() if ip == source), None)
    if instance_id is None:
        return web.Response(status=403, text="Forbidden: no instance has this source address")
    return ways.answer(instance_id, request)


class AddressListener(Ways):
    """Address mode: one listener on ``100.100.100.200:80``, an address this process already has
    (a container's fixed IP); each instance's way in is its private IP, nothing to make."""

    def __init__(self, core: MetadataCore, clock: Clock, announce: Announce, address: str = METADATA_IP, port: int = 80) -> None:
        super().__init__(core, clock, announce)
        self.address, self.port = address, port
        self._ips: dict[str, str] = {}  # instance -> its private IP
        self._runner: web.ServerRunner | None = None

    async def start(self) -> None:
        self._runner = web.ServerRunner(server(self._handle), access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.address, self.port, reuse_address=True).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise NamespaceError(f"address mode: cannot listen on {self.address}:{self.port} ({exc.strerror}); the agent "
                                 f"must hold {self.address} (a container with that fixed IP on the instances' network)") from None
        log.info("metadata_address_ready", address=f"{self.address}:{self.port}")

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        return by_source(self, self._ips, request)

    async def _open(self, instance_id: str) -> str:
        ip = self.core.views[instance_id].network.private_ip
        if ip in self._ips.values():
            log.warning("private_ip_taken", instance_id=instance_id, private_ip=ip)  # its requests would be another's
            return ""
        self._ips[instance_id] = ip
        log.info("instance_address_ready", instance_id=instance_id, private_ip=ip)
        return ADDRESS_PREFIX + ip

    async def _close(self, instance_id: str) -> None:
        self._ips.pop(instance_id, None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._ips.clear()
