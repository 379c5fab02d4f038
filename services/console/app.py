"""I/O shell: the web console: an aiohttp server on 127.0.0.1 serving one page (static/) and a
small JSON API behind a sign-in, reading and writing the cluster only through the gateway's
signed OpenAPI calls (as the operator: the root AccessKey) and the instances' metadata views.

* ``POST /api/login`` takes the operator's AccessKeyId/AccessKeySecret and sets an HttpOnly,
  SameSite=Strict session cookie; every other ``/api/`` request without it is refused (401).
  A write must be JSON (``Content-Type: application/json``), which a cross-site form cannot send.
* ``/api/health``, ``/api/instances`` (server-side pages of DescribeInstances),
  ``/api/instances/<id>`` (its role, its current credential as its metadata view serves it,
  masked, and its rotation history), ``/api/roles``, ``/api/policies``; attach/detach a role
  (``POST``/``DELETE /api/instances/<id>/role``) and a policy (``.../roles/<name>/policies``);
  ``/api/explain`` (RAM's SimulatePrincipalPolicy); ``/api/faults`` (services/console/faults.py).
* ``/api/feed``: server-sent events, one per message on the bus (from the trace tap) and per
  thing the console did, which the page draws as a sequence diagram.

The routes are in :mod:`services.console.http`; this module holds what they call (the gateway
client, the probes, the feed) and the process's life. The console is also a node on the bus (identity ``console``): it answers Pings, so ``ramsim up``
waits for it and supervises it as any other service.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiohttp
import msgspec
import structlog
from aiohttp import web

from protocol import times
from services.cli import api
from services.console import core
from services.console.http import make_app
from services.console.faults import ConsoleFaults, FaultError
from services.runtime import service
from services.runtime.client import BusClient
from services.runtime.settings import Settings

NAME = "console"
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
PROBE_TIMEOUT = 2.0
log = structlog.get_logger(NAME)


class Gateway:
    """Signed OpenAPI calls as the operator (services/cli/api.py's signing), over aiohttp."""

    def __init__(self, session: aiohttp.ClientSession, url: str, credential: api.Credential) -> None:
        self.session, self.url, self.credential = session, url.rstrip("/"), credential
        self.quiet: collections.OrderedDict[str, None] = collections.OrderedDict()  # trace ids of the console's own reads

    async def call(self, product: str, action: str, timeout: float = 15.0, **params: str) -> tuple[int, dict[str, Any]]:
        query = api.signed_query(product, action, params, self.credential)
        try:
            async with self.session.post(f"{self.url}/?{query}", data=b"", timeout=aiohttp.ClientTimeout(total=timeout),
                                         headers={"Accept": "application/json"}) as answer:
                raw = await answer.read()
                try:
                    found = json.loads(raw)
                    if core.is_read(action) and isinstance(found, dict) and found.get("RequestId"):
                        self.quiet[core.trace_of(str(found["RequestId"]))] = None  # the feed leaves this call's messages out
                        while len(self.quiet) > 5000:
                            self.quiet.popitem(last=False)
                    return answer.status, found
                except ValueError:
                    return answer.status, {"Code": "InvalidResponse", "Message": raw.decode(errors="replace")[:200]}
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return 503, {"Code": "GatewayUnreachable", "Message": f"no answer from the gateway: {type(exc).__name__} {exc}"}

    async def ok(self, product: str, action: str, **params: str) -> dict[str, Any]:
        status, body = await self.call(product, action, **params)
        if status != 200:
            raise core.Refused(status, body)
        return body


class Hub:
    """The live feed: every subscriber (an open SSE stream) gets each item; a slow one loses the oldest."""

    def __init__(self, keep: int = 200) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.recent: list[dict[str, Any]] = []
        self.keep = keep

    def publish(self, item: dict[str, Any]) -> None:
        self.recent = (self.recent + [item])[-self.keep:]
        for queue in self.queues:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=500)
        for item in self.recent[-60:]:
            queue.put_nowait(item)
        self.queues.add(queue)
        try:
            yield queue
        finally:
            self.queues.discard(queue)


