"""What the benchmarks share: a private cluster, instances launched in batches, metadata pollers.

Everything talks to 127.0.0.1 only; every loop is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROLE = "BenchRole"
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
BATCH = 100  # RunInstances' Amount and AttachInstanceRamRole's InstanceIds: at most 100 each (Alibaba's limits)


def p(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank (the last sample for q = 1)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if q < 1 else ordered[-1]


def p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    ms = [s * 1000 for s in seconds]
    return statistics.median(ms), p(ms, 0.99)


QUIET_PORTS = (20_000, 32_000)  # below Linux's default ephemeral range (32768-60999): no outgoing connection takes one


def quiet_ports(count: int) -> list[int]:
    """``count`` loopback ports that are free now, from :data:`QUIET_PORTS`. A port the kernel hands
    out (``bind(0)``) comes from the ephemeral range, where on a busy machine another process's
    connection or listener can take it before the service binds it; these ports it never hands out."""
    import random
    import socket

    found: list[int] = []
    for _ in range(1000):
        port = random.randrange(*QUIET_PORTS)
        if port in found:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"no {count} free ports in {QUIET_PORTS}")


def port_taken(state_dir: Path) -> bool:
    """Whether a service of the cluster in ``state_dir`` failed because its port was taken meanwhile."""
    logs = state_dir / "logs"
    return logs.is_dir() and any("already in use" in f.read_text(errors="replace").lower() for f in logs.iterdir() if f.is_file())


@contextlib.asynccontextmanager
async def cluster(workdir: Path, name: str, *, hosts: int = 1, shared: bool = False, time_scale: float = 1.0,
                  ready_timeout: float = 60.0) -> AsyncIterator:
    """A private cluster with no instances yet (``ramsim up --instances 0``), metadata in port or
    shared mode, in its own state dir under ``workdir``; its broker, gateway and OSS on
    :func:`quiet_ports`. Started again (up to 3 times) when a port was taken before its service bound it."""
    from services.cli.up import PORTS, Options, UpError, running_cluster

    async with contextlib.AsyncExitStack() as stack:
        for attempt in (1, 2, 3):
            options = Options(state_dir=workdir / f"{name}-{attempt}", instances=0, hosts=hosts, time_scale=time_scale,
                              metadata_mode="shared" if shared else "port", ready_timeout=ready_timeout, log_level="warning",
                              refresh_jitter=0.1,  # as `ramsim up` runs (its --refresh-jitter default)
                              ports=dict(zip(PORTS, quiet_ports(len(PORTS)))))
            try:
                running = await stack.enter_async_context(running_cluster(options))
                break
            except UpError as exc:
                if attempt == 3 or not ("already in use" in str(exc).lower() or port_taken(options.state_dir)):
                    raise
        yield running


def create_role(running, name: str = ROLE) -> None:
    from services.ram.policy import ECS_TRUST_POLICY
    running.call("ram", "CreateRole", RoleName=name, AssumeRolePolicyDocument=ECS_TRUST_POLICY)


def launch(running, count: int, role: str = "") -> list[str]:
    """RunInstances in batches of :data:`BATCH` (with ``role`` attached at launch when given)."""
    ids: list[str] = []
    while len(ids) < count:
        params = {"RegionId": running.file.region_id, "Amount": str(min(BATCH, count - len(ids)))}
        if role:
            params["RamRoleName"] = role
        ids += running.call("ecs", "RunInstances", **params)["InstanceIdSets"]["InstanceIdSet"]
    return ids


def by_path(url: str) -> str:
    """A metadata base URL that names its instance by path: a shared-mode view given as
    ``http://<InstanceId>@127.0.0.1:PORT`` becomes ``http://127.0.0.1:PORT/<InstanceId>`` (the same
    view, a path prefix, which wrk and plain GETs can send); any other URL is returned as it is."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return url
    return f"{parts.scheme}://{parts.hostname}:{parts.port}/{parts.username}{parts.path.rstrip('/')}"


def every_endpoint(running) -> list[dict]:
    """Every page of DescribeInstanceMetadataEndpoints (``NextToken`` from one page to the next)."""
    listed: list[dict] = []
    token = ""
    for _ in range(10_000):  # bounded: far more pages than any cluster has
        page = running.call("ecs", "DescribeInstanceMetadataEndpoints", **({"NextToken": token} if token else {}))
        listed += page.get("Endpoints", [])
        token = page.get("NextToken", "")
        if not token:
            break
    return listed


def endpoints(running, instance_ids: list[str], limit: float = 120.0) -> dict[str, str]:
    """Each instance's metadata base URL (:func:`by_path`), once ECS knows all of them."""
    deadline = time.monotonic() + limit
    wanted = set(instance_ids)
    while True:
        listed = every_endpoint(running)
        urls = {e["InstanceId"]: e["Url"] for e in listed if e["InstanceId"] in wanted and e.get("Url")}
        if len(urls) == len(wanted):
            return {i: by_path(urls[i]) for i in instance_ids}
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(wanted) - len(urls)} of {len(wanted)} instances have no metadata endpoint after {limit:.0f} s")
        time.sleep(0.1)


def attach(running, role: str, instance_ids: list[str]) -> None:
    for i in range(0, len(instance_ids), BATCH):
        running.call("ecs", "AttachInstanceRamRole", RegionId=running.file.region_id, RamRoleName=role,
                     InstanceIds=json.dumps(instance_ids[i:i + BATCH]))


def detach(running, instance_ids: list[str]) -> None:
    for i in range(0, len(instance_ids), BATCH):
        running.call("ecs", "DetachInstanceRamRole", RegionId=running.file.region_id,
                     InstanceIds=json.dumps(instance_ids[i:i + BATCH]))


class Poller:
    """An aiohttp session for GETting many metadata URLs at once (keep-alive, no proxy)."""

    def __init__(self, concurrency: int = 64) -> None:
        self.concurrency = concurrency
        self.requests = 0

    async def __aenter__(self) -> "Poller":
        import aiohttp
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency), trust_env=False,
                                              timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def get(self, url: str) -> tuple[int, bytes]:
        import aiohttp
        self.requests += 1
        try:
            async with self._session.get(url) as answer:
                return answer.status, await answer.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return 0, b""

    async def until(self, urls: dict[str, str], ok: Callable[[int], bool], limit: float) -> dict[str, float]:
        """GET every URL again and again until its status satisfies ``ok``; the perf_counter
        time each one first did. Raises RuntimeError after ``limit`` seconds."""
        seen: dict[str, float] = {}
        pending = dict(urls)
        deadline = time.perf_counter() + limit
        gate = asyncio.Semaphore(self.concurrency)

        async def probe(key: str, url: str) -> None:
            async with gate:
                status, _ = await self.get(url)
            if ok(status):
                seen[key] = time.perf_counter()
                pending.pop(key, None)

        while pending:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{len(pending)} of {len(urls)} not reached in {limit:.0f} s")
            await asyncio.gather(*(probe(k, u) for k, u in list(pending.items())))
        return seen


async def serving(running, instance_ids: list[str], role: str, limit: float = 120.0) -> dict[str, str]:
    """Each instance's credentials URL for ``role``, once every one of them answers 200."""
    bases = await asyncio.to_thread(endpoints, running, instance_ids, limit)
    urls = {i: base.rstrip("/") + CREDENTIALS + role for i, base in bases.items()}
    async with Poller() as poller:
        await poller.until(urls, lambda status: status == 200, limit)
    return urls


def rss_kib(pid: int) -> int:
    """The resident set of process ``pid`` (VmRSS), KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
