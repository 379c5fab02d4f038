"""Pure core: the invariants of the durability issue, checked over a run's :class:`History`.

``check(history, bounds) -> Report``. Each invariant is one small function below; its docstring
is the exact rule. All times are wall-clock epoch seconds (see :mod:`services.faults.history`).

**Healthy.** Faults are windows ``[start, end]`` on a target (``end`` ``None``: never ended).
Something that happened at ``t`` is *healthy* for instance ``I`` on a *path* (a set of node ids)
when no fault window whose target is on the path, or is ``I``'s metadata agent
(``metadata-<host>``), ``I``'s host or ``I`` itself, overlaps ``[t - grace, t]``; an interval
``[a, b]`` is healthy when no such window overlaps ``[a - grace, b]``. ``grace`` is the time the
system is given to recover after a fault ends. There are two paths:

* the **credential path** (:attr:`Bounds.credential_path`, default ecs, sts, ram, mosquitto): what
  issuing and pushing a credential needs. RAM is on it because STS asks RAM for the role
  (GetRole) on every AssumeRole; drop it to hold STS to a stricter standard.
* the **control path** (:attr:`Bounds.control_path`, default ecs, mosquitto): what carrying a
  detach to the instance needs.

Probes are conservative evidence: a probe sent at ``at`` saw the instance's state at some moment
in ``[at, at + took]``, so "served X at or after ``at``" is certain.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Callable, Iterable

import msgspec

from services.faults.history import AnyRecord, Attach, Call, Detach, Exchange, Fault, History, Present, Probe, Record, Write

OUTCOMES = ("ok", "denied", "expired", "error")


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """What the checker allows. Seconds of wall-clock time."""

    detach_bound: float = 2.0     # after DetachInstanceRamRole returns, the role stops being served within this
    refresh_margin: float = 0.0   # a fresh credential must be served this long before the old one expires
    grace: float = 5.0            # recovery time after a fault window ends
    credential_path: tuple[str, ...] = ("ecs", "sts", "ram", "mosquitto")
    control_path: tuple[str, ...] = ("ecs", "mosquitto")
    reply_path: tuple[str, ...] = ("gateway",)  # the nodes holding a caller's connection: if one dies, no reply can come


class Violation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One breach: ``evidence`` is the record that shows it (the first of ``count`` in a row,
    the last at ``until``); ``context`` the record it breaks (the Detach, the first sighting)."""

    invariant: str
    subject: str  # an instance id, "kind:key", or a request id
    at: float
    detail: str
    evidence: AnyRecord
    context: AnyRecord | None = None
    count: int = 1
    until: float | None = None


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    invariant: str
    rule: str
    checked: int
    violations: int
    skipped: int = 0
    skipped_because: dict[str, int] = {}


class Report(msgspec.Struct, frozen=True, kw_only=True):
    summaries: list[Summary]
    violations: list[Violation]
    calls: dict[str, int]          # workload calls by outcome
    calls_healthy: dict[str, int]  # of which ended while the instance's credential path was healthy
    origin: float                  # the earliest time in the history; the table prints times from it
    bounds: Bounds

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self, invariant: str) -> Summary:
        return next(s for s in self.summaries if s.invariant == invariant)

    def violations_of(self, invariant: str) -> list[Violation]:
        return [v for v in self.violations if v.invariant == invariant]

    def table(self) -> str:
        """The summary per invariant, then every violation with its evidence."""
        rows = [("invariant", "checked", "skipped", "violations")]
        rows += [(s.invariant, str(s.checked), str(s.skipped), str(s.violations)) for s in self.summaries]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        b = self.bounds
        lines.insert(0, f"bounds: detach {b.detach_bound:g}s, refresh margin {b.refresh_margin:g}s, grace {b.grace:g}s; "
                        f"credential path {','.join(b.credential_path)}; control path {','.join(b.control_path)}")
        for s in self.summaries:
            if s.skipped_because:
                why = ", ".join(f"{reason} x{n}" for reason, n in sorted(s.skipped_because.items()))
                lines.append(f"  {s.invariant} skipped: {why}")
        if any(self.calls.values()):
            lines.append("workload calls: " + " ".join(f"{o}={self.calls.get(o, 0)}" for o in OUTCOMES)
                         + "   while healthy: " + " ".join(f"{o}={self.calls_healthy.get(o, 0)}" for o in OUTCOMES))
        lines.append(f"{len(self.violations)} violation(s)" + (":" if self.violations else ""))
        for v in self.violations:
            span = f" (x{v.count} until t+{v.until - self.origin:.3f}s)" if v.count > 1 and v.until is not None else ""
            lines.append(f"  [{v.invariant}] {v.subject} at t+{v.at - self.origin:.3f}s{span}: {v.detail}")
            lines.append(f"      evidence: {describe(v.evidence, self.origin)}")
            if v.context is not None:
                lines.append(f"      context:  {describe(v.context, self.origin)}")
        return "\n".join(lines)


