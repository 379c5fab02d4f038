"""I/O shell: ``ramsim app``: an application running "on" an instance, the measuring stick.

It gets credentials only through its instance's metadata view, with the real
``alibabacloud-credentials`` ECS RAM role provider (``proxy=`` the instance's listener, so the
provider's ``http://100.100.100.200/...`` requests reach that view and never the real address),
and calls OSS with the real ``oss2`` SDK at a steady rate, alternating PutObject and GetObject
of small objects. Every call ends as one outcome:

    ok        the call succeeded (a GetObject also returned exactly the bytes put)
    denied    AccessDenied: the role's policies do not allow it
    expired   SecurityTokenExpired / InvalidSecurityToken*: the credential was no longer good
    error     anything else (network, NoSuchBucket, credentials unavailable, wrong bytes, ...)

Each outcome and latency is counted (a progress line every second on stderr, a summary on
stdout at the end) and published as an ``AppCallCompleted`` event on
``ramsim/v1/event/app/AppCallCompleted``: the app joins the bus as the cluster file's
``operator`` identity, which the broker ACL lets write ``event/app/+`` and no other event.

The pure parts (:func:`classify`, :func:`percentile`, :class:`Stats`, :func:`next_operation`)
take no I/O and are unit-tested on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TextIO

os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"  # before any credentials SDK import: no default chain reaches 100.100.100.200

from protocol import topics  # noqa: E402
from protocol.messages.app import OUTCOMES, AppCallCompleted  # noqa: E402
from services.cli.errors import CliError  # noqa: E402

EVENT_TOPIC = topics.event("app", "AppCallCompleted")
PUT, GET = "PutObject", "GetObject"
EXPIRED_CODES = frozenset({"SecurityTokenExpired", "InvalidSecurityToken", "InvalidSecurityToken.Expired",
                           "InvalidSecurityToken.Malformed", "InvalidSecurityToken.MismatchWithAccessKey"})


# -- pure parts -------------------------------------------------------------------------------
def classify(exc: BaseException | None) -> tuple[str, str]:
    """(outcome, code) of a call that raised ``exc`` (``None``: it succeeded).

    oss2's server errors carry OSS's error ``code``; anything without one (a connection
    refused, a credentials lookup that failed) is an ``error`` named by its exception type."""
    if exc is None:
        return "ok", ""
    code = getattr(exc, "code", "")
    code = code if isinstance(code, str) and code else type(exc).__name__
    if code == "AccessDenied":
        return "denied", code
    if code in EXPIRED_CODES or code.startswith(("InvalidSecurityToken", "SecurityTokenExpired")):
        return "expired", code
    return "error", code


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first
    return ordered[int(min(rank, len(ordered))) - 1]


def next_operation(previous: str | None, stored_key: str | None) -> str:
    """Alternate Put and Get; Get only once an object of ours is known to exist (else Put)."""
    return GET if previous == PUT and stored_key is not None else PUT


@dataclass
class Call:
    operation: str
    outcome: str
    latency_ms: float
    code: str = ""


@dataclass
class Stats:
    calls: list[Call] = field(default_factory=list)

    def add(self, call: Call) -> None:
        if call.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {call.outcome!r}")
        self.calls.append(call)

    def counts(self, operation: str | None = None) -> dict[str, int]:
        counted = dict.fromkeys(OUTCOMES, 0)
        for c in self.calls:
            if operation is None or c.operation == operation:
                counted[c.outcome] += 1
        return counted

    def latencies(self, operation: str | None = None) -> list[float]:
        return [c.latency_ms for c in self.calls if operation is None or c.operation == operation]

    def progress(self, elapsed: float) -> str:
        n, lat = self.counts(), self.latencies()
        return (f"{elapsed:5.1f}s calls={len(self.calls)} ok={n['ok']} denied={n['denied']} expired={n['expired']} "
                f"error={n['error']} p50={percentile(lat, 50):.1f}ms p99={percentile(lat, 99):.1f}ms")

    def summary(self, **extra: Any) -> dict[str, Any]:
        def block(operation: str | None) -> dict[str, Any]:
            lat = self.latencies(operation)
            return {"calls": len(lat), **self.counts(operation),
                    "latency_ms": {"p50": round(percentile(lat, 50), 3), "p90": round(percentile(lat, 90), 3),
                                   "p99": round(percentile(lat, 99), 3), "max": round(max(lat, default=0.0), 3)}}

        codes: dict[str, int] = {}
        for c in self.calls:
            if c.code:
                codes[c.code] = codes.get(c.code, 0) + 1
        return {**extra, **block(None), "by_operation": {op: block(op) for op in (PUT, GET)}, "codes": codes}


def table(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    rows = [("operation", "calls", *OUTCOMES, "p50 ms", "p90 ms", "p99 ms", "max ms")]
    for name, block in [*summary["by_operation"].items(), ("all", summary)]:
        lat = block["latency_ms"]
        rows.append((name, str(block["calls"]), *(str(block[o]) for o in OUTCOMES),
                     *(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "max"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(summary["codes"].items())) or "none"
    head = (f"instance {summary['instance_id']}  bucket {summary['bucket']}  {summary['elapsed_s']:.1f}s  "
            f"events published {summary['events_published']}")
    return "\n".join([head, *lines, f"error codes: {codes}"])


# -- I/O --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _imds_enabled_for_a_proxied_provider() -> Iterator[None]:
    """The credentials SDK refuses to build an ECS provider while ECS metadata is disabled; lift
    that only while building one that is given a proxy, then put it back."""
    from alibabacloud_credentials.utils import auth_util

    before = auth_util.environment_ecs_metadata_disabled
    auth_util.environment_ecs_metadata_disabled = "false"
    try:
        yield
    finally:
        auth_util.environment_ecs_metadata_disabled = before


def _on_the_cluster_clock(provider_class: type, clock: Any) -> type:
    """``provider_class`` with its two cache moments on a time-scaled cluster's clock. The SDK keeps a
    credential until 15 minutes before its Expiration and asks again an hour after a fetch, both read
    on this machine's clock; a scaled cluster's Expiration is simulated time (at 600x an hour's
    credential lives 6 real seconds), so unchanged the SDK would serve a long-expired token. Only
    those two moments are mapped to real time; the SDK fetches, parses and caches as it always does."""

    def real(simulated: float) -> int:
        return int(time.time() + (simulated - clock.now()) / clock.scale)

    class OnTheClusterClock(provider_class):  # type: ignore[misc, valid-type]
        def _get_stale_time(self, expiration: int) -> int:
            return super()._get_stale_time(expiration) if expiration < 0 else real(expiration - 15 * 60)

        def _get_prefetch_time(self, expiration: int) -> int:
            return super()._get_prefetch_time(expiration) if expiration < 0 else real(clock.now() + 60 * 60)

    return OnTheClusterClock


def instance_provider(metadata_url: str, role_name: str | None = None, clock: Any = None) -> Any:
    """The real ECS RAM role credentials provider, reading ``metadata_url``'s view as 100.100.100.200;
    ``clock``: the cluster's (a ScaledClock), when it runs faster than the wall."""
    parts = urllib.parse.urlsplit(metadata_url)  # a shared-mode view names its instance as the user: http://<id>:@127.0.0.1:PORT
    if parts.scheme != "http" or not (parts.hostname == "localhost" or (parts.hostname or "").startswith("127.") or parts.hostname == "::1"):
        raise ValueError(f"refusing a metadata proxy that is not a local listener: {metadata_url!r}")
    from alibabacloud_credentials.http import HttpOptions
    from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider

    provider_class = EcsRamRoleCredentialsProvider
    if clock is not None and clock.scale != 1:
        provider_class = _on_the_cluster_clock(provider_class, clock)
    with _imds_enabled_for_a_proxied_provider():
        return provider_class(role_name=role_name, async_update_enabled=False,
                                             http_options=HttpOptions(proxy=metadata_url.rstrip("/"), connect_timeout=2000,
                                                                      read_timeout=2000))


