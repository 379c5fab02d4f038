"""Credential GETs/s from a metadata agent and AssumeRole/s, against baselines and a peer.

    python bench/throughput.py [--quick] [--seconds S] [--connections C] [--callers N] [--loadgen auto|wrk|python]

The ``gets`` and ``assume`` benchmarks of ``ramsim bench`` (this script runs both). Each starts
a real cluster (Mosquitto + one process per service, as ``ramsim up``) and measures:

  gets     GET <instance>/latest/meta-data/ram/security-credentials/<role> from ONE metadata
           agent, keep-alive, C connections for S seconds; loaded the same way: a bare aiohttp
           low-level handler (``web.Server``, its own process) answering the same bytes with the
           same Content-Type (the baseline; target agent/bare >= 0.7), and moto's instance-metadata
           endpoint (``moto_server``, the peer; target >= 10x). Then (not --quick; needs the shared
           metadata mode) one agent hosting 10,000 instances, wrk taking their paths in turn.
  assume   AssumeRole/s over the bus: N concurrent requests to the sts node, sent as the gateway
           sends them (target >= 3,000/s for one STS process); through the gateway from 8 threads
           (signed HMAC-SHA1, fresh nonce each); 200 sequential calls' p50 beside boto3's
           ``sts.assume_role`` to moto (target: below moto's); moto's STS from 8 threads.

The load generator is ``wrk -t1 -c<C> -d<S>s`` (one thread: the machine has 2 cores, the server
gets the other); without wrk (``apt-get install -y wrk``) a Python generator runs in its own
process: an aiohttp ClientSession with TCPConnector(limit=C) and C workers GETting until a
deadline. moto is optional (``pip install 'moto[server]' boto3``); without it its figures are n/a.

Everything talks to 127.0.0.1 only; every loop is bounded in time and count; helper processes
are stopped at the end (and get SIGTERM if this process dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench/machine.py

ROLE = "BenchRole"
ASSUME_ROLE = "BenchAssumeRole"
USER = "bench-user"
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"
MOTO_CREDENTIALS = "/latest/meta-data/iam/security-credentials/"
MOTO_ROLE_ARN = "arn:aws:iam::123456789012:role/bench"
WARMUP_CALLS = 5
MAX_REQUESTS = 5_000_000  # the Python load generator's hard cap on requests, whatever the deadline
WRK_HINT = ("wrk is not installed; using the Python load generator (it saturates before the servers do).\n"
            "  Install wrk with: apt-get install -y wrk")
MOTO_HINT = "moto is not installed; its rows are n/a. Install it with: pip install 'moto[server]' boto3"


# -- helpers that run as their own processes -----------------------------------------------------
def serve_bare(body_file: str, content_type: str, lifetime: float) -> None:
    """The baseline: aiohttp's low-level server answering fixed bytes; prints its port, then
    serves until SIGTERM or ``lifetime`` seconds, whichever comes first."""
    from aiohttp import web

    body = Path(body_file).read_bytes()

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def run() -> None:
        runner = web.ServerRunner(web.Server(handler), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), lifetime)
        await runner.cleanup()

    asyncio.run(run())


def python_load(url: str, connections: int, seconds: float, headers_json: str = "{}") -> None:
    """The fallback load generator: C workers on one keep-alive pool until a deadline, each request
    with ``headers`` (and no User-Agent, as wrk sends none); prints JSON. bench/oss.py uses it too."""
    import aiohttp

    headers = json.loads(headers_json)

    async def run() -> dict[str, float]:
        counts = {"requests": 0, "non2xx": 0, "errors": 0}
        latencies: list[float] = []
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, trust_env=False, skip_auto_headers=("User-Agent",)) as session:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < deadline and counts["requests"] < MAX_REQUESTS:
                    t = time.perf_counter()
                    try:
                        async with session.get(url, headers=headers) as answer:
                            await answer.read()
                            counts["non2xx"] += not 200 <= answer.status < 300
                    except (aiohttp.ClientError, OSError):
                        counts["errors"] += 1
                        await asyncio.sleep(0.01)
                    counts["requests"] += 1
                    if len(latencies) < 200_000:
                        latencies.append(time.perf_counter() - t)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - start
        ms = sorted(x * 1000 for x in latencies) or [0.0]
        return {**counts, "rps": counts["requests"] / elapsed, "p50": statistics.median(ms),
                "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))]}

    print(json.dumps(asyncio.run(run())), flush=True)


# -- the measuring side -----------------------------------------------------------------------
@dataclass
class Load:
    rps: float = 0.0
    p50: float = 0.0  # ms
    p99: float = 0.0  # ms
    non2xx: int = 0
    errors: int = 0
    note: str = ""


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes, str]:
    """(status, body, Content-Type) of one GET."""
    try:
        with opener.open(url, timeout=timeout) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError):
        return 0, b"", ""


def wait_for(probe, limit: float, what: str, pause: float = 0.05):
    deadline = time.monotonic() + limit
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached in {limit:.0f} s")
        time.sleep(pause)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"could not parse wrk's output:\n{out}")
    load = Load(rps=float(rps.group(1)))
    for pct, attr in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            setattr(load, attr, _ms(*m.groups()))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        load.non2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        load.errors = sum(int(x) for x in m.groups())
    return load


def load(url: str, connections: int, seconds: float, use_wrk: bool, script: Path | None = None) -> Load:
    """Load ``url`` for ``seconds``; the generator is its own process, bounded by a timeout. With
    ``script`` (wrk only), wrk runs that Lua script (which picks each request's path)."""
    seconds = max(1, round(seconds))
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency",
                *(["-s", str(script)] if script else []), url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return parse_wrk(out)
    argv = [sys.executable, str(Path(__file__).resolve()), "_load", url, str(connections), str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return Load(rps=data["rps"], p50=data["p50"], p99=data["p99"], non2xx=int(data["non2xx"]), errors=int(data["errors"]))


@contextlib.contextmanager
def child(argv: list[str], **kwargs):
    """A helper process, stopped (SIGTERM, then SIGKILL) on exit whatever happens."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stats(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95, max in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.95))], ms[-1]


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def package_version(name: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def wrk_version() -> str:
    return version(["wrk", "-v"]).split(" [")[0] if shutil.which("wrk") else "wrk not installed"


def machine() -> str:
    """bench/machine.py's line, plus the versions of aiohttp, the load generator and the peer."""
    from machine import machine as base

    return base(f"aiohttp {package_version('aiohttp')}", wrk_version(), f"moto {package_version('moto')}")


# -- 1. credential GETs ------------------------------------------------------------------------
def prepare_instance(running) -> str:
    """A role trusting ECS, an instance launched with it; the credentials URL once it serves 200."""
    from services.cli.instances import instances
    from services.ram.policy import ECS_TRUST_POLICY
    f = running.file
    running.call("ram", "CreateRole", RoleName=ROLE, AssumeRolePolicyDocument=ECS_TRUST_POLICY)
    answer = running.call("ecs", "RunInstances", RegionId=f.region_id, RamRoleName=ROLE)
    instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]

    def serving() -> str:
        base = next((i["MetadataUrl"] for i in instances(f) if i["InstanceId"] == instance_id), "")
        return base and fetch(base + CREDENTIALS + ROLE)[0] == 200 and base + CREDENTIALS + ROLE

    return wait_for(serving, 30, f"{instance_id} serving {CREDENTIALS}{ROLE}")


def moto_credentials_url(base: str) -> str:
    """moto serves one fixed role; find it in the listing and check that its path answers 200."""
    status, listing, _ = fetch(base + MOTO_CREDENTIALS)
    if status != 200 or not listing.strip():
        raise RuntimeError(f"moto's {MOTO_CREDENTIALS} answered {status}")
    url = base + MOTO_CREDENTIALS + listing.decode().split()[0]
    status, body, _ = fetch(url)
    if status != 200 or b"AccessKeyId" not in body:
        raise RuntimeError(f"moto's {url} answered {status}: {body[:200]!r}")
    return url


def load_bare(body: bytes, content_type: str, connections: int, seconds: float, use_wrk: bool, workdir: Path,
              script: Path | None = None) -> Load:
    """Load the baseline, a bare aiohttp server (its own process) answering ``body`` on every path."""
    body_file = workdir / "credentials.json"
    body_file.write_bytes(body)
    argv = [sys.executable, str(Path(__file__).resolve()), "_bare", str(body_file), content_type, str(seconds * 3 + 60)]
    with child(argv, stdout=subprocess.PIPE, text=True) as bare:
        port = int(bare.stdout.readline())  # type: ignore[union-attr]
        bare_url = f"http://127.0.0.1:{port}{CREDENTIALS}{ROLE}"
        got = fetch(bare_url)
        if got != (200, body, content_type):
            raise RuntimeError(f"the bare server does not answer as the agent does: {got[0]} {got[2]}")
        return load(bare_url, connections, seconds, use_wrk, script)


def measure_gets(agent_url: str, moto_base: str | None, connections: int, seconds: float, use_wrk: bool,
                 workdir: Path) -> dict[str, Load | None]:
    status, body, content_type = fetch(agent_url)
    assert status == 200 and body, (status, body)
    results: dict[str, Load | None] = {}
    results["ramsim metadata agent"] = load(agent_url, connections, seconds, use_wrk)
    results["bare aiohttp, same bytes"] = load_bare(body, content_type, connections, seconds, use_wrk, workdir)
    results["moto instance metadata"] = load(moto_credentials_url(moto_base), connections, seconds, use_wrk) if moto_base else None
    return results


# -- 2. AssumeRole -----------------------------------------------------------------------------
@dataclass
class Caller:
    """A RAM user allowed to assume :data:`ASSUME_ROLE`: its AccessKey, its principal, the parameters."""
    credential: object
    principal: object
    params: dict[str, str]


def prepare_caller(running) -> Caller:
    from protocol.messages.common import Principal
    from services.cli import api
    f = running.file
    user = running.call("ram", "CreateUser", UserName=USER)["User"]
    key = running.call("ram", "CreateAccessKey", UserName=USER)["AccessKey"]
    running.call("ram", "AttachPolicyToUser", PolicyType="System", PolicyName="AliyunSTSAssumeRoleAccess", UserName=USER)
    trust = json.dumps({"Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow",
                                       "Principal": {"RAM": [f"acs:ram::{f.account_id}:root"]}}], "Version": "1"})
    running.call("ram", "CreateRole", RoleName=ASSUME_ROLE, AssumeRolePolicyDocument=trust)
    principal = Principal(identity_type="RAMUser", account_id=f.account_id, arn=f"acs:ram::{f.account_id}:user/{USER}",
                          principal_id=user["UserId"], user_name=USER, access_key_id=key["AccessKeyId"])
    return Caller(api.Credential(key["AccessKeyId"], key["AccessKeySecret"]), principal,
                  {"RoleArn": f"acs:ram::{f.account_id}:role/{ASSUME_ROLE}", "RoleSessionName": "bench"})