def describe(record: Record, origin: float = 0.0) -> str:
    """One record on one line, its times relative to ``origin``."""
    def t(x: float | None) -> str:
        return "never" if x is None else f"t+{x - origin:.3f}s"

    if isinstance(record, Probe):
        served = f" role={record.role}" if record.role else ""
        if record.status == 200:
            served += f" key={record.access_key_id} expires {t(record.expiration)}"
        return (f"Probe {record.instance_id} at {t(record.at)} status={record.status}{served}"
                + (f" error={record.error}" if record.error else ""))
    if isinstance(record, (Attach, Detach)):
        return (f"{type(record).__name__} {record.role} {record.instance_id} requested {t(record.at_requested)} "
                f"acknowledged {t(record.at_acknowledged)} ok={record.ok}" + (f" code={record.code}" if record.code else ""))
    if isinstance(record, Write):
        return (f"Write {record.kind}:{record.key} at {t(record.at)} {'delete' if record.deleted else 'put'} "
                f"acknowledged={record.acknowledged}")
    return msgspec.json.encode(record).decode()


# -- the history, indexed ----------------------------------------------------------------------
def _time(record: Record) -> float | None:
    for name in ("at", "at_requested", "start"):
        value = getattr(record, name, None)
        if isinstance(value, (int, float)) and value:
            return float(value)
    return None


class Index:
    """A history sorted and grouped the ways the invariants read it."""

    def __init__(self, history: History, bounds: Bounds) -> None:
        self.bounds = bounds
        self.history = history
        self.probes: dict[str, list[Probe]] = defaultdict(list)
        for p in sorted(history.of(Probe), key=lambda p: p.at):
            self.probes[p.instance_id].append(p)
        self.hosts = {p.instance_id: p.host_id for ps in self.probes.values() for p in ps if p.host_id}
        faults = history.of(Fault)
        closed = {(f.start, f.kind, f.target) for f in faults if f.end is not None}
        # a journal holds a window twice: open when it began, closed when it ended; the closed one counts
        self.faults = [f for f in faults if f.end is not None or (f.start, f.kind, f.target) not in closed]
        self.attaches: dict[tuple[str, str], list[Attach]] = defaultdict(list)
        for a in sorted(history.of(Attach), key=lambda a: a.at_requested):
            self.attaches[(a.instance_id, a.role)].append(a)
        self.detaches: dict[str, list[Detach]] = defaultdict(list)
        for d in sorted(history.of(Detach), key=lambda d: d.at_requested):
            self.detaches[d.instance_id].append(d)
        times = [t for t in map(_time, history) if t is not None]
        self.origin = min(times, default=0.0)

    def targets(self, instance_id: str, path: Iterable[str]) -> set[str]:
        host = self.hosts.get(instance_id, "")
        return {*path, instance_id, *((host, f"metadata-{host}") if host else ())}

    def healthy(self, start: float, end: float, instance_id: str, path: Iterable[str]) -> bool:
        """No fault on ``path`` or on the instance's agent overlaps ``[start - grace, end]``."""
        targets = self.targets(instance_id, path)
        low = start - self.bounds.grace
        return not any(f.target in targets and f.start <= end and (f.end is None or f.end >= low) for f in self.faults)