def metadata_route_problem(routes: str, address: str = "100.100.100.200") -> str | None:
    """Why ``--on-instance`` must not dial ``address`` from here, or None: the most specific route
    to it (``routes``: /proc/net/route) must be on-link (no gateway), so that it is the instance's
    own network (a container's, a namespace's) and never the real metadata service reached
    through a router."""
    import ipaddress

    target = int(ipaddress.IPv4Address(address))
    best: tuple[int, int] | None = None  # (prefix length, flags) of the most specific route
    for line in routes.splitlines()[1:]:
        fields = line.split()  # Iface Destination Gateway Flags RefCnt Use Metric Mask ...; hex, little-endian
        if len(fields) < 8:
            continue
        dest, flags, mask = int.from_bytes(bytes.fromhex(fields[1])[::-1], "big"), int(fields[3], 16), \
            int.from_bytes(bytes.fromhex(fields[7])[::-1], "big")
        if not flags & 0x1 or target & mask != dest:  # RTF_UP, and a route that covers the address
            continue
        prefix = bin(mask).count("1")
        if best is None or prefix > best[0]:
            best = (prefix, flags)
    if best is None:
        return f"no route to {address} here"
    if best[1] & 0x2:  # RTF_GATEWAY
        return (f"{address} is reached through a gateway here: that could be the real metadata service; run "
                "--on-instance only inside an instance (a compose instance container, an rsi- namespace)")
    return None