def measure_assume_role(running, calls: int, caller: Caller | None = None) -> list[float]:
    """Seconds per sequential AssumeRole through the gateway (after warm-up calls)."""
    from services.cli import api
    caller = caller or prepare_caller(running)
    samples = []
    for i in range(WARMUP_CALLS + calls):
        t = time.perf_counter()
        answer = api.call(running.file.gateway_url, "sts", "AssumeRole", caller.params, caller.credential)
        elapsed = time.perf_counter() - t
        assert answer["Credentials"]["AccessKeyId"].startswith("STS."), answer
        if i >= WARMUP_CALLS:
            samples.append(elapsed)
    return samples


def concurrently(call, threads: int, seconds: float) -> tuple[float, int]:
    """(calls/s, failures) of ``call()`` from ``threads`` threads for ``seconds``."""
    from concurrent.futures import ThreadPoolExecutor
    deadline = time.perf_counter() + seconds
    counts = [[0, 0] for _ in range(threads)]

    def worker(n: int) -> None:
        while time.perf_counter() < deadline:
            try:
                call(n)
                counts[n][0] += 1
            except Exception:  # noqa: BLE001 - counted, shown in the row
                counts[n][1] += 1
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return sum(c[0] for c in counts) / (time.perf_counter() - start), sum(c[1] for c in counts)


