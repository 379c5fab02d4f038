"""Decisions per second of the RAM policy engine, against a naive evaluator in the same run.

    python bench/policy.py [--seconds S]

One core, one thread. The policy set is 10 statements in two policies: exact actions, prefix
patterns (``ecs:Describe*``), a wildcard service (``*:List*``), mid-string resource globs
(``acs:oss:*:*:bucket-?/*/data/*``) and two conditions (``IpAddress`` on ``acs:SourceIp``,
``DateGreaterThan`` on ``acs:CurrentTime``). Rows: a request that is allowed, one explicitly
denied, one implicitly denied (its condition fails), one for a service no statement names, and
a mix that builds a fresh ``RequestContext`` per call.

The baseline is written here: it walks the raw JSON on every call and matches with
``fnmatch.fnmatchcase`` (whose compiled patterns Python caches), parsing condition dates and
networks per call. Both must reach the same decision on every row, or the bench stops.
Every row runs for about ``--seconds`` (default 1) per evaluator.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import ipaddress
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from services.ram import policy  # noqa: E402

TARGET = 100_000  # decisions per second
ACCOUNT = "1234567890123456"

OPS = [
    {"Effect": "Allow", "Action": ["ecs:DescribeInstances", "ecs:DescribeRegions"], "Resource": "*"},
    {"Effect": "Allow", "Action": "ecs:Describe*", "Resource": "acs:ecs:*:*:instance/*"},
    {"Effect": "Allow", "Action": ["ecs:Start*", "ecs:Stop*"], "Resource": f"acs:ecs:cn-*:{ACCOUNT}:instance/i-*"},
    {"Effect": "Allow", "Action": "ecs:RunInstances", "Resource": "*",
     "Condition": {"IpAddress": {"acs:SourceIp": ["10.0.0.0/8", "192.168.0.0/16"]}}},
    {"Effect": "Deny", "Action": "ecs:Delete*", "Resource": "acs:ecs:*:*:instance/i-prod*", "Sid": "NoProd"},
]
DATA = [
    {"Effect": "Allow", "Action": "oss:Get*", "Resource": "acs:oss:*:*:bucket-?/*/data/*"},
    {"Effect": "Allow", "Action": "*:List*", "Resource": "*"},
    {"Effect": "Allow", "Action": "ram:PassRole", "Resource": "acs:ram:*:*:role/App*Role"},
    {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": f"acs:ram::{ACCOUNT}:role/AppRole"},
    {"Effect": "Deny", "Action": "*", "Resource": "*", "Sid": "Expiry",
     "Condition": {"DateGreaterThan": {"acs:CurrentTime": "2030-01-01T00:00:00+08:00"}}},
]
DOCUMENTS = [("Custom:EcsOps", "v3", OPS), ("Custom:Data", "v1", DATA)]

INSTANCE = f"acs:ecs:cn-hangzhou:{ACCOUNT}:instance/i-"
KEYS = {"acs:SourceIp": "10.1.2.3", "acs:CurrentTime": "2026-11-29T05:00:00Z", "acs:SecureTransport": True}
REQUESTS = {
    "allow": ("ecs:RunInstances", INSTANCE + "web1", KEYS, "Allow"),
    "explicit deny": ("ecs:DeleteInstance", INSTANCE + "prod1", KEYS, "ExplicitDeny"),
    "implicit deny": ("ecs:RunInstances", INSTANCE + "web1", {**KEYS, "acs:SourceIp": "8.8.8.8"}, "ImplicitDeny"),
    "other service": ("rds:CreateDBInstance", f"acs:rds:cn-hangzhou:{ACCOUNT}:dbinstance/rm-1", KEYS, "ImplicitDeny"),
}


# -- the baseline: naive, per call, on the raw documents ---------------------------------------
def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _naive_date(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _naive_condition(operator: str, key: str, wanted: list, keys: dict) -> bool:
    found = next((v for k, v in keys.items() if k.lower() == key.lower()), None)
    if found is None:
        return False
    if operator == "IpAddress":
        address = ipaddress.ip_address(found)
        return any(address in ipaddress.ip_network(w, strict=False) for w in wanted)
    if operator == "DateGreaterThan":
        return any(_naive_date(found) > _naive_date(w) for w in wanted)
    if operator == "StringEquals":
        return found in wanted
    raise ValueError(operator)


def naive_decide(raw: list[tuple[str, str, list[dict]]], action: str, resource: str, keys: dict) -> str:
    allowed = False
    for _, _, statements in raw:
        for st in statements:
            if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(st["Action"])):
                continue
            if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(st["Resource"])):
                continue
            if not all(_naive_condition(op, k, _listed(v), keys)
                       for op, block in st.get("Condition", {}).items() for k, v in block.items()):
                continue
            if st["Effect"] == "Deny":
                return "ExplicitDeny"
            allowed = True
    return "Allow" if allowed else "ImplicitDeny"


# -- measuring ---------------------------------------------------------------------------------
def rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second over about ``seconds``, in batches so the clock is read rarely."""
    call()
    batch, done, start = 1000, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(batch):
            call()
        done += batch
    return done / elapsed


def measure(seconds: float) -> list[tuple[str, str, float, float]]:
    """(request, decision, engine decisions/s, naive decisions/s) per row; stops if they disagree."""
    compiled = [policy.NamedPolicy(name, version, policy.parse(json.dumps({"Version": "1", "Statement": sts})))
                for name, version, sts in DOCUMENTS]
    raw = [(name, version, json.loads(json.dumps(sts))) for name, version, sts in DOCUMENTS]
    rows = []
    for label, (action, resource, keys, expected) in REQUESTS.items():
        request = policy.RequestContext(action, resource, keys)
        got = policy.decide(compiled, request).decision
        naive = naive_decide(raw, action, resource, keys)
        if not got == naive == expected:
            raise RuntimeError(f"{label}: engine says {got}, baseline {naive}, expected {expected}")
        fast = rate(lambda: policy.decide(compiled, request), seconds)
        slow = rate(lambda: naive_decide(raw, action, resource, keys), seconds)
        rows.append((label, expected, fast, slow))

    mixed = list(REQUESTS.values())
    turn = iter(range(1 << 62))
    fast = rate(lambda: policy.decide(compiled, policy.RequestContext(*mixed[next(turn) % 4][:3])), seconds)
    slow = rate(lambda: naive_decide(raw, *mixed[next(turn) % 4][:3]), seconds)
    rows.append(("mixed, fresh context", "all four", fast, slow))
    return rows


async def run_policy(ctx) -> list:
    """``ramsim bench policy``: one row per request kind."""
    from recording import Row, verdict
    seconds = ctx.phase(1.0, 0.2)
    ctx.say(f"policy: {len(REQUESTS) + 1} rows, {seconds:g} s per row and evaluator")
    statements = sum(len(s) for _, _, s in DOCUMENTS)
    return [Row("policy", f"decisions/s, {label} ({decision}; {statements} statements, one thread)", f"{fast:,.0f}/s",
                f"naive fnmatch {slow:,.0f}/s ({fast / slow:.1f}x)", f">= {TARGET:,}/s", verdict(fast >= TARGET))
            for label, decision, fast, slow in measure(seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per row and evaluator (default 1)")
    args = parser.parse_args()
    from suite import Context, standalone
    asyncio.run(standalone(["policy"], Context(seconds=args.seconds)))


if __name__ == "__main__":
    main()
