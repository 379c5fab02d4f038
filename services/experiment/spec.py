"""Pure core: the experiment file (issue 12): msgspec Structs, YAML loading with line numbers, validation.

An experiment is one YAML file read top to bottom: ``settings``, a ``topology``, a ``timeline`` of
control actions (``do:``), faults (``fault:``) and heals (``heal:``), and ``checks``. :func:`loads`
turns the text into an :class:`Experiment` or raises :class:`SpecError`, whose every issue names
the line and the field (``exp.yaml:14: timeline[2].for: expected a duration like 30s, got 'soon'``).

Values a person writes are parsed here, once: durations (``150ms``, ``30s``, ``25m``, ``2h``,
``1d`` or a number of seconds) become seconds, percentages (``5%`` or a probability ``0.05``)
become probabilities, rates (``2/s``, ``30/m``, ``1/10m``, ``100/h`` or a number per second) become calls per
second, bandwidths (``64kbps``, ``1mbps``) become bits per second, clock skews (``+5m``, ``-30s``)
signed seconds. The JSON Schema (:func:`schema`) is generated from these Structs; the published
copy is ``docs/experiment.schema.json`` (``ramsim experiment schema`` prints it).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

import msgspec
import yaml

from protocol.messages import ALL as MESSAGE_TYPES


# --- parsed scalar types ---------------------------------------------------------------------

class Duration(float):
    """Seconds (>= 0). Written ``150ms``, ``30s``, ``25m``, ``2h``, ``1d`` or a number of seconds."""


class Skew(float):
    """Signed seconds a clock is off by. Written ``+5m``, ``-30s``, ``90s`` or a number."""


class Percent(float):
    """A probability in [0, 1]. Written ``5%`` or ``0.05``."""


class Rate(float):
    """Events per second (> 0). Written ``2/s``, ``30/m``, ``1/10m``, ``100/h`` or a number per second."""


class Bandwidth(float):
    """Bits per second (> 0). Written ``64kbps``, ``10mbps``, ``1gbps``, ``800bps``."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([+-]?)(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h|d)\s*$")
_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bps|kbps|mbps|gbps)\s*$", re.IGNORECASE)
_BANDWIDTH_UNITS = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_duration(value: Any, *, signed: bool = False) -> float:
    """Seconds from ``150ms``/``30s``/``25m``/``2h``/``1d``/a number; ValueError otherwise."""
    seconds = _number(value)
    if seconds is None and isinstance(value, str) and (match := _DURATION.match(value)):
        sign, amount, unit = match.groups()
        if signed or not sign:
            seconds = float(amount) * _UNITS[unit or "s"] * (-1.0 if sign == "-" else 1.0)
    if seconds is None or (seconds < 0 and not signed):
        like = "a clock skew like +5m or -30s" if signed else "a duration like 30s"
        raise ValueError(f"expected {like}, got {value!r}")
    return seconds


def parse_percent(value: Any) -> float:
    p = _number(value)
    if p is None and isinstance(value, str) and (match := _PERCENT.match(value)):
        p = float(match.group(1)) / 100.0
    if p is None or not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a percentage like 5% (or a probability 0..1), got {value!r}")
    return p


def parse_rate(value: Any) -> float:
    r = _number(value)
    if r is None and isinstance(value, str) and (match := _RATE.match(value)):
        r = float(match.group(1)) / (float(match.group(2) or 1) * _UNITS[match.group(3)])
    if r is None or r <= 0:
        raise ValueError(f"expected a rate like 2/s, 30/m, 1/10m or 100/h, got {value!r}")
    return r


def parse_bandwidth(value: Any) -> float:
    b = None
    if isinstance(value, str) and (match := _BANDWIDTH.match(value)):
        b = float(match.group(1)) * _BANDWIDTH_UNITS[match.group(2).lower()]
    if b is None or b <= 0:
        raise ValueError(f"expected a bandwidth like 64kbps or 10mbps, got {value!r}")
    return b


_PARSERS = {Duration: parse_duration, Skew: lambda v: parse_duration(v, signed=True), Percent: parse_percent,
            Rate: parse_rate, Bandwidth: parse_bandwidth}