class Tally:
    """Counts for one invariant, and its violations; consecutive probes that break it the same
    way are one violation (``count``, ``until``)."""

    def __init__(self, invariant: str) -> None:
        self.invariant = invariant
        self.checked = 0
        self.skipped: Counter[str] = Counter()
        self.violations: list[Violation] = []
        self._run: tuple[object, Violation] | None = None

    def passed(self) -> None:
        self.checked += 1
        self.end_run()

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def violated(self, subject: str, at: float, detail: str, evidence: Record, context: Record | None = None,
                 *, count: int = 1, until: float | None = None, run: object = None) -> None:
        """Count a breach. With ``run``, one in a row with the same ``run`` key extends the last."""
        self.checked += 1
        v = Violation(invariant=self.invariant, subject=subject, at=at, detail=detail, evidence=evidence,  # type: ignore[arg-type]
                      context=context, count=count, until=until)  # type: ignore[arg-type]
        if run is not None and self._run is not None and self._run[0] == run:
            first = self._run[1]
            self._run = (run, msgspec.structs.replace(first, count=first.count + 1, until=at))
            return
        self.end_run()
        if run is None:
            self.violations.append(v)
        else:
            self._run = (run, v)

    def end_run(self) -> None:
        if self._run is not None:
            self.violations.append(self._run[1])
            self._run = None

    def summary(self, rule: str) -> Summary:
        self.end_run()
        return Summary(invariant=self.invariant, rule=rule, checked=self.checked, violations=len(self.violations),
                       skipped=sum(self.skipped.values()), skipped_because=dict(self.skipped))


# -- the invariants ------------------------------------------------------------------------------
def acknowledged_writes_survive(ix: Index) -> Tally:
    """No acknowledged write is lost: the last acknowledged write of each key decides it.

    Writes to one ``(kind, key)`` are ordered by ``at``. The last acknowledged one must show in
    the last ``Present`` of that kind: a put's key is among its keys, a delete's is not. Skipped
    when no write of the key was acknowledged, or when an unacknowledged write of the key with
    the other effect exists (it may have been applied at any time, even late). A kind with
    acknowledged writes but no ``Present`` at all is a violation (never read back)."""
    tally = Tally("acknowledged_writes_survive")
    final: dict[str, set[str]] = {p.kind: set(p.keys) for p in ix.history.of(Present)}
    groups: dict[tuple[str, str], list[Write]] = defaultdict(list)
    for w in sorted(ix.history.of(Write), key=lambda w: w.at):
        groups[(w.kind, w.key)].append(w)
    for (kind, key), writes in groups.items():
        acked = [w for w in writes if w.acknowledged]
        if not acked:
            tally.skip("never acknowledged")
            continue
        last = acked[-1]
        if any(not w.acknowledged and w.deleted != last.deleted for w in writes):
            tally.skip("an unacknowledged write may have applied")
            continue
        subject = f"{kind}:{key}"
        if kind not in final:
            tally.violated(subject, last.at, f"no Present({kind}) recorded: the final state was never read back", last)
        elif (key in final[kind]) == last.deleted:
            what = "an acknowledged delete came back" if last.deleted else "an acknowledged write is lost"
            tally.violated(subject, last.at, f"{what}: {key!r} is {'present' if last.deleted else 'missing'} at the end", last)
        else:
            tally.passed()
    return tally


def never_serves_expired(ix: Index) -> Tally:
    """No instance ever serves an expired credential, faults or not.

    Every 200 probe ``p`` must show ``p.expiration > p.at``. Nothing excuses it: a view with no
    valid credential (STS away longer than the credential's life) answers an error, never the
    old one as Success, so no fault window skips a probe. (``p.at`` is when the read was sent,
    so a credential served at or after it that expired by then was certainly served expired.)"""
    tally = Tally("never_serves_expired")
    for instance_id, probes in ix.probes.items():
        for p in probes:
            if p.status != 200:
                continue
            if p.expiration <= p.at:
                tally.violated(instance_id, p.at, f"served {p.access_key_id}, expired {p.at - p.expiration:.3f}s before",
                               p, run=(instance_id, p.access_key_id))
            else:
                tally.passed()
        tally.end_run()
    return tally