def oss_credentials(provider: Any) -> Any:
    """``provider`` as an oss2 credentials provider (asked on every request)."""
    import oss2

    class FromInstanceMetadata(oss2.credentials.CredentialsProvider):
        def get_credentials(self) -> oss2.credentials.Credentials:
            c = provider.get_credentials()
            return oss2.credentials.Credentials(c.get_access_key_id(), c.get_access_key_secret(), c.get_security_token())

    return FromInstanceMetadata()


@dataclass
class Options:
    instance_id: str
    cluster_file: str | None = None
    bucket: str = ""
    rate: float = 10.0
    duration: float = 10.0
    max_calls: int = 100_000
    key_prefix: str = "ramsim-app/"
    size: int = 256
    output: str = "table"
    on_instance: bool = False  # inside an instance: the SDK's own defaults at 100.100.100.200, no cluster file
    oss_url: str = ""


class Workload:
    """The loop: one call at a time, started every ``1/rate`` seconds (at once when behind)."""

    def __init__(self, options: Options, bucket: Any, publish: Callable[[AppCallCompleted], None],
                 progress: Callable[[str], None]) -> None:
        self.options, self.bucket, self.publish, self.say = options, bucket, publish, progress
        self.stats = Stats()
        self.previous: str | None = None
        self.stored: tuple[str, bytes] | None = None
        self.sequence = 0
        self.bucket_ready = False

    def ensure_bucket(self) -> None:
        """Create the bucket before the first PutObject, and again before each one until that worked:
        an application started before its instance has a role (the metadata view 404s) must not
        give up on its bucket, it gets one once the role arrives. An existing bucket is fine."""
        if self.bucket_ready:
            return
        try:
            self.bucket.create_bucket()
            self.say(f"created bucket {self.bucket.bucket_name}")
        except Exception as exc:  # noqa: BLE001 - classified by the caller, as the call's outcome
            if classify(exc)[1] != "BucketAlreadyExists":
                raise
        self.bucket_ready = True

    def one_call(self) -> Call:
        operation = next_operation(self.previous, self.stored[0] if self.stored else None)
        self.previous = operation
        request_id = ""
        started = time.perf_counter()
        try:
            if operation == PUT:
                self.ensure_bucket()
                self.sequence += 1
                key = f"{self.options.key_prefix}{self.options.instance_id}/{self.sequence:08d}"
                data = os.urandom(self.options.size)
                request_id = self.bucket.put_object(key, data).request_id
                self.stored = (key, data)
            else:
                assert self.stored is not None
                got = self.bucket.get_object(self.stored[0])
                body, request_id = got.read(), got.request_id
                if body != self.stored[1]:
                    raise _Mismatch()
            outcome, code = classify(None)
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome
            outcome, code = classify(exc)
            request_id = getattr(exc, "request_id", "") or ""
        latency = (time.perf_counter() - started) * 1000
        call = Call(operation, outcome, latency, code)
        self.stats.add(call)
        self.publish(AppCallCompleted(instance_id=self.options.instance_id, operation=operation, outcome=outcome,
                                      latency_ms=round(latency, 3), code=code, request_id=request_id))
        return call

    async def run(self) -> float:
        interval = 1.0 / self.options.rate if self.options.rate > 0 else 0.0
        started = time.monotonic()
        next_progress, said = started + 1.0, -1
        while len(self.stats.calls) < self.options.max_calls:
            now = time.monotonic()
            if now - started >= self.options.duration:
                break
            due = started + len(self.stats.calls) * interval
            if due > now:
                await asyncio.sleep(min(due, started + self.options.duration, next_progress) - now)
            else:
                await asyncio.to_thread(self.one_call)
            if time.monotonic() >= next_progress:
                self.say(self.stats.progress(time.monotonic() - started))
                next_progress, said = next_progress + 1.0, len(self.stats.calls)
        elapsed = time.monotonic() - started
        if said != len(self.stats.calls) or not self.stats.calls:
            self.say(self.stats.progress(elapsed))
        return elapsed