_SCHEMAS = {
    Duration: {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$"}],
               "description": Duration.__doc__},
    Skew: {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^[+-]?\d+(\.\d+)?(ms|s|m|h|d)?$"}],
           "description": Skew.__doc__},
    Percent: {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string", "pattern": r"^\d+(\.\d+)?%$"}],
              "description": Percent.__doc__},
    Rate: {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^\d+(\.\d+)?/(\d+(\.\d+)?)?(ms|s|m|h|d)$"}],
           "description": Rate.__doc__},
    Bandwidth: {"type": "string", "pattern": r"^\d+(\.\d+)?([kKmMgG])?bps$", "description": Bandwidth.__doc__},
}


def _dec_hook(kind: type, value: Any) -> Any:
    if kind in _PARSERS:
        return kind(_PARSERS[kind](value))
    raise NotImplementedError(kind)


def _enc_hook(value: Any) -> Any:
    if isinstance(value, float):
        return float(value)
    raise NotImplementedError(type(value))


def _schema_hook(kind: type) -> dict:
    if kind in _SCHEMAS:
        return dict(_SCHEMAS[kind])
    raise NotImplementedError(kind)


# --- the file --------------------------------------------------------------------------------

Instances = Union[str, list[int]]
"""``all``, a list of indexes ``[0, 3, 5]``, or a range ``"0-9"`` (both ends included)."""
_INSTANCES = re.compile(r"^\s*(all|(\d+)\s*(?:-\s*(\d+))?)\s*$")

SERVICES = ("ram", "sts", "ecs", "gateway", "oss", "broker")
Target = str
"""ram | sts | ecs | gateway | oss | broker | metadata-host-N (N from 1)."""
_TARGET = re.compile(r"^(ram|sts|ecs|gateway|oss|broker|metadata-host-([1-9]\d*))$")

INVARIANTS = ("never_serves_expired", "only_attached_role", "detached_role_404s", "fresh_before_expiry",
              "exactly_one_reply", "no_cross_instance")
SLOS = ("attach_to_visible_p99", "refresh_latency_p99", "app_success_rate", "refresh_before_expiry")
_SLO_BOUND = {"attach_to_visible_p99": "max", "refresh_latency_p99": "max", "app_success_rate": "min",
              "refresh_before_expiry": None}


class Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Every Struct of the file: unknown fields are errors (a typo must not pass silently)."""


class Settings(Base):
    credential_lifetime: Duration = 3600.0   # what STS issues to an instance
    refresh_before: Duration = 1800.0        # ECS refreshes this long before expiry
    time_scale: float = 60.0                         # live only: simulated seconds per real second
    duration: Duration = 3600.0              # simulated length of the run
    probe_interval: Duration = 10.0          # every instance's credential path, this often
    grace: Duration = 30.0                   # recovery time after a fault window, for checks
    detach_bound: Duration = 2.0             # a detached role stops being served within this
    request_timeout: Duration = 5.0          # a request with no reply is an indefinite error after this


class Role(Base):
    policies: list[str] = []
    trust: Literal["ecs"] = "ecs"


class App(Base):
    """The ``ramsim app`` workload on some instances: OSS calls with the instance's credential."""

    instances: Instances = "all"
    rate: Rate = 1.0
    operation: Literal["oss:PutObject", "oss:GetObject"] = "oss:PutObject"


class Topology(Base):
    hosts: int = 1
    instances: int = 1
    roles: dict[str, Role] = {}
    apps: list[App] = []


# control actions, tagged by ``do``

class Step(Base, tag_field="do"):
    at: Duration


class AttachRole(Step, tag="attach_role"):
    role: str
    instances: Instances = "all"


class DetachRole(Step, tag="detach_role"):
    instances: Instances = "all"


class AttachPolicy(Step, tag="attach_policy"):
    role: str
    policy: str


class DetachPolicy(Step, tag="detach_policy"):
    role: str
    policy: str


class RunInstances(Step, tag="run_instances"):
    count: int = 1
    host: int | None = None   # 1..hosts; default round-robin


class StopInstances(Step, tag="stop_instances"):
    instances: Instances


class RestartControlPlane(Step, tag="restart_control_plane"):
    """ram, sts and ecs killed and restarted at once (the refresh-storm case)."""