async def assume_over_bus(running, caller: Caller, callers: int, seconds: float) -> tuple[float, int]:
    """(AssumeRole/s, failures): ``callers`` concurrent requests to the sts node over the bus, sent as
    the gateway sends them after it authenticated the RAM user (no HTTP, no signature check).

    Only the gateway may send a command on behalf of a principal, so this client connects with
    the gateway's identity (on the tools listener, its own client id). The sts node answers on the
    gateway's inbox, which the cluster's own gateway reads too: it is paused (SIGSTOP) meanwhile,
    so it neither competes for the CPU nor answers those replies, and afterwards it is resumed
    and given time to drain them (a Ping through its inbox comes back once it has)."""
    import signal

    from protocol.messages.common import Ping
    from protocol.messages.sts import AssumeRole, AssumeRoleOk
    from services.cli import broker
    from services.runtime.client import BusClient
    from services.runtime.clock import ScaledClock
    from services.runtime.mqtt_bus import MqttBus

    clock = ScaledClock(running.file.time_scale, running.file.time_origin)
    gateway = running.process("gateway").proc
    url = running.identities.url("gateway", "127.0.0.1", running.broker_port)
    bus = await MqttBus.connect(url, broker.tool_client_id("gateway"), persistent=False)
    gateway.send_signal(signal.SIGSTOP)
    try:
        client = await BusClient(bus, "gateway", clock).start()
        body = AssumeRole(role_arn=caller.params["RoleArn"], role_session_name="bench", caller=caller.principal)
        for _ in range(WARMUP_CALLS):
            answer = await client.request("sts", body)
            if not isinstance(answer, AssumeRoleOk):
                raise RuntimeError(f"AssumeRole over the bus answered {answer!r}")
        counts = [0, 0]
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                answer = await client.request("sts", body)
                counts[0 if isinstance(answer, AssumeRoleOk) else 1] += 1
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(callers)))
        return counts[0] / (time.perf_counter() - start), counts[1]
    finally:
        await bus.close()
        gateway.send_signal(signal.SIGCONT)
        operator = await MqttBus.connect(running.broker_url(broker.OPERATOR), broker.tool_client_id(broker.OPERATOR),
                                         persistent=False)
        try:
            pinger = await BusClient(operator, broker.OPERATOR, clock).start()
            await pinger.request("gateway", Ping(), timeout=60)
        finally:
            await operator.close()