def fresh_before_expiry(ix: Index) -> Tally:
    """A fresh credential is served before the old one expires.

    For each credential ``K`` (access key id) an instance served, first seen by probe ``f`` and
    expiring at ``E``: let ``D = E - refresh_margin`` and ``q`` the first probe of the instance sent
    at or after ``D``. ``q`` must be a 200 serving a credential other than ``K`` that expires after
    ``E``. Checked only when ``q`` exists (the probes covered the deadline), no Detach of the
    instance may have taken effect between ``f`` and ``q`` (one that succeeded or got no answer,
    requested by ``q.at`` and not acknowledged before ``f.at``: a detached role is not
    refreshed), and ``[D - grace, q.at]`` was healthy on the credential path."""
    tally = Tally("fresh_before_expiry")
    margin = ix.bounds.refresh_margin
    for instance_id, probes in ix.probes.items():
        first_seen: dict[str, Probe] = {}
        for p in probes:
            if p.status == 200 and p.access_key_id and p.access_key_id not in first_seen:
                first_seen[p.access_key_id] = p
        for key, f in first_seen.items():
            deadline = f.expiration - margin
            q = next((p for p in probes if p.at >= deadline), None)
            if q is None:
                tally.skip("recording ended before the deadline")
            elif any(_in_flight(d, f.at, q.at) for d in ix.detaches.get(instance_id, [])):
                tally.skip("detached")
            elif not ix.healthy(deadline, q.at, instance_id, ix.bounds.credential_path):
                tally.skip("fault")
            elif q.status == 200 and q.access_key_id != key and q.expiration > f.expiration:
                tally.passed()
            else:
                late = q.at - deadline
                if q.status != 200:
                    detail = f"no credential served {late:.3f}s after the deadline (status {q.status})"
                elif q.access_key_id == key:
                    detail = f"still serving {key} {late:.3f}s after the deadline"
                else:
                    detail = f"serving {q.access_key_id}, which expires no later than {key}"
                tally.violated(instance_id, q.at, detail + f" (expires t+{f.expiration - ix.origin:.3f}s)", q, f)
    return tally


def _in_flight(d: Detach, start: float, end: float) -> bool:
    """A Detach that may have taken effect between ``start`` and ``end``: requested by ``end`` and
    not acknowledged before ``start``; one that failed with a definite answer changed nothing."""
    if not d.ok and d.at_acknowledged is not None:
        return False
    return d.at_requested <= end and (d.at_acknowledged is None or d.at_acknowledged >= start)


def detach_within_bound(ix: Index) -> Tally:
    """After DetachInstanceRamRole returns, the instance stops serving that role within the bound.

    For each Detach ``d`` that succeeded, the probes of its instance sent after
    ``d.at_acknowledged + detach_bound`` (and before any later Attach of the role was requested)
    that are healthy on the control path must not serve ``d.role`` (200 with that role; a Detach
    without a role name: any role). One check per Detach, skipped when no such probe exists."""
    tally = Tally("detach_within_bound")
    bound = ix.bounds.detach_bound
    for instance_id, detaches in ix.detaches.items():
        probes = ix.probes.get(instance_id, [])
        for d in detaches:
            if not d.ok or d.at_acknowledged is None:
                continue
            deadline = d.at_acknowledged + bound
            again = [a.at_requested for (i, role), attaches in ix.attaches.items() if i == instance_id
                     and (role == d.role or not d.role) for a in attaches if a.at_requested >= d.at_requested]
            cutoff = min(again, default=math.inf)
            window = [p for p in probes if deadline < p.at < cutoff]
            healthy = [p for p in window if ix.healthy(p.at, p.at, instance_id, ix.bounds.control_path)]
            if not window:
                tally.skip("no probe after the deadline")
                continue
            if not healthy:
                tally.skip("fault")
                continue
            served = [p for p in healthy if p.status == 200 and (p.role == d.role or not d.role)]
            if served:
                tally.violated(instance_id, served[0].at,
                               f"still served {served[0].role} {served[0].at - d.at_acknowledged:.3f}s after "
                               f"DetachInstanceRamRole returned (bound {bound:g}s)", served[0], d,
                               count=len(served), until=served[-1].at)
            else:
                tally.passed()
    return tally