Action = Union[AttachRole, DetachRole, AttachPolicy, DetachPolicy, RunInstances, StopInstances, RestartControlPlane]


# faults, tagged by ``fault``

class FaultStep(Base, tag_field="fault"):
    at: Duration
    target: Target = ""
    for_: Duration | None = msgspec.field(default=None, name="for")
    id: str = ""


class Kill(FaultStep, tag="kill"):
    """kill -9, then the supervisor restarts it (sim: memory lost, restart from the committed store)."""


class Pause(FaultStep, tag="pause"):
    """SIGSTOP .. SIGCONT (sim: the node handles and fires nothing; its inbox queues)."""


class Restart(FaultStep, tag="restart"):
    """SIGTERM and start again."""


class Link(FaultStep, tag="link"):
    """Between ``target`` and the broker; both directions unless ``direction``."""

    latency: Duration = 0.0
    jitter: Duration = 0.0
    distribution: Literal["uniform", "normal", "pareto"] = "uniform"
    loss: Percent = 0.0
    bandwidth: Bandwidth | None = None
    partition: bool = False
    reset: bool = False
    direction: Literal["both", "up", "down"] = "both"


class MessageFault(FaultStep, tag="message"):
    """At the bus layer, for messages of ``types`` and/or on ``topics`` (neither: every message)."""

    types: list[str] = []
    topics: list[str] = []
    drop: Percent = 0.0
    delay: Duration = 0.0
    jitter: Duration = 0.0
    duplicate: Percent = 0.0
    reorder: Percent = 0.0
    corrupt: Percent = 0.0


class ClockSkew(FaultStep, tag="clock_skew", kw_only=True):
    """One service's clock (``target``) or one instance's (``instance``) is off by ``skew``."""

    skew: Skew
    instance: int | None = None


class ApiErrors(FaultStep, tag="api_errors"):
    """STS or RAM answers a share of API calls with Throttling.User / ServiceUnavailable."""

    throttle: Percent = 0.0
    error_5xx: Percent = 0.0


Fault = Union[Kill, Pause, Restart, Link, MessageFault, ClockSkew, ApiErrors]
PROCESS_FAULTS = (Kill, Pause, Restart)


class Heal(Base):
    at: Duration
    heal: str   # the id of an earlier fault


TimelineStep = Union[Action, Fault, Heal]


class Check(Base):
    """Exactly one of ``invariant`` or ``slo``; an SLO takes ``max`` (a duration) or ``min`` (a percentage)."""

    invariant: Literal[INVARIANTS] | None = None  # type: ignore[valid-type]
    slo: Literal[SLOS] | None = None  # type: ignore[valid-type]
    max: Duration | None = None
    min: Percent | None = None
    outside: Literal["faults"] | None = None  # ignore what happened inside fault windows (+ grace)

    @property
    def name(self) -> str:
        return self.invariant or self.slo or ""


class Experiment(Base):
    name: str
    description: str = ""
    expect: Literal["pass", "fail"] = "pass"
    expect_failing: list[str] = []
    seed: int = 1
    settings: Settings = Settings()
    topology: Topology = Topology()
    timeline: list[TimelineStep] = []
    checks: list[Check] = []

    def actions(self) -> list[Action]:
        return [s for s in self.timeline if isinstance(s, Step)]

    def faults(self) -> list[Fault]:
        return [s for s in self.timeline if isinstance(s, FaultStep)]

    def total_instances(self) -> int:
        return self.topology.instances + sum(a.count for a in self.actions() if isinstance(a, RunInstances))


class _Raw(Base):
    """The top level as read, before the timeline's steps are told apart (by their key)."""

    name: str
    description: str = ""
    expect: Literal["pass", "fail"] = "pass"
    expect_failing: list[str] = []
    seed: int = 1
    settings: Settings = Settings()
    topology: Topology = Topology()
    timeline: list[dict[str, Any]] = []
    checks: list[Check] = []


# --- errors with lines -----------------------------------------------------------------------

class Issue(msgspec.Struct, frozen=True):
    line: int      # 1-based; 0 when unknown
    path: str      # "timeline[2].for"
    message: str


