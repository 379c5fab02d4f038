"""Pure core: an experiment's checks over its history -> one result per check and the verdict.

``evaluate(history, experiment) -> Outcome``. Knows nothing of which engine made the history;
every time is simulated seconds since the run's t=0.

Invariants reuse :mod:`services.faults.invariants` (faults excuse what happens inside their
window plus ``settings.grace``; the broker is named ``broker``):

===================== ===========================================================================
never_serves_expired  no healthy probe is served an expired credential
only_attached_role    an instance serves only the role attached to it
detached_role_404s    after DetachInstanceRamRole returns, the role 404s within ``settings.detach_bound``
fresh_before_expiry   a fresh credential is served (probed) before the old one expires, when healthy
exactly_one_reply     every request recorded got exactly one reply
no_cross_instance     an instance never serves a credential issued to another instance
===================== ===========================================================================

SLOs (the moment a credential becomes *visible* is the ``CredentialVisible`` event an engine
records when an agent starts serving it; without those, the first probe that served it):

======================= =========================================================================
attach_to_visible_p99   99th percentile of attach request -> credential visible (``max``); an
                        attach whose credential never became visible counts as infinitely late
refresh_latency_p99     99th percentile of refresh due (expiry - refresh_before) -> new credential
                        visible (``max``)
app_success_rate        share of workload calls that ended ``ok`` (``min``); ``outside: faults``
                        leaves out calls inside a fault window or its grace
refresh_before_expiry   every rotation became visible before the credential it replaced expired,
                        and no attached instance was left with only an expired credential
======================= =========================================================================
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import msgspec

from services.experiment import spec as s
from services.faults import invariants
from services.faults.history import Attach, Call, Detach, Event, Fault, History, Probe

INVARIANT_NAMES = {"never_serves_expired": "never_serves_expired", "only_attached_role": "only_attached_role",
                   "detached_role_404s": "detach_within_bound", "fresh_before_expiry": "fresh_before_expiry",
                   "exactly_one_reply": "exactly_one_reply"}
EXAMPLES = 5  # violations quoted per check


class CheckResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    kind: str                    # invariant | slo
    passed: bool
    detail: str
    checked: int = 0
    violations: int = 0
    value: float | None = None   # an SLO's measured value (seconds, or a share 0..1)
    bound: float | None = None
    examples: list[str] = []


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    expected: str                 # pass | fail
    expected_failing: list[str]
    failing: list[str]
    matches: bool
    explanation: str


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    checks: list[CheckResult]
    verdict: Verdict
    metrics: dict[str, float | int]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank quantile ``q`` (0..1); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def bounds(x: s.Experiment) -> invariants.Bounds:
    return invariants.Bounds(detach_bound=x.settings.detach_bound, grace=x.settings.grace,
                             credential_path=("ecs", "sts", "ram", "broker", "mosquitto"), control_path=("ecs", "broker", "mosquitto"))


# -- visibility ---------------------------------------------------------------------------------

class Sighting(msgspec.Struct, frozen=True):
    at: float
    instance_id: str
    role: str
    access_key_id: str
    expiration: float


def sightings(history: History) -> dict[str, list[Sighting]]:
    """Per instance, each credential the moment it became visible, in time order."""
    events = [e for e in history.of(Event) if e.name == "CredentialVisible"]
    seen: dict[str, list[Sighting]] = defaultdict(list)
    if events:
        for e in sorted(events, key=lambda e: e.at):
            seen[e.instance_id].append(Sighting(e.at, e.instance_id, e.role, e.access_key_id, e.expiration))
        return seen
    keys: set[tuple[str, str]] = set()
    for p in sorted(history.of(Probe), key=lambda p: p.at):
        if p.status == 200 and p.access_key_id and (p.instance_id, p.access_key_id) not in keys:
            keys.add((p.instance_id, p.access_key_id))
            seen[p.instance_id].append(Sighting(p.at, p.instance_id, p.role, p.access_key_id, p.expiration))
    return seen


def attach_latencies(history: History, seen: dict[str, list[Sighting]]) -> list[float]:
    """Seconds from each successful attach to its first credential visible (inf: never)."""
    detached = {d.instance_id: d.at_requested for d in history.of(Detach)}
    out = []
    for a in history.of(Attach):
        if not a.ok or a.existing:
            continue
        first = next((v for v in seen.get(a.instance_id, []) if v.at >= a.at_requested and v.role == a.role), None)
        if first is not None:
            out.append(first.at - a.at_requested)
        elif detached.get(a.instance_id, math.inf) < math.inf:
            continue  # detached before it showed
        else:
            out.append(math.inf)
    return out


def rotations(seen: dict[str, list[Sighting]]) -> list[tuple[Sighting, Sighting]]:
    """Consecutive credentials of one instance and role: (old, new)."""
    return [(a, b) for views in seen.values() for a, b in zip(views, views[1:]) if a.role == b.role]


def windows(history: History, grace: float, end: float) -> list[tuple[float, float]]:
    return [(f.start, (f.end if f.end is not None else end) + grace) for f in history.of(Fault)]


# -- the checks ---------------------------------------------------------------------------------

def _invariant(name: str, report: invariants.Report) -> CheckResult:
    summary = report.summary(INVARIANT_NAMES[name])
    found = report.violations_of(INVARIANT_NAMES[name])
    examples = [f"{v.subject} at t={v.at:.3f}s: {v.detail}" for v in found[:EXAMPLES]]
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(summary.skipped_because.items()))
    skipped = f"; skipped: {why}" if why else ""
    return CheckResult(name=name, kind="invariant", passed=not found, checked=summary.checked, violations=len(found),
                       detail=f"{summary.rule} ({summary.checked} checked{skipped})", examples=examples)


def no_cross_instance(history: History) -> CheckResult:
    owner: dict[str, str] = {}
    for e in history.of(Event):
        if e.access_key_id and e.instance_id:
            owner.setdefault(e.access_key_id, e.instance_id)
    checked, bad = 0, []
    for p in history.of(Probe):
        if p.status == 200 and p.access_key_id in owner:
            checked += 1
            if owner[p.access_key_id] != p.instance_id:
                bad.append(f"{p.instance_id} at t={p.at:.3f}s served {p.access_key_id}, issued to {owner[p.access_key_id]}")
    return CheckResult(name="no_cross_instance", kind="invariant", passed=not bad, checked=checked, violations=len(bad),
                       detail=f"every served credential was issued to the instance serving it ({checked} checked)", examples=bad[:EXAMPLES])


def _latency_slo(name: str, values: list[float], bound: float, what: str) -> CheckResult:
    p99 = percentile(values, 0.99)
    late = [v for v in values if v > bound]
    shown = "never" if math.isinf(p99) else f"{p99 * 1000:.1f} ms"
    return CheckResult(name=name, kind="slo", passed=p99 <= bound, checked=len(values), violations=len(late),
                       value=None if math.isinf(p99) else p99, bound=bound,
                       detail=f"p99 {what} {shown} (bound {bound * 1000:g} ms, {len(values)} measured, {len(late)} over)")


def app_success_rate(history: History, c: s.Check, x: s.Experiment, end: float) -> CheckResult:
    calls = history.of(Call)
    if c.outside == "faults":
        spans = windows(history, x.settings.grace, end)
        calls = [k for k in calls if not any(a <= k.at <= b for a, b in spans)]
    ok = sum(1 for k in calls if k.outcome == "ok")
    rate = ok / len(calls) if calls else 1.0
    bound = c.min if c.min is not None else 1.0
    failed: dict[str, int] = defaultdict(int)
    for k in calls:
        if k.outcome != "ok":
            failed[f"{k.outcome} {k.code}".strip()] += 1
    where = " outside fault windows" if c.outside else ""
    return CheckResult(name="app_success_rate", kind="slo", passed=rate >= bound, checked=len(calls), violations=len(calls) - ok,
                       value=rate, bound=bound, detail=f"{ok} of {len(calls)} calls{where} ok ({rate:.4%}, bound {bound:.4%})",
                       examples=[f"{n} x {what}" for what, n in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))][:EXAMPLES])


def refresh_before_expiry(history: History, seen: dict[str, list[Sighting]], end: float) -> CheckResult:
    bad: list[str] = []
    pairs = rotations(seen)
    for old, new in pairs:
        if new.at >= old.expiration:
            bad.append(f"{old.instance_id}: {new.access_key_id} visible at t={new.at:.3f}s, {new.at - old.expiration:.3f}s after "
                       f"{old.access_key_id} expired")
    gone = {(e.instance_id) for e in history.of(Event) if e.name in ("CredentialGone", "RoleDetachedFromInstance")}
    stranded = 0
    for instance_id, views in seen.items():
        last = views[-1]
        if last.expiration < end and instance_id not in gone:
            stranded += 1
            bad.append(f"{instance_id}: {last.access_key_id} expired at t={last.expiration:.3f}s and nothing replaced it")
    return CheckResult(name="refresh_before_expiry", kind="slo", passed=not bad, checked=len(pairs) + len(seen),
                       violations=len(bad), detail=f"{len(pairs)} rotations, {len(bad)} late or missing", examples=bad[:EXAMPLES])


def run_checks(history: History, x: s.Experiment, end: float | None = None) -> list[CheckResult]:
    end = x.settings.duration if end is None else end
    report = invariants.check(history, bounds(x))
    seen = sightings(history)
    results = []
    for c in x.checks:
        if c.invariant == "no_cross_instance":
            results.append(no_cross_instance(history))
        elif c.invariant:
            results.append(_invariant(c.invariant, report))
        elif c.slo == "attach_to_visible_p99":
            results.append(_latency_slo(c.slo, attach_latencies(history, seen), c.max or 0.0, "attach to visible"))
        elif c.slo == "refresh_latency_p99":
            values = [new.at - (old.expiration - x.settings.refresh_before) for old, new in rotations(seen)]
            results.append(_latency_slo(c.slo, values, c.max or 0.0, "refresh due to visible"))
        elif c.slo == "app_success_rate":
            results.append(app_success_rate(history, c, x, end))
        elif c.slo == "refresh_before_expiry":
            results.append(refresh_before_expiry(history, seen, end))
    return results


def verdict(results: Iterable[CheckResult], x: s.Experiment) -> Verdict:
    failing = [r.name for r in results if not r.passed]
    if x.expect == "pass":
        matches = not failing
        why = "every check passed, as expected" if matches else f"expected every check to pass; failed: {', '.join(failing)}"
    else:
        expected = set(x.expect_failing)
        matches = set(failing) == expected
        unexpected, missing = sorted(set(failing) - expected), sorted(expected - set(failing))
        parts = ([f"failed but expected to pass: {', '.join(unexpected)}"] if unexpected else []) + \
                ([f"expected to fail but passed: {', '.join(missing)}"] if missing else [])
        why = f"failed as expected: {', '.join(failing)}" if matches else "; ".join(parts)
    return Verdict(expected=x.expect, expected_failing=list(x.expect_failing), failing=failing, matches=matches, explanation=why)


def metrics(history: History, x: s.Experiment) -> dict[str, float | int]:
    seen = sightings(history)
    attach = [v for v in attach_latencies(history, seen) if not math.isinf(v)]
    refresh = [new.at - (old.expiration - x.settings.refresh_before) for old, new in rotations(seen)]
    calls = history.of(Call)
    out: dict[str, float | int] = {"instances": len({p.instance_id for p in history.of(Probe)}), "calls": len(calls),
                                   "rotations": len(refresh), "faults": len(history.of(Fault))}
    for outcome in ("ok", "denied", "expired", "error"):
        out[f"calls_{outcome}"] = sum(1 for c in calls if c.outcome == outcome)
    for name, values in (("attach_to_visible", attach), ("refresh_latency", refresh)):
        for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            out[f"{name}_{label}_ms"] = round(percentile(values, q) * 1000, 3)
    return out


def evaluate(history: History, x: s.Experiment, end: float | None = None) -> Outcome:
    results = run_checks(history, x, end)
    return Outcome(checks=results, verdict=verdict(results, x), metrics=metrics(history, x))