def only_attached_role(ix: Index) -> Tally:
    """An instance only ever serves credentials of the role attached to it.

    Every 200 probe ``p`` serving role ``R`` on instance ``I`` needs an Attach of ``R`` to ``I``
    requested at or before ``p.at`` (always checked, faults or not; attaches made around the
    recorder do not count). And with ``a`` the latest such Attach, no successful Detach of ``R``
    (or of any role) requested after ``a`` may have been acknowledged more than ``detach_bound``
    before ``p.at``; that second part is checked only when ``p`` is healthy on the control path."""
    tally = Tally("only_attached_role")
    bound = ix.bounds.detach_bound
    for instance_id, probes in ix.probes.items():
        for p in probes:
            if p.status != 200:
                continue
            attaches = [a for a in ix.attaches.get((instance_id, p.role), []) if a.at_requested <= p.at]
            if not attaches:
                tally.violated(instance_id, p.at, f"served role {p.role!r}, which was never attached to it", p,
                               run=(instance_id, p.role, "never"))
                continue
            a = attaches[-1]
            gone = next((d for d in ix.detaches.get(instance_id, []) if d.ok and d.role in (p.role, "")
                         and d.at_requested >= a.at_requested and d.at_acknowledged is not None
                         and d.at_acknowledged + bound < p.at), None)
            if gone is None:
                tally.passed()
            elif not ix.healthy(p.at, p.at, instance_id, ix.bounds.control_path):
                tally.skip("fault")
            else:
                tally.violated(instance_id, p.at, f"served role {p.role!r}, detached {p.at - (gone.at_acknowledged or 0):.3f}s "
                               f"before (bound {bound:g}s)", p, gone, run=(instance_id, p.role, gone))
        tally.end_run()
    return tally


def exactly_one_reply(ix: Index) -> Tally:
    """Every request gets exactly one reply.

    The ``replies`` of all Exchange records with one ``request_id`` add up to exactly 1 (0: the
    reply was lost; 2 or more: duplicated). A fault of a service behind the gateway excuses
    nothing (the gateway answers, with an error if need be: an error answer is a reply); only a
    fault on the reply path itself (the gateway, holding the caller's connection) from the
    request's start to ``grace`` seconds after it excuses a missing reply. Two never are."""
    tally = Tally("exactly_one_reply")
    by_id: dict[str, list[Exchange]] = defaultdict(list)
    for e in ix.history.of(Exchange):
        by_id[e.request_id].append(e)
    for request_id, exchanges in by_id.items():
        replies = sum(e.replies for e in exchanges)
        start = exchanges[0].at
        if replies == 1:
            tally.passed()
        elif replies == 0 and not ix.healthy(start + ix.bounds.grace, start + ix.bounds.grace, "", ix.bounds.reply_path):
            tally.skip("fault")
        else:
            what = exchanges[0].what or "request"
            detail = f"{what} got no reply" if replies == 0 else f"{what} got {replies} replies"
            tally.violated(request_id, exchanges[0].at, detail, exchanges[0])
    return tally


INVARIANTS: tuple[Callable[[Index], Tally], ...] = (
    acknowledged_writes_survive, never_serves_expired, fresh_before_expiry, detach_within_bound, only_attached_role,
    exactly_one_reply)


def _calls(ix: Index) -> tuple[dict[str, int], dict[str, int]]:
    every: Counter[str] = Counter()
    healthy: Counter[str] = Counter()
    for c in ix.history.of(Call):
        every[c.outcome] += 1
        if ix.healthy(c.at, c.at, c.instance_id, ix.bounds.credential_path):
            healthy[c.outcome] += 1
    return dict(every), dict(healthy)


def check(history: History, bounds: Bounds | None = None) -> Report:
    """Check every invariant over ``history``."""
    bounds = bounds or Bounds()
    ix = Index(history, bounds)
    summaries, violations = [], []
    for invariant in INVARIANTS:
        tally = invariant(ix)
        rule = (invariant.__doc__ or "").strip().splitlines()[0]
        summaries.append(tally.summary(rule))
        violations += tally.violations
    calls, healthy = _calls(ix)
    return Report(summaries=summaries, violations=violations, calls=calls, calls_healthy=healthy, origin=ix.origin,
                  bounds=bounds)


__all__ = ["Bounds", "Index", "Report", "Summary", "Violation", "check", "describe", "INVARIANTS",
           "acknowledged_writes_survive", "never_serves_expired", "fresh_before_expiry", "detach_within_bound",
           "only_attached_role", "exactly_one_reply"]
