"""Throughput of the metadata agent and AssumeRole latency, against baselines and a peer.

    python bench/throughput.py [--seconds S] [--connections C] [--calls N] [--loadgen auto|wrk|python]

Starts a real cluster (Mosquitto + one process per service, as ``ramsim up``) and measures:

  credential GETs/s   GET <instance>/latest/meta-data/ram/security-credentials/<role> from ONE
                      metadata agent, keep-alive, C connections for S seconds. Loaded the same way:
                      a bare aiohttp low-level handler (``web.Server``, its own process) answering the
                      same bytes with the same Content-Type (the baseline; target agent/bare >= 0.7),
                      and moto's instance-metadata endpoint (``moto_server``, the peer).
  AssumeRole          N sequential sts AssumeRole calls as a RAM user through the gateway (signed
                      HMAC-SHA1, fresh nonce each), beside N boto3 ``sts.assume_role`` calls to moto;
                      p50/p95/max and calls/s (target: ramsim p50 below moto's).

The load generator is ``wrk -t1 -c<C> -d<S>s`` (one thread: the machine has 2 cores, the server
gets the other); without wrk (``apt-get install -y wrk``) a Python generator runs in its own
process: an aiohttp ClientSession with TCPConnector(limit=C) and C workers GETting until a
deadline. moto is optional (``pip install 'moto[server]' boto3``); without it its rows are n/a.

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
import tempfile
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


def load(url: str, connections: int, seconds: int, use_wrk: bool) -> Load:
    """Load ``url`` for ``seconds``; the generator is its own process, bounded by a timeout."""
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency", url]
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


def machine() -> str:
    """bench/machine.py's line, plus the versions of aiohttp, the load generator and the peer."""
    from machine import machine as base

    wrk = version(["wrk", "-v"]).split(" [")[0] if shutil.which("wrk") else "wrk not installed"
    return base(f"aiohttp {package_version('aiohttp')}", wrk, f"moto {package_version('moto')}")


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


def measure_gets(agent_url: str, moto_base: str | None, connections: int, seconds: int, use_wrk: bool,
                 workdir: Path) -> dict[str, Load | None]:
    status, body, content_type = fetch(agent_url)
    assert status == 200 and body, (status, body)
    body_file = workdir / "credentials.json"
    body_file.write_bytes(body)
    results: dict[str, Load | None] = {}
    results["ramsim metadata agent"] = load(agent_url, connections, seconds, use_wrk)
    argv = [sys.executable, str(Path(__file__).resolve()), "_bare", str(body_file), content_type, str(seconds * 3 + 60)]
    with child(argv, stdout=subprocess.PIPE, text=True) as bare:
        port = int(bare.stdout.readline())  # type: ignore[union-attr]
        bare_url = f"http://127.0.0.1:{port}{CREDENTIALS}{ROLE}"
        got = fetch(bare_url)
        if got != (200, body, content_type):
            raise RuntimeError(f"the bare server does not answer as the agent does: {got[0]} {got[2]}")
        results["bare aiohttp, same bytes"] = load(bare_url, connections, seconds, use_wrk)
    results["moto instance metadata"] = load(moto_credentials_url(moto_base), connections, seconds, use_wrk) if moto_base else None
    return results


# -- 2. AssumeRole -----------------------------------------------------------------------------
def measure_assume_role(running, calls: int) -> list[float]:
    from services.cli import api
    f = running.file
    running.call("ram", "CreateUser", UserName=USER)
    key = running.call("ram", "CreateAccessKey", UserName=USER)["AccessKey"]
    running.call("ram", "AttachPolicyToUser", PolicyType="System", PolicyName="AliyunSTSAssumeRoleAccess", UserName=USER)
    trust = json.dumps({"Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow",
                                       "Principal": {"RAM": [f"acs:ram::{f.account_id}:root"]}}], "Version": "1"})
    running.call("ram", "CreateRole", RoleName=ASSUME_ROLE, AssumeRolePolicyDocument=trust)
    user = api.Credential(key["AccessKeyId"], key["AccessKeySecret"])
    params = {"RoleArn": f"acs:ram::{f.account_id}:role/{ASSUME_ROLE}", "RoleSessionName": "bench"}
    samples = []
    for i in range(WARMUP_CALLS + calls):
        t = time.perf_counter()
        answer = api.call(f.gateway_url, "sts", "AssumeRole", params, user)
        elapsed = time.perf_counter() - t
        assert answer["Credentials"]["AccessKeyId"].startswith("STS."), answer
        if i >= WARMUP_CALLS:
            samples.append(elapsed)
    return samples


