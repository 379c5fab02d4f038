"""OSS: small-object GETs per second with and without authorization, and policy-change-to-effect.

    python bench/oss.py [--seconds S] [--connections C] [--rounds N] [--loadgen auto|wrk|python]

Starts two real clusters in turn (Mosquitto + one process per service, as ``ramsim up``), each
with a role trusting ECS that holds AliyunOSSReadOnlyAccess, an instance launched with it, a
bucket and one 1 KiB object. The instance's STS credential is read from its metadata view
(as an application on it would) and signs one GetObject with OSS signature V1 (oss2's
``StsAuth``: ``Authorization``, ``Date``, ``x-oss-security-token``). OSS accepts a V1 signature
for 15 minutes after its Date and keeps no replay record (neither does Alibaba's), so that one
signed request is replayed by the load generator, keep-alive, C connections for S seconds:

  baseline     the cluster's OSS started with RAMSIM_OSS_AUTHORIZE=false (benchmark-only: the same
               process and request path -- parse, signature string, store, file, response -- with
               no authentication round trip to STS and no policy decision)
  authorized   the normal OSS: the first V4 request is verified by STS over the bus, which hands OSS
               the derived key; later ones OSS verifies itself; the decision comes from the warm
               effective-policy cache (one GET before the run fills it), which remembers decisions
               of policies without conditions

and reports "authentication + authorization adds X%" (extra time per GET, from the two rates)
against the target <= 10%, plus the policy decision alone (cache lookup + decision of the same
request, in this process, per call), evaluated afresh and remembered, as a share of a baseline GET.

Then, on the authorized cluster, N rounds of: DetachPolicyFromRole -> the next GET is
AccessDenied; AttachPolicyToRole -> the next GET is 200 (each timed from the start of the RAM
call to the end of the GET; the very next GET must show the change, or the run fails).

The load generator is ``wrk -t1`` (the machine has 2 cores); without wrk a Python generator
(aiohttp, keep-alive) runs in its own process. Everything talks to 127.0.0.1 only; every loop
is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import throughput  # noqa: E402  (bench/throughput.py: wrk parsing, machine line, helpers)

ROLE = "OssBenchRole"
POLICY = "AliyunOSSReadOnlyAccess"
BUCKET = "bench-oss"
KEY = "small/1k.bin"
BODY = bytes(range(256)) * 4  # 1 KiB
NO_AUTH = "RAMSIM_OSS_AUTHORIZE"  # services/oss/app.py NO_AUTH_VARIABLE: benchmark-only


def load(url: str, headers: dict[str, str], connections: int, seconds: int, use_wrk: bool) -> throughput.Load:
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return throughput.parse_wrk(out)
    argv = [sys.executable, str(Path(throughput.__file__).resolve()), "_load", url, str(connections), str(seconds), json.dumps(headers)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return throughput.Load(rps=data["rps"], p50=data["p50"], p99=data["p99"], non2xx=int(data["non2xx"]),
                           errors=int(data["errors"]))


# -- preparing a cluster ---------------------------------------------------------------------------
@dataclass
class Prepared:
    oss_url: str
    session: tuple[str, str, str]  # the instance's AccessKeyId, secret, SecurityToken
    region: str


def prepare(running) -> Prepared:  # noqa: ANN001
    """Role + policy, an instance with it, its credential from metadata; bucket + 1 KiB object."""
    import oss2

    from services.cli.instances import instances, read_metadata
    from services.ram.policy import ECS_TRUST_POLICY
    f = running.file
    running.call("ram", "CreateRole", RoleName=ROLE, AssumeRolePolicyDocument=ECS_TRUST_POLICY)
    running.call("ram", "AttachPolicyToRole", PolicyType="System", PolicyName=POLICY, RoleName=ROLE)
    instance_id = running.call("ecs", "RunInstances", RegionId=f.region_id, RamRoleName=ROLE)["InstanceIdSets"]["InstanceIdSet"][0]

    def credential() -> dict | None:
        url = next((i["MetadataUrl"] for i in instances(f) if i["InstanceId"] == instance_id), "")
        status, body = read_metadata(url, throughput.CREDENTIALS + ROLE) if url else (0, "")
        return json.loads(body) if status == 200 else None

    doc = throughput.wait_for(credential, 30, f"{instance_id}'s credential")
    root = oss2.Bucket(oss2.Auth(f.access_key_id, f.access_key_secret), f.oss_url, BUCKET)
    root.create_bucket()
    root.put_object(KEY, BODY)
    return Prepared(f.oss_url, (doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"]), f.region_id)


SIGNATURE = "v4"  # set from --signature


def signed_get(prepared: Prepared) -> dict[str, str]:
    """The headers oss2's StsAuth puts on GET /<bucket>/<key>: V4 (x-oss-date, scope, token) or V1
    (Date and the token)."""
    import oss2
    req = oss2.http.Request("GET", f"{prepared.oss_url}/{BUCKET}/{KEY}", params={}, headers={}, region=prepared.region,
                            product="oss")
    oss2.StsAuth(*prepared.session, auth_version=SIGNATURE)._sign_request(req, BUCKET, KEY)
    kept = ("date", "authorization", "x-oss-security-token", "x-oss-date", "x-oss-content-sha256")
    return {k: v for k, v in req.headers.items() if k.lower() in kept}


def get(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, bytes]:
    conn.request("GET", f"/{BUCKET}/{KEY}", headers=headers)
    answer = conn.getresponse()
    return answer.status, answer.read()


# -- the measurements ------------------------------------------------------------------------------
async def measure_gets(authorize: bool, args: argparse.Namespace, use_wrk: bool, rounds: int) -> dict:
    from services.cli.up import Options, running_cluster
    if authorize:
        os.environ.pop(NO_AUTH, None)
    else:
        os.environ[NO_AUTH] = "false"  # read by the cluster's oss process only
    try:
        with tempfile.TemporaryDirectory(prefix="ramsim-bench-oss-") as state:
            async with running_cluster(Options(state_dir=Path(state), instances=0)) as running:
                prepared = await asyncio.to_thread(prepare, running)
                headers = signed_get(prepared)
                host, port = prepared.oss_url.split("//", 1)[1].split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                status, body = get(conn, headers)  # also fills the policy cache
                conn.close()
                if status != 200 or body != BODY:
                    raise RuntimeError(f"the signed GET answered {status}: {body[:300]!r}")
                url = f"{prepared.oss_url}/{BUCKET}/{KEY}"
                await asyncio.to_thread(load, url, headers, args.connections, 1, use_wrk)  # warm-up
                result = await asyncio.to_thread(load, url, headers, args.connections, args.seconds, use_wrk)
                changes = await asyncio.to_thread(policy_rounds, running, prepared, rounds) if rounds else {}
                decision = await asyncio.to_thread(decision_cost, running) if authorize else None
                return {"load": result, "changes": changes, "decision": decision}
    finally:
        os.environ.pop(NO_AUTH, None)


def policy_rounds(running, prepared: Prepared, rounds: int) -> dict[str, list[float]]:  # noqa: ANN001
    host, port = prepared.oss_url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    results: dict[str, list[float]] = {"detach -> next GET denied": [], "attach -> next GET allowed": []}
    policy = {"PolicyType": "System", "PolicyName": POLICY, "RoleName": ROLE}
    try:
        for _ in range(rounds):
            headers = signed_get(prepared)
            t = time.perf_counter()
            running.call("ram", "DetachPolicyFromRole", **policy)
            status, body = get(conn, headers)
            results["detach -> next GET denied"].append(time.perf_counter() - t)
            if status != 403 or b"<Code>AccessDenied</Code>" not in body:
                raise RuntimeError(f"the GET right after DetachPolicyFromRole answered {status}: {body[:300]!r}")
            t = time.perf_counter()
            running.call("ram", "AttachPolicyToRole", **policy)
            status, body = get(conn, headers)
            results["attach -> next GET allowed"].append(time.perf_counter() - t)
            if status != 200 or body != BODY:
                raise RuntimeError(f"the GET right after AttachPolicyToRole answered {status}: {body[:300]!r}")
    finally:
        conn.close()
    return results


def decision_cost(running, calls: int = 20_000) -> tuple[float, float]:  # noqa: ANN001
    """Seconds per policy decision as OSS makes it on a warm cache (lookup + decide the GET's
    check): evaluated afresh, and remembered."""
    from protocol.messages import common, ram
    from services.oss.core import OssCore, arn
    from services.ram.policy import SYSTEM_POLICIES
    f = running.file
    oss = OssCore(account_id=f.account_id, region_id=f.region_id)
    principal = common.Principal(identity_type="AssumedRoleUser", account_id=f.account_id,
                                 arn=f"acs:ram::{f.account_id}:assumed-role/{ROLE}/i-bench", principal_id="300:i-bench",
                                 role_name=ROLE)
    document = SYSTEM_POLICIES[POLICY][1]
    oss.learn(principal, ram.GetEffectivePoliciesOk(policies=[ram.PolicyDocument(name=f"System:{POLICY}", version="v1",
                                                                                   document=document)], generation=1))
    checks = (ram.Check(action="oss:GetObject", resource=arn(f.account_id, BUCKET, KEY)),)
    now = time.time()
    costs = []
    for forget in (True, False):  # evaluated every time; then remembered (the entry's memo)
        start = time.perf_counter()
        for _ in range(calls):
            entry = oss.cached(principal)
            assert entry is not None
            if forget:
                entry.decisions.clear()
            if not oss.authorize(principal, entry, checks, now).allowed:
                raise RuntimeError("the decision benchmark was denied")
        costs.append((time.perf_counter() - start) / calls)
    return costs[0], costs[1]


def stats(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99, max in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1]


async def run_oss(ctx) -> list:
    """``ramsim bench oss``: the authorized GET beside the unauthorized one, and policy change -> effect."""
    import types

    from recording import Row, verdict
    use_wrk = shutil.which("wrk") is not None
    seconds, rounds = int(ctx.phase(10, 2)), ctx.count(100, 10)
    args = types.SimpleNamespace(seconds=seconds, connections=16)
    ctx.say(f"oss: GETs without authorization for {seconds} s")
    base = (await measure_gets(False, args, use_wrk, 0))["load"]
    ctx.say(f"oss: authorized GETs for {seconds} s, {rounds} policy rounds")
    authorized = await measure_gets(True, args, use_wrk, rounds)
    auth = authorized["load"]
    added = (base.rps / auth.rps - 1) * 100 if auth.rps else float("inf")
    shape = f"{'wrk -t1' if use_wrk else 'Python generator'}, 16 connections, {seconds} s"
    rows = [Row("oss", f"1 KiB GETs/s, STS token ({SIGNATURE.upper()}), warm policy cache ({shape})",
                f"{auth.rps:,.0f}/s = {added:+.1f}% per GET", f"RAMSIM_OSS_AUTHORIZE=false {base.rps:,.0f}/s",
                "<= 10% added", verdict(added <= 10))]
    for name, samples in authorized["changes"].items():
        p50, p99, _ = stats(samples)
        rows.append(Row("oss", f"{name}, p50 / p99 ms ({rounds} rounds)", f"{p50:.2f} / {p99:.2f}"))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="seconds of load per target (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--rounds", type=int, default=100, help="policy detach/attach rounds (>= 50; default 100)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--signature", choices=("v4", "v1"), default="v4",
                        help="how the replayed GET is signed: v4 (verified in OSS with a scoped derived key after the "
                             "first request) or v1 (every request verified by STS over the bus); default v4")
    args = parser.parse_args()
    global SIGNATURE
    SIGNATURE = args.signature
    if not 1 <= args.seconds <= 120 or not 1 <= args.connections <= 256 or not 1 <= args.rounds <= 10_000:
        parser.error("--seconds 1..120, --connections 1..256, --rounds 1..10000")
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)
    if args.loadgen == "auto" and not use_wrk:
        print(throughput.WRK_HINT, flush=True)
    from services.runtime import logs
    logs.configure(level="warning")
    generator = (f"wrk -t1 -c{args.connections} -d{args.seconds}s" if use_wrk
                 else f"python aiohttp, {args.connections} connections, {args.seconds} s")
    print(f"machine: {throughput.machine()}", flush=True)
    print(f"load: {generator}; 1 KiB object; policy rounds: {args.rounds}", flush=True)
    baseline = await measure_gets(False, args, use_wrk, 0)
    authorized = await measure_gets(True, args, use_wrk, args.rounds)
    base, auth = baseline["load"], authorized["load"]
    added = (base.rps / auth.rps - 1) * 100 if auth.rps else float("inf")
    evaluated, remembered = authorized["decision"]

    header = f"{'GET /<bucket>/<1 KiB object>, keep-alive':<58}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'errors':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, row in (("baseline: RAMSIM_OSS_AUTHORIZE=false (no authn, no authz)", base),
                      (f"authorized: STS token ({SIGNATURE.upper()}), warm policy cache", auth)):
        print(f"{name:<58}{row.rps:>9.0f}{row.p50:>9.2f}{row.p99:>9.2f}{row.non2xx:>9}{row.errors:>8}")
    print(f"\nauthentication + authorization adds {added:.1f}% per GET (target <= 10%: {'PASS' if added <= 10 else 'MISS'})")
    for how, cost in (("evaluated", evaluated), ("remembered", remembered)):
        share = cost * base.rps * 100
        print(f"the policy decision alone ({how}, in-process): {cost * 1e6:.1f} us = {share:.1f}% of a baseline GET "
              f"({'PASS' if share <= 10 else 'MISS'} against the same target)")

    header = f"{'policy change -> effect (RAM call + next GET)':<46}{'p50':>8}{'p99':>8}{'max':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, samples in authorized["changes"].items():
        p50, p99, top = stats(samples)
        print(f"{name:<46}{p50:>8.2f}{p99:>8.2f}{top:>8.2f}")
    print(f"(milliseconds, {args.rounds} rounds each; every next GET showed the change)")


if __name__ == "__main__":
    asyncio.run(main())