class Console:
    """The console's state: its gateway client, sessions, histories, probes, faults and feed."""

    def __init__(self, settings: Settings, gateway: Gateway, cluster_path: Path | None, session: aiohttp.ClientSession) -> None:
        self.settings, self.gateway, self.cluster_path, self.http = settings, gateway, cluster_path, session
        self.sessions = core.Sessions()
        self.rotations = core.Rotations()
        self.hub = Hub()
        self.faults = ConsoleFaults(cluster_path) if cluster_path else None
        self.clock = service.clock_for(settings)
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.health: list[dict[str, Any]] = []
        self.keepalive = 15.0  # seconds between an SSE stream's keep-alives (each one checks its session)

    # -- what the console reads ---------------------------------------------------------------
    async def endpoints_of(self, instance_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Where these instances' metadata views listen (DescribeInstanceMetadataEndpoints for
        just these: all of thousands would not fit one bus message), remembered for the probes."""
        if not instance_ids:
            return {}
        body = await self.gateway.ok("ecs", "DescribeInstanceMetadataEndpoints", InstanceIds=json.dumps(list(instance_ids)))
        found = {e["InstanceId"]: e for e in body.get("Endpoints", [])}
        self.endpoints.update(found)
        while len(self.endpoints) > 1000:  # a bound: the probes need one per host
            self.endpoints.pop(next(iter(self.endpoints)))
        return found

    async def metadata(self, url: str, path: str) -> tuple[int, str]:
        """GET ``path`` from an instance's metadata view, as the instance sees it."""
        if url.startswith("netns:"):  # namespace mode: read from inside it (services/cli/instances.py)
            from services.cli.instances import read_metadata

            return await asyncio.to_thread(read_metadata, url, path)
        try:
            async with self.http.get(url.rstrip("/") + path, timeout=aiohttp.ClientTimeout(total=3)) as answer:
                return answer.status, (await answer.read()).decode(errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return 503, f"the metadata view does not answer: {type(exc).__name__}"

    async def instance(self, instance_id: str) -> dict[str, Any]:
        roles = await self.gateway.ok("ecs", "DescribeInstanceRamRole", RegionId=self.settings.region_id,
                                      InstanceIds=json.dumps([instance_id]))
        role = next((r["RamRoleName"] for r in roles.get("InstanceRamRoleSets", {}).get("InstanceRamRoleSet", [])
                     if r.get("InstanceId") == instance_id), "")
        url = (await self.endpoints_of([instance_id])).get(instance_id, {}).get("Url", "")
        shown: dict[str, Any] = {"InstanceId": instance_id, "RamRoleName": role, "MetadataUrl": url, "Credential": None}
        if url:
            status, listing = await self.metadata(url, CREDENTIALS)
            shown["Listing"] = {"Path": CREDENTIALS, "Status": status, "Body": listing.strip()[:200]}
            served = listing.strip().splitlines()[0] if status == 200 and listing.strip() else ""
            if served:
                status, text = await self.metadata(url, CREDENTIALS + served)
                shown["CredentialPath"] = {"Path": CREDENTIALS + served, "Status": status}
                if status == 200:
                    with contextlib.suppress(ValueError):
                        doc = json.loads(text)
                        shown["Credential"] = core.credential_view(doc, self.clock.now(), self.settings.time_scale)
                        shown["Credential"]["RoleName"] = served
                        if self.rotations.record(instance_id, doc.get("AccessKeyId", ""), doc.get("Expiration", ""),
                                                 doc.get("LastUpdated", ""), "metadata", served):
                            self.note("rotation", f"{instance_id} serves {core.mask(doc.get('AccessKeyId', ''))} for {served}")
        shown["History"] = self.rotations.history(instance_id)
        return shown

    async def instances(self, page: int, size: int) -> dict[str, Any]:
        described = await self.gateway.ok("ecs", "DescribeInstances", RegionId=self.settings.region_id,
                                          PageNumber=str(page), PageSize=str(size))
        ids = [i["InstanceId"] for i in described.get("Instances", {}).get("Instance", [])]
        roles = await self.gateway.ok("ecs", "DescribeInstanceRamRole", RegionId=self.settings.region_id,
                                      InstanceIds=json.dumps(ids), PageSize="100") if ids else {}
        endpoints = await self.endpoints_of(ids)
        return core.instances_page(described, roles.get("InstanceRamRoleSets", {}).get("InstanceRamRoleSet", []), endpoints)

    async def roles(self) -> list[dict[str, Any]]:
        listed = (await self.gateway.ok("ram", "ListRoles", MaxItems="100")).get("Roles", {}).get("Role", [])

        async def with_policies(role: dict[str, Any]) -> dict[str, Any]:
            body = await self.gateway.ok("ram", "ListPoliciesForRole", RoleName=role["RoleName"])
            return core.role_row(role, body.get("Policies", {}).get("Policy", []))

        return list(await asyncio.gather(*(with_policies(r) for r in listed)))

    async def policies(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        for kind in ("System", "Custom"):
            body = await self.gateway.ok("ram", "ListPolicies", PolicyType=kind, MaxItems="100")
            found += [{"PolicyName": p["PolicyName"], "PolicyType": p.get("PolicyType", kind)} for p in body.get("Policies", {}).get("Policy", [])]
        return found

    # -- health: each service's process, and a probe through the APIs --------------------------
    def pids(self) -> dict[str, int]:
        if self.faults is None:
            return {}
        return self.faults.view.pids()

    async def probe(self, name: str) -> tuple[bool, float, str]:
        started = time.monotonic()
        try:
            ok, detail = await asyncio.wait_for(self._probe(name), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            ok, detail = False, f"no answer in {PROBE_TIMEOUT:g} s"
        except core.Refused as exc:
            ok, detail = False, f"{exc.body.get('Code', '')} (HTTP {exc.status})"
        except (aiohttp.ClientError, OSError, ValueError, FaultError) as exc:  # refused, reset, not JSON, no cluster file yet
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:160]
        return ok, time.monotonic() - started, detail

    async def _probe(self, name: str) -> tuple[bool, str]:
        region = self.settings.region_id
        if name == "gateway":  # an unsigned GET: the gateway answers it itself, asking nobody on the bus
            async with self.http.get(self.gateway.url + "/") as answer:
                return "RequestId" in await answer.json(content_type=None), f"GET / : HTTP {answer.status}"
        calls = {"sts": ("sts", "GetCallerIdentity", {}),
                 "ram": ("ram", "ListUsers", {"MaxItems": "1"}), "ecs": ("ecs", "DescribeInstances", {"RegionId": region, "PageSize": "1"})}
        if name in calls:
            product, action, params = calls[name]
            status, body = await self.gateway.call(product, action, timeout=PROBE_TIMEOUT, **params)
            return (status == 200 or (name == "gateway" and "RequestId" in body)), f"{product} {action}: HTTP {status}"
        if name == "oss" and self.faults is not None:
            async with self.http.get(self.faults.view.file.oss_url + "/") as answer:
                return answer.status < 500, f"GET / : HTTP {answer.status}"
        if name.startswith("metadata-"):
            host = name.removeprefix("metadata-")
            url = next((e["Url"] for e in self.endpoints.values() if e.get("HostId") == host), "")
            if not url:  # none of this host's seen yet: the first page's
                first = await self.gateway.ok("ecs", "DescribeInstances", RegionId=self.settings.region_id, PageSize="100")
                ids = [i["InstanceId"] for i in first.get("Instances", {}).get("Instance", [])]
                url = next((e["Url"] for e in (await self.endpoints_of(ids)).values() if e.get("HostId") == host), "")
            if not url:
                return True, "no instance on this host to ask"
            status, _ = await self.metadata(url, "/latest/meta-data/instance-id")
            return status == 200, f"instance-id: HTTP {status}"
        return True, ""

    async def probe_forever(self, interval: float = 2.0) -> None:
        while True:
            try:
                pids = self.pids()
                names = [n for n in pids if n != NAME] or ["gateway", "ram", "sts", "ecs"]
                probed = [n for n in names if n != "mosquitto"]  # the broker: its process (everything else goes through it)
                found = dict(zip(probed, await asyncio.gather(*(self.probe(n) for n in probed))))
                self.health = [core.health_row(n, core.process_state(_stat(pids.get(n, 0))) if pids else "running", found.get(n))
                               for n in names]
            except Exception as exc:  # noqa: BLE001 - one bad round must not end the health panel
                log.warning("console_probe_failed", error=f"{type(exc).__name__}: {exc}"[:200])
            await asyncio.sleep(interval)

    async def follow(self, broker_url: str, hold: float = 0.4) -> None:
        """The live feed: every message on the bus from the trace tap (protocol/trace.py: redacted),
        held ``hold`` seconds so the console's own reads (whose trace ids it learns from their
        answers) are left out, throttled (core.Throttle), and credential rotations recorded."""
        from services.runtime.tap import Tap

        throttle, pending = core.Throttle(), collections.deque[tuple[float, dict[str, Any]]]()
        while True:
            try:
                async with Tap(broker_url) as tap:
                    self.note("feed", "following the bus (trace tap)")
                    while True:
                        event = await tap.get(timeout=0.1)
                        if event is not None:
                            pending.append((time.monotonic(), core.feed_item(msgspec.to_builtins(event))))
                        while pending and time.monotonic() - pending[0][0] >= hold:
                            item = pending.popleft()[1]
                            if "Denied" in item:  # the same "Decided by:" the CLI and the tour print
                                detail = {k.split(".", 1)[1]: v for k, v in item["Fields"].items() if k.startswith("AccessDeniedDetail.")}
                                item["Denied"]["DecidedBy"] = api.decided_by(detail) if detail else ""
                            self._rotation(item)
                            if item["TraceId"] in self.gateway.quiet or item["Src"] == NAME or item["Dest"] == NAME:
                                continue
                            if throttle.allow(time.monotonic()):
                                self.hub.publish(item)
                        if throttle.refused >= 100:
                            self.note("feed", f"{throttle.refused} messages not drawn (more than {core.FEED_RATE:g} a second)")
                            throttle.refused = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker away (restarting, paused): follow again
                log.warning("console_feed_lost", error=f"{type(exc).__name__}: {exc}"[:200])
                self.note("feed", "the feed lost the broker; following again")
                await asyncio.sleep(1.0)

    def _rotation(self, item: dict[str, Any]) -> None:
        found = core.rotation_of(item)
        if found is not None:
            instance_id, key, expiration, role = found
            self.rotations.record(instance_id, key, expiration, times.iso(self.clock.now()), "event", role)

    def note(self, kind: str, text: str, **fields: Any) -> None:
        """Something the console saw or did, on the live feed."""
        self.hub.publish({"Kind": kind, "Text": text, "At": time.time(), **fields})


def _stat(pid: int) -> str | None:
    if not pid:
        return None
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None


@contextlib.asynccontextmanager
async def running(settings: Settings, cluster_path: Path | None, trace_url: str = "") -> AsyncIterator[tuple[Console, int]]:
    """The console's HTTP server, listening; yields it and its port."""
    async with aiohttp.ClientSession(trust_env=False) as http:
        credential = api.Credential(settings.root_access_key_id, settings.root_access_key_secret)
        console = Console(settings, Gateway(http, settings.gateway_url, credential), cluster_path, http)
        runner = web.AppRunner(make_app(console), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        tasks = [asyncio.create_task(console.probe_forever(), name="console:probes")]
        if trace_url:
            tasks.append(asyncio.create_task(console.follow(trace_url), name="console:feed"))
        try:
            yield console, port
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if console.faults is not None:
                await console.faults.close()
            await runner.cleanup()


async def serve(settings: Settings) -> None:
    if not settings.root_access_key_id or not settings.root_access_key_secret:
        raise SystemExit("console: RAMSIM_ROOT_ACCESS_KEY_ID and RAMSIM_ROOT_ACCESS_KEY_SECRET (the operator's AccessKey) are required")
    if not settings.gateway_url:
        raise SystemExit("console: RAMSIM_GATEWAY_URL is required")
    clock = service.clock_for(settings)
    bus = await service.connect(NAME, settings, clock)
    client = await BusClient(bus, NAME, clock, ready=False).start()  # "starting" until HTTP listens
    cluster_path = Path(os.environ["RAMSIM_CLUSTER"]) if os.environ.get("RAMSIM_CLUSTER") else None
    trace_url = os.environ.get("RAMSIM_TRACE_BROKER_URL", "")  # the read-only `trace` identity (services/runtime/tap.py)
    async with running(settings, cluster_path, trace_url) as (_, port):
        client.ready = True
        log.info("service_ready", node=NAME, url=f"http://{settings.http_host}:{port}")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await bus.close()
            log.info("service_stopped", node=NAME)


def main(argv: Sequence[str] | None = None) -> None:
    service.run(NAME, "Console: the cluster's web console (sign in with the operator AccessKey).", serve, argv=argv)

