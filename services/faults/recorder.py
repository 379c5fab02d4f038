"""I/O shell: the Recorder: a run's history, recorded from a live cluster for the invariant checker.

::

    async with Recorder(cluster, interval=0.05) as rec:        # cluster: services.cli.up.Cluster
        await rec.attach(instance_id, "AppRole")               # timed, recorded (Attach + Exchange)
        async with rec.fault("kill", "sts"):                   # a Fault window, from enter to exit
            ...                                                # kill sts, restart it, wait until it answers
        rec.write("oss.Object", key, acknowledged=True)        # what the run wrote ...
        await rec.wait_for(lambda h: ..., timeout=10, what="...")
        await rec.detach(instance_id, "AppRole")
        rec.present("oss.Object", keys_read_back)              # ... and what it read back at the end
    report = rec.check(Bounds(detach_bound=1.0))               # services.faults.invariants
    assert report.ok, report.table()

While open it

* probes every instance's metadata view (the URLs of ECS's ``DescribeInstanceMetadataEndpoints``,
  loopback only: never the real ``100.100.100.200``) every ``interval`` seconds with aiohttp: the
  role listing, then that role's credential document, as one :class:`Probe`. Hardened-mode
  instances get a metadata token first. After a probe gets no answer the endpoints are read
  again (at most once a second), so an agent restarted on another port is followed;
* joins the bus as the cluster's ``observer`` identity and records every event (ECS's
  RoleAttachedToInstance / RoleDetachedFromInstance / InstanceCredentialsRefreshed and the rest
  as :class:`Event`, the workload's AppCallCompleted as :class:`Call`), duplicates dropped;
* records, when it opens, the roles already attached (``Attach(existing=True)``).

Simulated times the cluster states (a credential's Expiration, an event's ``sent_at``) are
converted to wall-clock with the cluster's time scale and origin. With ``journal=`` every record
is also appended to a JSON-lines file as it happens, so a run that dies still leaves a history
(``ramsim check`` reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
import urllib.error
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable, Iterable, TypeVar

import aiohttp
import structlog

from protocol import codec, topics
from protocol.errors import ProtocolError
from protocol.messages.app import AppCallCompleted
from protocol.messages.ecs import InstanceCredentialsRefreshed, RoleAttachedToInstance, RoleDetachedFromInstance
from protocol.times import parse_iso
from services.cli import api, broker
from services.cli.up import Cluster, wait_running
from services.faults.history import (NO_ANSWER, Attach, Call, Detach, Event, Exchange, Fault, History, Mark, Present,
                                     Probe, Record, Write, encode_jsonl, encode_record, wall_time)
from services.faults.invariants import Bounds, Report, check
from services.runtime.mqtt_bus import MqttBus

log = structlog.get_logger("recorder")
T = TypeVar("T")

CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
MAX_IDS = 100  # ECS takes at most 100 InstanceIds per call


def loopback(url: str) -> str:
    """``url`` if it is plain http to a loopback address; ValueError otherwise (the recorder
    never probes anything else, least of all the real 100.100.100.200)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address: only "localhost" is known to stay on this machine
        local = False
    if parts.scheme != "http" or not local:
        raise ValueError(f"refusing to probe a metadata URL that is not loopback http: {url!r}")
    return url.rstrip("/")


@dataclass
class Target:
    instance_id: str
    host_id: str
    url: str
    token: str = ""