def measure_moto_assume_role(moto_base: str, calls: int) -> list[float]:
    sts = moto_sts(moto_base)
    samples = []
    for i in range(WARMUP_CALLS + calls):
        t = time.perf_counter()
        answer = sts.assume_role(RoleArn=MOTO_ROLE_ARN, RoleSessionName="bench")
        elapsed = time.perf_counter() - t
        assert answer["Credentials"]["AccessKeyId"], answer
        if i >= WARMUP_CALLS:
            samples.append(elapsed)
    return samples


# -- the run -----------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_server(workdir: Path, say=print):
    """moto_server on a free loopback port, or None when moto (or boto3) is not installed."""
    exe = shutil.which("moto_server")
    if not exe or package_version("boto3") == "not installed":
        say(MOTO_HINT)
        yield None
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(workdir / "moto.log", "wb") as log, child([exe, "-p", str(port), "-H", "127.0.0.1"], stdout=log, stderr=log) as proc:
        wait_for(lambda: proc.poll() is not None or fetch(base + MOTO_CREDENTIALS)[0] == 200, 30, "moto_server listening", 0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}; see {workdir / 'moto.log'}")
        yield base


def moto_sts(moto_base: str):
    import boto3
    from botocore.config import Config
    return boto3.client("sts", endpoint_url=moto_base, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))