class OnInstanceError(CliError):
    """``--on-instance`` cannot run here; the message says why."""


def on_instance_provider(options: Options) -> Any:
    """``--on-instance``: the SDK's own ECS RAM role provider, as on a real instance (no proxy, its
    default address), once the route check says 100.100.100.200 is this network's; the instance
    id (when not given) is read from the metadata service too."""
    try:
        routes = open("/proc/net/route").read()
    except OSError as exc:
        raise OnInstanceError(f"--on-instance: cannot read the routes ({exc})") from None
    problem = metadata_route_problem(routes)
    if problem:
        raise OnInstanceError(f"--on-instance: {problem}")
    from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
    from alibabacloud_credentials.utils import auth_util

    os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "false"
    auth_util.environment_ecs_metadata_disabled = "false"
    if not options.instance_id:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while True:
            try:
                with opener.open("http://100.100.100.200/latest/meta-data/instance-id", timeout=2) as answer:
                    options.instance_id = answer.read().decode()
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise OnInstanceError(f"--on-instance: no instance id from 100.100.100.200: {exc}") from None
                time.sleep(0.5)
    provider = EcsRamRoleCredentialsProvider(async_update_enabled=False)
    deadline = time.monotonic() + 60  # a role attached a moment ago: its first credential is on its way
    while True:
        try:
            provider.get_credentials()
            return provider
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own types; after the deadline they show in the calls
            if time.monotonic() > deadline:
                print(f"[app {options.instance_id}] no credential from 100.100.100.200 yet: {exc}", file=sys.stderr, flush=True)
                return provider
            time.sleep(0.5)


class _Mismatch(Exception):
    code = "ContentMismatch"