class SpecError(ValueError):
    """A bad experiment file; ``issues`` each name the line and the field."""

    def __init__(self, filename: str, issues: list[Issue]) -> None:
        self.filename, self.issues = filename, issues
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.filename}:{i.line}: {i.path or '(top level)'}: {i.message}" for i in self.issues]


Path = tuple[Union[str, int], ...]


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse_path(text: str) -> Path:
    parts: list[Union[str, int]] = []
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", text):
        parts.append(int(index) if index else name)
    return tuple(parts)


class _Located:
    """YAML read into plain values, with the line of every mapping key and sequence item."""

    def __init__(self, text: str, filename: str) -> None:
        self.lines: dict[Path, int] = {}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.value = self._build(loader, node, ()) if node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            raise SpecError(filename, [Issue(line, "", f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader, node: yaml.Node, path: Path) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self._build(loader, value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(loader, item, path + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    def line(self, path: Path) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


# --- loading ---------------------------------------------------------------------------------

_KINDS = (("do", Action), ("fault", Fault), ("heal", Heal))


def _convert(value: Any, kind: Any, where: Path, located: _Located) -> Any:
    try:
        return msgspec.convert(value, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, _, at = text.partition(" - at `$")
        sub = _parse_path(at.rstrip("`")) if at else ()
        unknown = re.match(r"Object contains unknown field `(.+)`", message)
        if unknown:
            sub, message = sub + (unknown.group(1),), "unknown field"
        missing = re.match(r"Object missing required field `(.+)`", message)
        if missing:
            message = f"missing required field {missing.group(1)!r}"
        path = where + sub
        if message.startswith("Invalid enum value") and path and isinstance(path[-1], str):
            choices = _choices().get(path[-1])
            if choices:
                message += f" (expected one of {', '.join(choices)})"
        raise SpecError("", [Issue(located.line(path), format_path(path), _lower(message))]) from None


_CHOICES: dict[str, list[str]] = {}


def _choices() -> dict[str, list[str]]:
    """Field name -> the values it may take, from the schema (for an error naming the choices)."""
    if not _CHOICES:
        for definition in schema()["$defs"].values():
            for name, prop in definition.get("properties", {}).items():
                for option in [prop, *prop.get("anyOf", [])]:
                    if "enum" in option and len(option["enum"]) > 1:
                        _CHOICES.setdefault(name, [str(v) for v in option["enum"]])
    return _CHOICES


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


def _step(raw: dict[str, Any], index: int, located: _Located) -> TimelineStep:
    where: Path = ("timeline", index)
    if not isinstance(raw, dict):
        raise SpecError("", [Issue(located.line(where), format_path(where), "expected a mapping with at and one of do, fault, heal")])
    present = [key for key, _ in _KINDS if key in raw]
    if len(present) != 1:
        got = ", ".join(present) or "none"
        raise SpecError("", [Issue(located.line(where), format_path(where), f"needs exactly one of do, fault, heal (got {got})")])
    kind = dict(_KINDS)[present[0]]
    return _convert(raw, kind, where, located)


def loads(text: str, filename: str = "<experiment>") -> Experiment:
    """Parse and validate one experiment file; raises :class:`SpecError` naming the line and field."""
    located = _Located(text, filename)
    if not isinstance(located.value, dict):
        raise SpecError(filename, [Issue(1, "", "expected a mapping with name, settings, topology, timeline, checks")])
    try:
        raw = _convert(located.value, _Raw, (), located)
    except SpecError as exc:
        raise SpecError(filename, exc.issues) from None
    steps, issues = [], []
    for i, raw_step in enumerate(raw.timeline):
        try:
            steps.append(_step(raw_step, i, located))
        except SpecError as exc:
            issues += exc.issues
    if issues:
        raise SpecError(filename, issues)
    fields = {f: getattr(raw, f) for f in raw.__struct_fields__ if f != "timeline"}
    experiment = Experiment(**fields, timeline=steps)
    issues = [Issue(located.line(path), format_path(path), message) for path, message in _semantics(experiment)]
    if issues:
        raise SpecError(filename, issues)
    return experiment


def load(path: str) -> Experiment:
    """Read and validate the file at ``path`` (errors are named by the path as given)."""
    with open(path, encoding="utf-8") as f:
        return loads(f.read(), path)


# --- what the types cannot say ---------------------------------------------------------------

def select(instances: Instances, count: int) -> list[int]:
    """The indexes an ``instances`` value names (ValueError when it names one >= ``count``)."""
    if isinstance(instances, list):
        chosen = list(instances)
    else:
        match = _INSTANCES.match(instances)
        if not match:
            raise ValueError(f"expected all, a list of indexes or a range like \"0-9\", got {instances!r}")
        if match.group(1) == "all":
            return list(range(count))
        low = int(match.group(2))
        high = int(match.group(3)) if match.group(3) is not None else low
        if high < low:
            raise ValueError(f"range {instances!r} ends before it starts")
        chosen = list(range(low, high + 1))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ValueError(f"instance index {bad[0]} out of range (the experiment has {count} instances: 0..{count - 1})")
    return chosen


MIN_LIFETIME, MAX_LIFETIME = 900.0, 43200.0   # AssumeRole's DurationSeconds for a service-trusted role


def _semantics(x: Experiment) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    s, t = x.settings, x.topology
    if not MIN_LIFETIME <= s.credential_lifetime <= MAX_LIFETIME:
        out.append((("settings", "credential_lifetime"), f"must be between 15m and 12h (STS issues {MIN_LIFETIME:g}..{MAX_LIFETIME:g} "
                                                         f"seconds to an instance's role), got {s.credential_lifetime:g}s"))
    if s.refresh_before >= s.credential_lifetime:
        out.append((("settings", "refresh_before"), "must be less than credential_lifetime"))
    for name in ("duration", "probe_interval", "credential_lifetime", "request_timeout"):
        if getattr(s, name) <= 0:
            out.append((("settings", name), "must be more than 0"))
    if s.time_scale <= 0:
        out.append((("settings", "time_scale"), "must be more than 0"))
    if t.hosts < 1:
        out.append((("topology", "hosts"), "must be at least 1"))
    if t.instances < 0:
        out.append((("topology", "instances"), "must not be negative"))
    total = x.total_instances()
    for i, app in enumerate(t.apps):
        out += _selection(app.instances, total, ("topology", "apps", i, "instances"))
    out += _timeline(x, total)
    out += _checks(x)
    return out


def _selection(instances: Instances, total: int, path: Path) -> list[tuple[Path, str]]:
    try:
        select(instances, total)
    except ValueError as exc:
        return [(path, str(exc))]
    return []


def _timeline(x: Experiment, total: int) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    ids: dict[str, float] = {}
    for i, step in enumerate(x.timeline):
        here: Path = ("timeline", i)
        if step.at > x.settings.duration:
            out.append((here + ("at",), f"after the end of the run (settings.duration is {x.settings.duration:g}s)"))
        if isinstance(step, (AttachRole, AttachPolicy, DetachPolicy)) and step.role not in x.topology.roles:
            out.append((here + ("role",), f"no role {step.role!r} in topology.roles"))
        if isinstance(step, (AttachRole, DetachRole, StopInstances)):
            out += _selection(step.instances, total, here + ("instances",))
        if isinstance(step, StopInstances):
            out.append((here + ("do",), "stop_instances: ramsim's ECS has no StopInstances yet"))
        if isinstance(step, RunInstances):
            if step.count < 1:
                out.append((here + ("count",), "must be at least 1"))
            if step.host is not None and not 1 <= step.host <= x.topology.hosts:
                out.append((here + ("host",), f"no host {step.host} (topology.hosts is {x.topology.hosts})"))
        if isinstance(step, FaultStep):
            out += _fault(step, x, total, here)
            if step.id:
                if step.id in ids:
                    out.append((here + ("id",), f"id {step.id!r} used twice"))
                ids[step.id] = step.at
        if isinstance(step, Heal):
            if step.heal not in ids:
                out.append((here + ("heal",), f"no earlier fault with id {step.heal!r}"))
            elif ids[step.heal] > step.at:
                out.append((here + ("at",), f"heals {step.heal!r} before it starts"))
    return out


def _fault(f: FaultStep, x: Experiment, total: int, here: Path) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if isinstance(f, ClockSkew) and f.instance is not None:
        if f.target:
            out.append((here + ("target",), "give target or instance, not both"))
        if not 0 <= f.instance < total:
            out.append((here + ("instance",), f"instance index {f.instance} out of range (0..{total - 1})"))
        return out
    if isinstance(f, MessageFault) and not f.target:
        return _message(f, here)
    match = _TARGET.match(f.target)
    if not match:
        what = "clock_skew needs a target or an instance" if isinstance(f, ClockSkew) and not f.target else \
            f"expected ram, sts, ecs, gateway, oss, broker or metadata-host-N, got {f.target!r}"
        out.append((here + ("target",), what))
    elif match.group(2) and int(match.group(2)) > x.topology.hosts:
        out.append((here + ("target",), f"no {f.target} (topology.hosts is {x.topology.hosts})"))
    if isinstance(f, ApiErrors) and f.target not in ("sts", "ram"):
        out.append((here + ("target",), "api_errors acts on sts or ram"))
    if isinstance(f, Link) and f.target == "broker":
        out.append((here + ("target",), "a link runs between a component and the broker; name the component"))
    if isinstance(f, MessageFault):
        out += _message(f, here)
    return out


def _message(f: MessageFault, here: Path) -> list[tuple[Path, str]]:
    known = {kind.__name__ for kind in MESSAGE_TYPES}
    return [(here + ("types", j), f"no message type {name!r}") for j, name in enumerate(f.types) if name not in known]


def _checks(x: Experiment) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    names = []
    for i, c in enumerate(x.checks):
        here: Path = ("checks", i)
        if (c.invariant is None) == (c.slo is None):
            out.append((here, "needs exactly one of invariant or slo"))
            continue
        names.append(c.name)
        bound = _SLO_BOUND.get(c.slo) if c.slo else None
        for field in ("max", "min"):
            if getattr(c, field) is not None and field != bound:
                out.append((here + (field,), f"{c.name} takes no {field}" + (f" (it takes {bound})" if bound else "")))
        if bound and getattr(c, bound) is None:
            out.append((here, f"{c.slo} needs {bound}"))
        if c.outside and c.slo != "app_success_rate":
            out.append((here + ("outside",), "only app_success_rate takes outside"))
    for i, name in enumerate(x.expect_failing):
        if name not in names:
            out.append((("expect_failing", i), f"{name!r} is not one of the checks"))
    if x.expect == "pass" and x.expect_failing:
        out.append((("expect_failing",), "only with expect: fail"))
    if x.expect == "fail" and not x.expect_failing:
        out.append((("expect_failing",), "expect: fail needs the checks expected to fail"))
    return out


# --- the published schema --------------------------------------------------------------------

def schema() -> dict[str, Any]:
    """The JSON Schema of the file, generated from the Structs (the timeline's steps told apart by key)."""
    (_, *steps), components = msgspec.json.schema_components(
        [_Raw, *Action.__args__, *Fault.__args__, Heal], schema_hook=_schema_hook, ref_template="#/$defs/{name}")
    top = components.pop("_Raw")
    top.update(title="Experiment", description="One experiment: settings, topology, a timeline, checks.")
    top["properties"]["timeline"]["items"] = {"anyOf": steps}
    components["Experiment"] = top
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "ramsim experiment",
            "$ref": "#/$defs/Experiment", "$defs": components}


def schema_json() -> bytes:
    """:func:`schema` as stable, indented JSON (what ``docs/experiment.schema.json`` holds)."""
    return msgspec.json.format(msgspec.json.encode(schema(), order="sorted"), indent=2) + b"\n"


def encode(experiment: Experiment) -> bytes:
    """The validated experiment as JSON (parsed values: seconds, probabilities)."""
    return msgspec.json.encode(experiment, enc_hook=_enc_hook)


__all__ = ["Experiment", "Settings", "Topology", "Role", "App", "Check", "Action", "Fault", "Heal", "SpecError", "Issue",
           "load", "loads", "select", "schema", "schema_json", "encode", "INVARIANTS", "SLOS", "SERVICES",
           "PROCESS_FAULTS", "parse_duration", "parse_percent", "parse_rate", "parse_bandwidth"]