class Recorder:
    """Records probes, bus events, faults, writes and API calls into :attr:`history`.

    ``cluster``: a running :class:`services.cli.up.Cluster` (its gateway for API calls as root,
    its ``observer`` broker identity for events). ``interval``: seconds between two probes of one
    instance. ``instances``: probe only these (default: every instance with a metadata view when
    the recorder opens, plus those :meth:`launch` starts or :meth:`refresh_endpoints` finds).
    ``observe``: record bus events. ``probe_timeout``: seconds before an unanswered probe counts
    as no answer. ``api_timeout``: seconds for an API call. ``journal``: append each record to
    this JSON-lines file as it happens. ``ready_timeout``: how long opening may wait for the
    instances' metadata views."""

    def __init__(self, cluster: Cluster, *, interval: float = 0.05, instances: Iterable[str] | None = None,
                 observe: bool = True, probe_timeout: float = 1.0, api_timeout: float = 10.0,
                 journal: str | Path | None = None, ready_timeout: float = 10.0) -> None:
        if interval <= 0 or probe_timeout <= 0:
            raise ValueError("interval and probe_timeout must be > 0")
        self.cluster = cluster
        self.interval = interval
        self.wanted = set(instances) if instances is not None else None
        self.observe = observe
        self.probe_timeout = probe_timeout
        self.api_timeout = api_timeout
        self.ready_timeout = ready_timeout
        self.history = History()
        self.targets: dict[str, Target] = {}
        self.probe_errors = 0    # probes that got no answer
        self.bad_events = 0      # bus messages that could not be decoded
        self._journal_path = Path(journal) if journal is not None else None
        self._journal: IO[bytes] | None = None
        self._scale = cluster.file.time_scale or 1.0
        self._origin = cluster.file.time_origin
        self._changed = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._bus: MqttBus | None = None
        self._seen: set[tuple[str, int]] = set()
        self._open_faults: dict[int, Fault] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._last_refresh = 0.0
        self._stopping = False
        self._probing = False

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> "Recorder":
        if self._journal_path is not None:
            self._journal_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal = open(self._journal_path, "ab")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.probe_timeout), trust_env=False)
        try:
            if self.observe:
                self._bus = await MqttBus.connect(self.cluster.broker_url(broker.OBSERVER),
                                                  broker.tool_client_id(broker.OBSERVER), persistent=False)
                await self._bus.subscribe(topics.events(), self._on_event)
            await self._wait_for_endpoints()
            await self._snapshot_roles()
            self._start_probing()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values()) + ([self._refreshing] if self._refreshing is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.close()
            self._bus = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        now = time.time()
        for fault in list(self._open_faults.values()):  # a fault still open ends with the recording
            self._end_fault(fault, now)
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- what an experiment records ---------------------------------------------------------
    def add(self, record: T) -> T:
        """Append any record (journalled, and wakes :meth:`wait_for`)."""
        assert isinstance(record, Record)
        self.history.add(record)
        if self._journal is not None:
            self._journal.write(encode_record(record))
            self._journal.flush()
        self._changed.set()
        return record

    def write(self, kind: str, key: str, acknowledged: bool, *, deleted: bool = False, at: float | None = None) -> Write:
        """Record a write the run made (``at``: when it was issued; default now)."""
        return self.add(Write(at=time.time() if at is None else at, kind=kind, key=key, acknowledged=acknowledged,
                              deleted=deleted))

    def present(self, kind: str, keys: Iterable[str]) -> Present:
        """Record the keys of ``kind`` read back at the end of the run."""
        return self.add(Present(kind=kind, keys=sorted(set(keys)), at=time.time()))

    def exchange(self, request_id: str, replies: int, *, what: str = "", at: float | None = None) -> Exchange:
        """Record ``replies`` answers to request ``request_id`` (records for one id add up)."""
        return self.add(Exchange(request_id=request_id, replies=replies, at=time.time() if at is None else at, what=what))

    def mark(self, text: str) -> Mark:
        return self.add(Mark(at=time.time(), text=text))

    @contextlib.asynccontextmanager
    async def fault(self, kind: str, target: str) -> AsyncIterator[Fault]:
        """A Fault window from entering to leaving the block (leave it once the target is back).

        An open window is journalled at once with ``end`` unset; the checker lets the closed
        record of the same window supersede it."""
        opened = self.add(Fault(start=time.time(), kind=kind, target=target))
        self._open_faults[id(opened)] = opened
        try:
            yield opened
        finally:
            self._end_fault(opened, time.time())

    def _end_fault(self, opened: Fault, end: float) -> None:
        if self._open_faults.pop(id(opened), None) is None:
            return
        closed = Fault(start=opened.start, end=end, kind=opened.kind, target=opened.target)
        for i in range(len(self.history.records) - 1, -1, -1):
            if self.history.records[i] is opened:
                self.history.records[i] = closed
                break
        if self._journal is not None:
            self._journal.write(encode_record(closed))
            self._journal.flush()
        self._changed.set()

    # -- API calls, timed and recorded ----------------------------------------------------
    async def api(self, product: str, action: str, **params: str) -> dict[str, Any]:
        """Call an API as the account root through the gateway; record an :class:`Exchange`
        (1 reply for any answer, error answers included; 0 when the call timed out after being
        sent; none when the connection was refused). Raises what :func:`services.cli.api.call` raises."""
        request_id = f"{product}.{action}-{uuid.uuid4().hex[:12]}"
        started = time.time()
        try:
            answer = await asyncio.to_thread(api.call, self.cluster.file.gateway_url, product, action, params,
                                             self.cluster.credential, timeout=self.api_timeout)
        except api.ApiError:
            self.exchange(request_id, 1, what=f"{product}:{action}", at=started)
            raise
        except (OSError, urllib.error.URLError) as exc:
            if not _refused(exc):
                self.exchange(request_id, 0, what=f"{product}:{action}", at=started)
            raise
        self.exchange(request_id, 1, what=f"{product}:{action}", at=started)
        return answer

    async def attach(self, instance_id: str, role: str, *, policy: str = "") -> Attach:
        """AttachInstanceRamRole for one instance, recorded as an :class:`Attach` (never raises
        for an API error: ``ok`` and ``code`` say how it went)."""
        params = {"RegionId": self.cluster.file.region_id, "RamRoleName": role, "InstanceIds": json.dumps([instance_id])}
        if policy:
            params["Policy"] = policy
        requested = time.time()
        ok, code, acknowledged = await self._change("AttachInstanceRamRole", instance_id, params)
        return self.add(Attach(at_requested=requested, at_acknowledged=acknowledged, instance_id=instance_id, role=role,
                               ok=ok, code=code))

    async def detach(self, instance_id: str, role: str) -> Detach:
        """DetachInstanceRamRole of ``role`` from one instance, recorded as a :class:`Detach`."""
        params = {"RegionId": self.cluster.file.region_id, "RamRoleName": role, "InstanceIds": json.dumps([instance_id])}
        requested = time.time()
        ok, code, acknowledged = await self._change("DetachInstanceRamRole", instance_id, params)
        return self.add(Detach(at_requested=requested, at_acknowledged=acknowledged, instance_id=instance_id, role=role,
                               ok=ok, code=code))

    async def _change(self, action: str, instance_id: str, params: dict[str, str]) -> tuple[bool, str, float | None]:
        """(ok, code, when acknowledged: None when no answer came back and it may still apply)."""
        try:
            answer = await self.api("ecs", action, **params)
        except api.ApiError as exc:
            return False, exc.code, time.time()
        except (OSError, urllib.error.URLError) as exc:
            return False, type(_reason(exc)).__name__, time.time() if _refused(exc) else None
        acknowledged = time.time()
        results = next(iter(answer.get(f"{action}Results", {}).values()), [])
        mine = next((r for r in results if r.get("InstanceId") == instance_id), {})
        return bool(mine.get("Success")), str(mine.get("Code", "")), acknowledged

    async def launch(self, *, role: str = "", amount: int = 1, timeout: float = 30.0) -> list[str]:
        """RunInstances (with ``role`` recorded as an :class:`Attach` of each new instance), wait
        until they run, and start probing them."""
        params = {"RegionId": self.cluster.file.region_id, "Amount": str(amount)}
        if role:
            params["RamRoleName"] = role
        requested = time.time()
        answer = await self.api("ecs", "RunInstances", **params)
        acknowledged = time.time()
        instance_ids: list[str] = answer["InstanceIdSets"]["InstanceIdSet"]
        if role:
            for instance_id in instance_ids:
                self.add(Attach(at_requested=requested, at_acknowledged=acknowledged, instance_id=instance_id, role=role, ok=True))
        if self.wanted is not None:
            self.wanted |= set(instance_ids)
        deadline = time.monotonic() + timeout
        await asyncio.to_thread(wait_running, self.cluster, instance_ids, deadline)
        while True:  # Running means the agent announced the view, so this is normally one call
            await self.refresh_endpoints()
            missing = set(instance_ids) - set(self.targets)
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata endpoint for {sorted(missing)} in {timeout}s")
            await asyncio.sleep(0.05)
        self._start_probing()
        return instance_ids

    # -- reading the history while it grows -----------------------------------------------
    async def wait_for(self, predicate: Callable[[History], T], *, timeout: float = 10.0, what: str = "condition") -> T:
        """Wait until ``predicate(history)`` is truthy (re-evaluated on every new record) and
        return its value; TimeoutError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            value = predicate(self.history)
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def latest(self, instance_id: str) -> Probe | None:
        """The newest probe of an instance."""
        return next((r for r in reversed(self.history.records) if isinstance(r, Probe) and r.instance_id == instance_id), None)

    def check(self, bounds: Bounds | None = None) -> Report:
        return check(self.history, bounds)

    def save(self, path: str | Path) -> Path:
        """Write the history as JSON lines (what ``ramsim check`` reads)."""
        path = Path(path)
        path.write_bytes(encode_jsonl(self.history))
        return path

    # -- endpoints and the roles already attached -------------------------------------------
    async def refresh_endpoints(self, *, timeout: float | None = None) -> None:
        """Read DescribeInstanceMetadataEndpoints again: new instances, moved listeners."""
        self._last_refresh = time.monotonic()
        from services.cli.instances import metadata_endpoints

        endpoints = await asyncio.to_thread(metadata_endpoints, self.cluster.file.gateway_url, self.cluster.credential,
                                            timeout or self.api_timeout)
        for e in endpoints:
            instance_id, url = e["InstanceId"], loopback(e["Url"])
            if self.wanted is not None and instance_id not in self.wanted:
                continue
            known = self.targets.get(instance_id)
            if known is None:
                self.targets[instance_id] = Target(instance_id, e.get("HostId", ""), url)
            elif known.url != url or known.host_id != e.get("HostId", known.host_id):
                known.url, known.host_id, known.token = url, e.get("HostId", known.host_id), ""
        if self._probing and not self._stopping:
            self._start_probing()

    async def _wait_for_endpoints(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            await self.refresh_endpoints()
            missing = (self.wanted or set()) - set(self.targets)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata endpoint for {sorted(missing)} after {self.ready_timeout}s")
            await asyncio.sleep(0.05)  # an instance still Pending: its agent has not announced the view yet

    async def _snapshot_roles(self) -> None:
        ids = sorted(self.targets)
        for start in range(0, len(ids), MAX_IDS):
            requested = time.time()
            answer = await self.api("ecs", "DescribeInstanceRamRole", RegionId=self.cluster.file.region_id,
                                    InstanceIds=json.dumps(ids[start:start + MAX_IDS]), PageSize="100")
            acknowledged = time.time()
            sets = answer.get("InstanceRamRoleSets", {}).get("InstanceRamRoleSet", [])
            for s in sets:
                if s.get("RamRoleName"):
                    self.add(Attach(at_requested=requested, at_acknowledged=acknowledged, instance_id=s["InstanceId"],
                                    role=s["RamRoleName"], ok=True, existing=True))

    def _stale_endpoints(self) -> None:
        if self._stopping or (self._refreshing is not None and not self._refreshing.done()):
            return
        if time.monotonic() - self._last_refresh < 1.0:
            return

        async def refresh() -> None:
            try:
                await self.refresh_endpoints(timeout=min(self.api_timeout, 2.0))
            except Exception as exc:  # noqa: BLE001 - the gateway or ECS may be the fault; try again later
                log.info("endpoints_refresh_failed", error=repr(exc))

        self._last_refresh = time.monotonic()
        self._refreshing = asyncio.create_task(refresh(), name="recorder-endpoints")

    # -- probing --------------------------------------------------------------------------
    def _start_probing(self) -> None:
        self._probing = True
        for instance_id in self.targets:
            if instance_id not in self._tasks:
                self._tasks[instance_id] = asyncio.create_task(self._probe_loop(instance_id), name=f"probe-{instance_id}")

    async def _probe_loop(self, instance_id: str) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._stopping:
            probe = await self.probe(instance_id)
            self.add(probe)
            if probe.status == NO_ANSWER:
                self.probe_errors += 1
                self._stale_endpoints()
            due = max(due + self.interval, loop.time())  # behind: no burst to catch up
            await asyncio.sleep(due - loop.time())

    async def probe(self, instance_id: str) -> Probe:
        """One probe of an instance (not recorded: the loop records it)."""
        target = self.targets[instance_id]
        base = dict(instance_id=instance_id, host_id=target.host_id)
        started = time.time()
        at, role = started, ""
        try:
            status, body = await self._get(target, CREDENTIALS)
            if status != 200:
                return Probe(at=started, status=status, took=time.time() - started, **base)
            role = body.strip().splitlines()[0].strip() if body.strip() else ""
            if not role:
                return Probe(at=started, status=NO_ANSWER, error="empty role listing", took=time.time() - started, **base)
            at = time.time()
            status, body = await self._get(target, CREDENTIALS + role)
            took = time.time() - at
            if status != 200:
                return Probe(at=at, status=status, role=role, took=took, **base)
            doc = json.loads(body)
            if doc.get("Code") != "Success":
                return Probe(at=at, status=NO_ANSWER, role=role, took=took, error=f"Code {doc.get('Code')!r}", **base)
            expiration = wall_time(parse_iso(doc["Expiration"]), self._scale, self._origin)
            return Probe(at=at, status=200, role=role, access_key_id=doc["AccessKeyId"], expiration=expiration, took=took,
                         **base)
        except asyncio.TimeoutError:
            return Probe(at=at, status=NO_ANSWER, role=role, took=time.time() - at, error="timeout", **base)
        except aiohttp.ClientError as exc:
            return Probe(at=at, status=NO_ANSWER, role=role, took=time.time() - at, error=type(exc).__name__, **base)
        except (ValueError, KeyError, TypeError) as exc:
            return Probe(at=at, status=NO_ANSWER, role=role, took=time.time() - at, error=f"malformed: {exc}"[:200], **base)

    async def _get(self, target: Target, path: str) -> tuple[int, str]:
        """GET ``path``; a hardened-mode 401 is answered by fetching a token once and asking again."""
        assert self._session is not None
        for attempt in range(2):
            headers = {TOKEN_HEADER: target.token} if target.token else {}
            async with self._session.get(target.url + path, headers=headers, allow_redirects=False) as response:
                status, body = response.status, await response.text()
            if status != 401 or attempt:
                return status, body
            async with self._session.put(target.url + TOKEN_PATH, headers={TOKEN_TTL_HEADER: "21600"}) as response:
                if response.status != 200:
                    return status, body
                target.token = await response.text()
        return status, body

    # -- bus events -------------------------------------------------------------------------
    def _wall(self, simulated: float) -> float:
        return wall_time(simulated, self._scale, self._origin) if simulated else time.time()

    async def _on_event(self, topic: str, payload: bytes) -> None:
        try:
            env = codec.decode(payload)
        except ProtocolError:
            self.bad_events += 1
            return
        if (env.src, env.msg_id) in self._seen:  # at-least-once delivery: a redelivery
            return
        self._seen.add((env.src, env.msg_id))
        body, at = env.body, self._wall(env.sent_at)
        if isinstance(body, AppCallCompleted):
            self.add(Call(at=at, instance_id=body.instance_id, operation=body.operation, outcome=body.outcome,
                          latency_ms=body.latency_ms, code=body.code, request_id=body.request_id))
        elif isinstance(body, InstanceCredentialsRefreshed):
            self.add(Event(at=at, name=type(body).__name__, src=env.src, instance_id=body.instance_id, role=body.ram_role_name,
                           access_key_id=body.access_key_id, expiration=self._wall(body.expiration)))
        elif isinstance(body, (RoleAttachedToInstance, RoleDetachedFromInstance)):
            self.add(Event(at=at, name=type(body).__name__, src=env.src, instance_id=body.instance_id, role=body.ram_role_name))
        else:
            self.add(Event(at=at, name=type(body).__name__, src=env.src))


def _reason(exc: BaseException) -> BaseException:
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, BaseException) else exc


def _refused(exc: BaseException) -> bool:
    """The request never left: the connection was refused (nothing can have been applied)."""
    return isinstance(_reason(exc), ConnectionRefusedError)


__all__ = ["Recorder", "Target", "loopback", "CREDENTIALS"]