# -- for `ramsim bench` and main ----------------------------------------------------------------
def _generator(ctx) -> tuple[bool, str]:
    choice = ctx.options.get("loadgen", "auto")
    use_wrk = choice == "wrk" or (choice == "auto" and shutil.which("wrk") is not None)
    if choice == "auto" and not use_wrk:
        ctx.say(WRK_HINT)
    return use_wrk, "wrk -t1" if use_wrk else "Python generator"


def wrk_paths_script(workdir: Path, paths: list[str]) -> Path:
    """A wrk Lua script that sends each request to the next of ``paths`` in turn."""
    script = workdir / "paths.lua"
    listed = ",\n".join(json.dumps(p) for p in paths)
    script.write_text(f"local paths = {{\n{listed}\n}}\nlocal i = 0\n"
                      "request = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
    return script


async def run_gets(ctx):
    """Credential GETs/s from one agent hosting 1 instance (and 10,000), beside bare aiohttp and moto."""
    from fleet import cluster, create_role, launch, serving
    from recording import Row, verdict

    use_wrk, generator = _generator(ctx)
    seconds, connections = ctx.phase(10, 2), int(ctx.options.get("connections", 32))
    shape = f"{generator}, {connections} connections, {seconds:g} s"
    rows = []
    with moto_server(ctx.workdir, ctx.say) as moto_base:
        async with cluster(ctx.workdir, "gets") as running:
            url = await asyncio.to_thread(prepare_instance, running)
            ctx.say(f"gets: loading the agent, bare aiohttp and moto for {seconds:g} s each")
            gets = await asyncio.to_thread(measure_gets, url, moto_base, connections, seconds, use_wrk, ctx.workdir)
        agent, bare, moto = gets["ramsim metadata agent"], gets["bare aiohttp, same bytes"], gets["moto instance metadata"]
        assert agent is not None and bare is not None
        baseline = f"bare aiohttp {bare.rps:,.0f}/s; moto {'n/a' if moto is None else format(moto.rps, ',.0f') + '/s'}"

        def row(measure: str, got: Load, bare: Load = bare, baseline: str = baseline) -> Row:
            vs_bare = got.rps / bare.rps
            vs_moto = got.rps / moto.rps if moto else None
            value = f"{got.rps:,.0f}/s = {vs_bare:.2f}x bare, " + (f"{vs_moto:.0f}x moto" if vs_moto else "moto n/a")
            if got.non2xx or got.errors:
                value += f" ({got.non2xx} non-2xx, {got.errors} errors)"
            ok = vs_bare >= 0.7 and (vs_moto is None or vs_moto >= 10) and not (got.non2xx or got.errors)
            return Row("gets", f"{measure}, req/s ({shape})", value, baseline, ">= 0.70x bare, >= 10x moto", verdict(ok))

        rows.append(row("credential GETs, one agent hosting 1 instance", agent))
    measure = "credential GETs, one agent hosting 10,000 instances (shared port, " + \
        ("their paths in turn)" if use_wrk else "one path: no wrk)")
    if ctx.quick:
        rows.append(Row("gets", measure, "", baseline, ">= 0.70x bare, >= 10x moto", "skipped (--quick)"))
    else:
        async with cluster(ctx.workdir, "gets-10k", shared=True, hosts=1, ready_timeout=120) as running:
            await asyncio.to_thread(create_role, running, ROLE)
            ctx.say("gets: launching 10,000 instances on one agent")
            ids = await asyncio.to_thread(launch, running, 10_000, ROLE)
            urls = await serving(running, ids, ROLE, 300)
            first = urls[ids[0]]
            base = first[:first.index("/", len("http://"))]
            script = wrk_paths_script(ctx.workdir, [u[len(base):] for u in urls.values()]) if use_wrk else None
            ctx.say(f"gets: loading the 10,000-instance agent for {seconds:g} s")
            many = await asyncio.to_thread(load, first, connections, seconds, use_wrk, script)
            status, body, content_type = fetch(first)
        ctx.say(f"gets: loading bare aiohttp with the same paths for {seconds:g} s")
        bare_many = await asyncio.to_thread(load_bare, body, content_type, connections, seconds, use_wrk, ctx.workdir, script)
        rows.append(row(measure, many, bare_many, f"bare aiohttp, the same paths {bare_many.rps:,.0f}/s; moto "
                                                  f"{'n/a' if moto is None else format(moto.rps, ',.0f') + '/s'}"))
    return rows


async def run_assume(ctx):
    """AssumeRole/s over the bus (concurrent callers) and through the gateway, beside moto's STS."""
    from fleet import cluster, p50_p99_ms
    from recording import Row, verdict

    seconds, callers, threads = ctx.phase(10, 2), int(ctx.options.get("callers", 32)), 8
    calls = ctx.count(200, 20)
    with moto_server(ctx.workdir, ctx.say) as moto_base:
        moto_rate = moto_p50 = None
        if moto_base:
            ctx.say(f"assume: moto's STS, {threads} threads for {seconds:g} s")
            clients = [moto_sts(moto_base) for _ in range(threads)]
            moto_rate, _ = await asyncio.to_thread(
                concurrently, lambda n: clients[n].assume_role(RoleArn=MOTO_ROLE_ARN, RoleSessionName="bench"), threads, seconds)
            moto_p50 = p50_p99_ms(await asyncio.to_thread(measure_moto_assume_role, moto_base, calls))[0]
        async with cluster(ctx.workdir, "assume") as running:
            caller = await asyncio.to_thread(prepare_caller, running)
            ctx.say(f"assume: over the bus, {callers} concurrent callers for {seconds:g} s")
            bus_rate, bus_failed = await assume_over_bus(running, caller, callers, seconds)
            ctx.say(f"assume: through the gateway, {threads} threads for {seconds:g} s")
            from services.cli import api
            gateway_rate, gateway_failed = await asyncio.to_thread(
                concurrently, lambda n: api.call(running.file.gateway_url, "sts", "AssumeRole", caller.params, caller.credential),
                threads, seconds)
            ctx.say(f"assume: {calls} sequential calls through the gateway")
            p50 = p50_p99_ms(await asyncio.to_thread(measure_assume_role, running, calls, caller))[0]
    moto = "n/a (moto not installed)" if moto_rate is None else f"moto STS {moto_rate:,.0f}/s ({threads} threads, boto3)"
    failed = lambda n: f" ({n} failed)" if n else ""  # noqa: E731
    return [
        Row("assume", f"AssumeRole/s over the bus, {callers} concurrent callers, one STS process",
            f"{bus_rate:,.0f}/s{failed(bus_failed)}", moto, ">= 3,000/s", verdict(bus_rate >= 3000 and not bus_failed)),
        Row("assume", f"AssumeRole/s through the gateway, {threads} threads (signed, urllib)",
            f"{gateway_rate:,.0f}/s{failed(gateway_failed)}", moto),
        Row("assume", f"AssumeRole p50 ms through the gateway, {calls} sequential calls", f"{p50:.2f}",
            "moto p50 n/a" if moto_p50 is None else f"moto (boto3) p50 {moto_p50:.2f}", "< moto's p50",
            "" if moto_p50 is None else verdict(p50 < moto_p50)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="seconds of load per target (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections for the GETs (default 32)")
    parser.add_argument("--callers", type=int, default=32, help="concurrent AssumeRole callers over the bus (default 32)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python one")
    parser.add_argument("--quick", action="store_true", help="short phases; no 10,000-instance rows")
    args = parser.parse_args()
    if (args.seconds is not None and args.seconds < 1) or args.connections < 1 or args.callers < 1:
        parser.error("--seconds, --connections and --callers must be at least 1")
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed: apt-get install -y wrk")
    from suite import Context, standalone
    ctx = Context(quick=args.quick, seconds=args.seconds,
                  options={"connections": args.connections, "callers": args.callers, "loadgen": args.loadgen})
    asyncio.run(standalone(["gets", "assume"], ctx))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_bare"]:
        serve_bare(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1:2] == ["_load"]:
        python_load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:6])
    else:
        main()