class Events:
    """Publishes each outcome on the bus from a queue, so a slow PUBACK never delays a call."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[AppCallCompleted | None] = asyncio.Queue()
        self.published = 0
        self.failed = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.bus: Any = None

    async def start(self, broker_url: str, node_id: str, clock: Any, client_id: str) -> str:
        """Join the bus; returns "" or why events are off."""
        self.loop = asyncio.get_running_loop()
        if not broker_url.startswith("mqtt"):
            return f"the cluster's bus ({broker_url.split(':', 1)[0]}) is not reachable from this process: no events"
        from services.runtime.bus import BusError
        from services.runtime.client import Endpoint
        from services.runtime.mqtt_bus import MqttBus

        try:
            self.bus = await MqttBus.connect(broker_url, client_id, persistent=False, timeout=5)
        except BusError as exc:
            return f"{exc}: no events"
        endpoint = Endpoint(self.bus, node_id, clock)
        self.task = asyncio.create_task(self._pump(endpoint), name="app-events")
        return ""

    def offer(self, event: AppCallCompleted) -> None:
        """Thread-safe: called from the worker thread that made the call."""
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def _pump(self, endpoint: Any) -> None:
        while (event := await self.queue.get()) is not None:
            try:
                await endpoint.publish(EVENT_TOPIC, event)
                self.published += 1
            except Exception:  # noqa: BLE001 - a lost event is counted, never fatal to the app
                self.failed += 1

    async def close(self, timeout: float = 5.0) -> None:
        if self.task is not None:
            await asyncio.sleep(0)  # let events offered from the worker thread land in the queue
            self.queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            self.task.cancel()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()


def _bucket_name(instance_id: str) -> str:
    return f"ramsim-app-{instance_id.lower().replace('_', '-')}"[:63]


async def run(options: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    import oss2

    from services.cli import cluster
    from services.cli.broker import OPERATOR, tool_client_id
    from services.cli.instances import instances
    from services.runtime.clock import ScaledClock

    def say(line: str) -> None:
        print(f"[app {options.instance_id}] {line}", file=err, flush=True)

    if options.on_instance:
        target, clock = None, None
        provider, url = await asyncio.to_thread(on_instance_provider, options), "http://100.100.100.200"
        oss_url = options.oss_url
    else:
        target = cluster.load(cluster.locate(options.cluster_file))
        if not target.oss_url:
            say("the cluster file has no OssUrl: this cluster runs no OSS")
            return 2
        # An ECS API call: in a thread, never on the loop (the live experiments run this loop beside the
        # link proxies of `ramsim up --proxy`: a blocking call here would hold ECS's own link and wait
        # out its timeout, a minute, before any instance got its role)
        listed = await asyncio.to_thread(instances, target)
        url = next((i["MetadataUrl"] for i in listed if i["InstanceId"] == options.instance_id), "")
        if not url:
            say(f"no running instance {options.instance_id} with a metadata view; see `ramsim instances`")
            return 2
        clock = ScaledClock(target.time_scale, target.time_origin)
        provider, oss_url = instance_provider(url, clock=clock), target.oss_url
    bucket_name = options.bucket or _bucket_name(options.instance_id)
    bucket = oss2.Bucket(oss2.ProviderAuth(oss_credentials(provider)), oss_url, bucket_name, connect_timeout=5)
    events = Events()
    why = "on an instance the app holds no broker identity: no events" if target is None else \
        await events.start(target.broker_url, OPERATOR, clock, tool_client_id(f"app-{options.instance_id}"))
    if why:
        say(why)
    try:
        say(f"calling OSS at {oss_url} ({bucket_name}) at {options.rate:g}/s for {options.duration:g}s "
            f"with credentials from {url}")
        workload = Workload(options, bucket, events.offer, say)
        elapsed = await workload.run()
    finally:
        await events.close()
    summary = workload.stats.summary(instance_id=options.instance_id, bucket=bucket_name, elapsed_s=round(elapsed, 3),
                                     events_published=events.published, events_failed=events.failed)
    print(json.dumps(summary, indent=2) if options.output == "json" else table(summary), file=out, flush=True)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("app", description="Run a workload 'on' an instance: credentials only from its metadata view (the "
                                   "alibabacloud-credentials ECS RAM role provider), PutObject/GetObject with oss2 at a "
                                   "steady rate; every call's outcome (ok, denied, expired, error) and latency is counted "
                                   "and published on the bus (event/app/AppCallCompleted).")
    p.add_argument("instance_id", metavar="InstanceId", nargs="?", default="",
                   help="the instance (with --on-instance: read from 100.100.100.200 when left out)")
    p.add_argument("--bucket", default="", help="bucket to use, created if missing (default ramsim-app-<instance id>)")
    p.add_argument("--rate", type=float, default=10.0, help="calls per second (default 10; 0 = as fast as possible)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    p.add_argument("--max-calls", type=int, default=100_000, help="stop after this many calls (default 100000)")
    p.add_argument("--key-prefix", default="ramsim-app/", help="object key prefix (default ramsim-app/)")
    p.add_argument("--size", type=int, default=256, help="object size in bytes (default 256)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="summary format on stdout (default table)")
    p.add_argument("--cluster-file", help="cluster file (default: $RAMSIM_CLUSTER or .ramsim/cluster.json)")
    p.add_argument("--on-instance", action="store_true",
                   help="run inside an instance (a compose.yaml instance container, an rsi- namespace): the SDK reads "
                        "http://100.100.100.200 with its defaults, no proxy and no cluster file; refused where that "
                        "address is reached through a gateway (it could be the real one)")
    p.add_argument("--oss-url", default="", help="with --on-instance: the OSS endpoint (compose.yaml: http://oss:8081)")


def main(args: argparse.Namespace) -> int:
    options = Options(instance_id=args.instance_id, cluster_file=args.cluster_file, bucket=args.bucket, rate=args.rate,
                      duration=args.duration, max_calls=args.max_calls, key_prefix=args.key_prefix, size=args.size,
                      output=args.output, on_instance=args.on_instance, oss_url=args.oss_url)
    if options.on_instance != bool(options.oss_url) or not (options.instance_id or options.on_instance):
        print("ramsim app: give an InstanceId (with a cluster file), or --on-instance with --oss-url", file=sys.stderr)
        return 2
    if options.rate < 0 or options.duration < 0 or options.max_calls < 1 or not 0 <= options.size <= 1 << 20:
        print("ramsim app: --rate and --duration must be >= 0, --max-calls >= 1, --size 0..1048576", file=sys.stderr)
        return 2
    from services.runtime import logs

    logs.configure(level="warning")  # this process's own bus client: only problems
    return asyncio.run(run(options))