def measure_moto_assume_role(moto_base: str, calls: int) -> list[float]:
    import boto3
    from botocore.config import Config
    sts = boto3.client("sts", endpoint_url=moto_base, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))
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
def moto_server(workdir: Path):
    """moto_server on a free loopback port, or None when moto (or boto3) is not installed."""
    exe = shutil.which("moto_server")
    if not exe or package_version("boto3") == "not installed":
        print(MOTO_HINT, flush=True)
        yield None
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(workdir / "moto.log", "wb") as log, child([exe, "-p", str(port), "-H", "127.0.0.1"], stdout=log, stderr=log) as proc:
        wait_for(lambda: proc.poll() is not None or fetch(base + MOTO_CREDENTIALS)[0] == 200, 30, "moto_server listening", 0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}; see {workdir / 'moto.log'}")
        yield base


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(gets: dict[str, Load | None], ramsim: list[float], moto: list[float] | None, args, generator: str) -> None:
    print(f"\n1. credential GETs/s, keep-alive, {generator}, {args.connections} connections, {args.seconds} s each")
    header = f"{'target':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}"
    print(header + "\n" + "-" * len(header))
    for name, row in gets.items():
        if row is None:
            print(f"{name:<28}{'n/a':>10}")
        else:
            print(f"{name:<28}{row.rps:>10.0f}{row.p50:>9.2f}{row.p99:>9.2f}{row.non2xx:>9}{row.errors:>8}")
    agent, bare, peer = gets["ramsim metadata agent"], gets["bare aiohttp, same bytes"], gets["moto instance metadata"]
    assert agent is not None and bare is not None
    ratio = agent.rps / bare.rps
    print(f"\nagent / bare aiohttp   {ratio:5.2f}   (target >= 0.70: {verdict(ratio >= 0.7)})")
    if peer is not None:
        print(f"agent / moto           {agent.rps / peer.rps:5.2f}   (the peer; higher is better)")
    else:
        print("agent / moto             n/a   (moto not installed)")
    if not generator.startswith("wrk"):
        print("NOTE: the Python generator saturates first, so these ratios understate the gap; use wrk")
    if any(r is not None and (r.non2xx or r.errors) for r in gets.values()):
        print("WARNING: some requests failed (non-2xx or socket errors); see the table")

    print(f"\n2. AssumeRole, {args.calls} sequential calls each (after {WARMUP_CALLS} warm-up calls), client-observed")
    header = f"{'target':<28}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'calls/s':>10}"
    print(header + "\n" + "-" * len(header))
    rows = {"ramsim gateway -> sts": ramsim, "moto sts (boto3)": moto}
    for name, samples in rows.items():
        if samples is None:
            print(f"{name:<28}{'n/a':>9}")
            continue
        p50, p95, top = stats(samples)
        print(f"{name:<28}{p50:>9.2f}{p95:>9.2f}{top:>9.2f}{len(samples) / sum(samples):>10.0f}")
    if moto is not None:
        ratio = stats(ramsim)[0] / stats(moto)[0]
        print(f"\nramsim p50 / moto p50  {ratio:5.2f}   (target < 1: {verdict(ratio < 1)})")
    print("(ramsim: api.call, urllib + HMAC-SHA1, one connection per call; moto: boto3, SigV4 + XML parsing)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of load per target (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--calls", type=int, default=200, help="sequential AssumeRole calls per target (default 200)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python one")
    args = parser.parse_args()
    if args.seconds < 1 or args.connections < 1 or args.calls < 1:
        parser.error("--seconds, --connections and --calls must be at least 1")
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed: apt-get install -y wrk")
    if not use_wrk and args.loadgen == "auto":
        print(WRK_HINT, flush=True)
    generator = "wrk -t1" if use_wrk else "Python aiohttp generator (own process)"

    from services.cli.up import Options, running_cluster
    from services.runtime import logs
    logs.configure(level="warning")
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ramsim-bench-") as tmp:
        workdir = Path(tmp)
        async with running_cluster(Options(state_dir=workdir / "cluster", instances=0)) as running:
            with moto_server(workdir) as moto_base:
                url = await asyncio.to_thread(prepare_instance, running)
                print(f"agent: {url}\nloading each target for {args.seconds} s ...", flush=True)
                gets = await asyncio.to_thread(measure_gets, url, moto_base, args.connections, args.seconds, use_wrk, workdir)
                print(f"AssumeRole: {args.calls} calls each ...", flush=True)
                ramsim = await asyncio.to_thread(measure_assume_role, running, args.calls)
                moto = await asyncio.to_thread(measure_moto_assume_role, moto_base, args.calls) if moto_base else None
    report(gets, ramsim, moto, args, generator)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_bare"]:
        serve_bare(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1:2] == ["_load"]:
        python_load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:6])
    else:
        asyncio.run(main())
