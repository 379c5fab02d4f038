"""Pure core: the RAM policy language, parsed once into matchers, and the decisions made with it.

Told everything, reads nothing: the current time, the source IP and every other condition key
arrive in the ``RequestContext``.

    parse(text, *, trust=False, max_chars=MAX_DOCUMENT_CHARS) -> Document     (or PolicyError)
    decide(policies, request, *, session=()) -> Verdict                        (identity ∩ session)
    trusts(document, kind, principal, action="sts:AssumeRole", *, keys=None) -> bool
    evaluate(policies, action, resource, *, keys=None) -> Verdict              (the older entry point)

Language (Alibaba's, section 6 of the reference): ``Version`` "1"; each statement has ``Effect``
Allow|Deny, exactly one of ``Action``/``NotAction``, ``Resource`` (required in permission policies,
refused in trust policies), ``Principal`` (``Service``/``RAM``/``Federated``; trust policies only),
optional ``Sid`` and ``Condition``; there is no ``NotResource``. Actions ignore case; resources,
principals (except ``Service``) and condition values are case-sensitive. ``*`` is any sequence,
empty included, ``?`` exactly one character; an ARN pattern is one glob over the whole string, so
``acs:ram:*:*:role/R`` matches ``acs:ram::123:role/R``.

Decision: an explicit Deny anywhere (identity or session policy) wins; otherwise the identity
policies must Allow and, when a session policy is given, so must it; otherwise an implicit deny.

Conditions: values of one key are OR'ed; keys under one operator, and operators in one block, are
AND'ed; key names ignore case. A key missing from the request makes its condition false, except
with an ``...IfExists`` operator, where it makes it true (an empty list counts as missing). A
negated operator (StringNotEquals, NotIpAddress, ...) holds for a request value that matches
*none* of the policy's values. A multi-valued request key (a list) satisfies an operator when
*any* of its values does. A request value of the wrong type (``"abc"`` for a Numeric operator, a
non-IP for IpAddress) satisfies neither the operator nor its negation.

Speed: everything is compiled at parse time. Exact patterns are set look-ups, ``ecs:Describe*``
is one ``str.startswith`` with a tuple, other globs share one regex per statement element, built
once, with atomic groups so that no pattern can backtrack badly. Statements are indexed by the
service of their actions, so a decision only looks at statements that can match.

The matchers and the condition-operator table live in :mod:`services.ram.matching`.

Exceptions: ``PolicyError(ValueError)`` only, with ``.code`` (``MalformedPolicyDocument``, or
``InvalidParameter.PolicyDocument.Length``) and ``.location`` (``Statement[2].Condition.X``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from services.ram.matching import (  # noqa: F401 - IF_EXISTS, OPERATORS are part of this module's API
    IF_EXISTS, OPERATORS, TOO_LONG, Condition, Matcher, PolicyError, _always, _BY_LOWER, _key_test, _matcher,
)

MAX_DOCUMENT_CHARS = 6144
PRINCIPAL_KINDS = ("Service", "RAM", "Federated")
_ELEMENTS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "Condition", "Principal"})


# -- documents ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Statement:
    index: int
    effect: str
    actions: tuple[str, ...]  # as written
    not_action: bool
    resources: tuple[str, ...]  # as written; () in trust policies
    principals: dict[str, tuple[str, ...]]
    sid: str = ""
    conditions: tuple[Condition, ...] = ()
    action_matches: Matcher = field(default=_always, repr=False, compare=False)  # lower-cased action
    resource_matches: Matcher = field(default=_always, repr=False, compare=False)
    principal_matches: dict[str, Matcher] = field(default_factory=dict, repr=False, compare=False)
    services: frozenset[str] | None = field(default=None, repr=False, compare=False)  # None: any

    def conditions_hold(self, keys: Mapping[str, tuple[object, ...]]) -> bool:
        """``keys``: lower-cased names to tuples of values (``RequestContext.lookup``)."""
        for condition in self.conditions:
            values = keys.get(condition.name)
            if values is None:
                if condition.if_exists:
                    continue
                return False
            if not condition.test(values):
                return False
        return True

    def matches(self, action: str, resource: str, keys: Mapping[str, tuple[object, ...]] | None = None) -> bool:
        """Does this statement apply (``resource`` is not checked in a trust policy)?"""
        if not self.action_matches(action.lower()):
            return False
        if self.resources and not self.resource_matches(resource):
            return False
        return not self.conditions or self.conditions_hold(keys or {})


@dataclass(frozen=True)
class Document:
    statements: tuple[Statement, ...] = field(compare=False)
    text: str
    trust: bool = False
    # service -> the statements whose actions can be in it, in order; the rest: any service
    by_service: dict[str, tuple[Statement, ...]] = field(default_factory=dict, repr=False, compare=False)
    any_service: tuple[Statement, ...] = field(default=(), repr=False, compare=False)

    @property
    def conditional(self) -> bool:
        """Does any statement have a Condition? (Without one, a decision depends only on the
        action and the resource, so an enforcement point may remember it.)"""
        return any(st.conditions for st in self.statements)

    def candidates(self, service: str) -> tuple[Statement, ...]:
        return self.by_service.get(service, self.any_service)


def _index(statements: tuple[Statement, ...]) -> tuple[dict[str, tuple[Statement, ...]], tuple[Statement, ...]]:
    named = sorted({s for st in statements if st.services for s in st.services})
    by_service = {name: tuple(st for st in statements if st.services is None or name in st.services) for name in named}
    return by_service, tuple(st for st in statements if st.services is None)


def parse(text: str, *, trust: bool = False, max_chars: int = MAX_DOCUMENT_CHARS) -> Document:
    """Validate and compile a policy document (``trust``: an AssumeRolePolicyDocument)."""
    if not isinstance(text, str) or not text or len(text) > max_chars:
        raise PolicyError(f"the document must be 1-{max_chars} characters", code=TOO_LONG)
    return _parse(text, trust)


@lru_cache(maxsize=1024)
def _parse(text: str, trust: bool) -> Document:  # documents are immutable: share them
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise PolicyError(f"not valid JSON: {exc.msg} at {where}", location=where) from None
    if not isinstance(raw, dict):
        raise PolicyError("the document must be a JSON object")
    for key in raw:
        if key not in ("Version", "Statement"):
            raise PolicyError(f'the document has an unknown element "{key}"', location=key)
    if raw.get("Version") != "1":
        raise PolicyError('"Version" must be "1"', location="Version")
    statements = raw.get("Statement")
    listed = [statements] if isinstance(statements, dict) else statements
    if not isinstance(listed, list) or not listed:
        raise PolicyError('"Statement" must be a non-empty list', location="Statement")
    compiled = tuple(_statement(i, s, trust) for i, s in enumerate(listed))
    by_service, any_service = _index(compiled)
    return Document(compiled, text, trust, by_service, any_service)


def _strings_of(value: Any, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where} must be a non-empty string or list of strings", location=where)
    return values


def _statement(index: int, raw: Any, trust: bool) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object", location=where)
    for key in raw:
        if key == "NotResource":
            raise PolicyError(f"{where}.NotResource is not supported: RAM has no NotResource, use Resource",
                              location=f"{where}.NotResource")
        if key not in _ELEMENTS:
            raise PolicyError(f'{where} has an unknown element "{key}"', location=f"{where}.{key}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f'{where}.Effect must be "Allow" or "Deny", got {effect!r}', location=f"{where}.Effect")
    sid = raw.get("Sid", "")
    if "Sid" in raw and not (isinstance(sid, str) and sid):
        raise PolicyError(f"{where}.Sid must be a non-empty string", location=f"{where}.Sid")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError(f"{where} needs exactly one of Action and NotAction", location=where)
    key = "Action" if "Action" in raw else "NotAction"
    actions = _strings_of(raw[key], f"{where}.{key}")
    for action in actions:
        if action != "*" and ":" not in action:
            raise PolicyError(f'{where}.{key} "{action}" must look like "service:Action" or "*"', location=f"{where}.{key}")
    not_action = key == "NotAction"
    match = _matcher(a.lower() for a in actions)
    services = _services(actions, not_action)
    principals: dict[str, tuple[str, ...]] = {}
    resources: list[str] = []
    if trust:
        principals = _principals(raw.get("Principal"), where)
        if "Resource" in raw:
            raise PolicyError(f"{where}.Resource is not allowed in a trust policy", location=f"{where}.Resource")
    else:
        if "Principal" in raw:
            raise PolicyError(f"{where}.Principal is only allowed in a trust policy", location=f"{where}.Principal")
        resources = _strings_of(raw.get("Resource"), f"{where}.Resource")
        for resource in resources:
            fields = resource.split(":", 4)
            if resource != "*" and (fields[0] != "acs" or len(fields) < 5 or not fields[1] or not fields[4]):
                raise PolicyError(f'{where}.Resource "{resource}" must be "*" or an ARN acs:<service>:<region>:<account>:<id>',
                                  location=f"{where}.Resource")
    return Statement(
        index=index, effect=effect, actions=tuple(actions), not_action=not_action, resources=tuple(resources),
        principals=principals, sid=sid, conditions=_conditions(raw.get("Condition"), where, "Condition" in raw),
        action_matches=(lambda a: not match(a)) if not_action else match,
        resource_matches=_matcher(resources) if resources else _always,
        principal_matches={kind: _matcher(n.lower() for n in names) if kind == "Service" else _matcher(names)
                           for kind, names in principals.items()},
        services=services,
    )


def _services(actions: list[str], not_action: bool) -> frozenset[str] | None:
    """The services a statement's actions can belong to; None when it could be any."""
    if not_action:
        return None
    services = set()
    for action in actions:
        service = action.partition(":")[0].lower()
        if "*" in service or "?" in service:
            return None
        services.add(service)
    return frozenset(services)


def _principals(raw: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise PolicyError(f"{where}.Principal must name Service, RAM or Federated principals", location=f"{where}.Principal")
    principals = {}
    for kind, values in raw.items():
        if kind not in PRINCIPAL_KINDS:
            raise PolicyError(f"{where}.Principal has unknown kind {kind!r}", location=f"{where}.Principal.{kind}")
        principals[kind] = tuple(_strings_of(values, f"{where}.Principal.{kind}"))
    return principals


def _conditions(raw: Any, where: str, present: bool) -> tuple[Condition, ...]:
    if not present:
        return ()
    where = f"{where}.Condition"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object of operators", location=where)
    out = []
    for name, block in raw.items():
        at = f"{where}.{name}"
        operator = OPERATORS.get(name)
        if operator is None:
            hint = f' (did you mean "{_BY_LOWER[name.lower()]}"?)' if name.lower() in _BY_LOWER else ""
            raise PolicyError(f"{at} is not a condition operator{hint}", location=at)
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"{at} must be a non-empty object of condition keys", location=at)
        for key, value in block.items():
            spot = f"{at}.{key}"
            if not key:
                raise PolicyError(f"{at} has an empty condition key", location=at)
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
                raise PolicyError(f"{spot} must be a string, number or boolean, or a non-empty list of them", location=spot)
            if any(isinstance(v, str) and not v for v in values):
                raise PolicyError(f"{spot} has an empty value", location=spot)
            converted = operator.values(values, spot)
            out.append(Condition(name, key, tuple(values), operator.if_exists,
                                 _key_test(operator.build(converted), operator.negated), key.lower()))
    return tuple(out)


# -- decisions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestContext:
    """What is being decided; ``keys`` are condition keys (names ignore case), a list value is a
    multi-valued key."""
    action: str
    resource: str
    keys: Mapping[str, object] = field(default_factory=dict)

    @cached_property
    def lookup(self) -> dict[str, tuple[object, ...]]:
        """Lower-cased key names to tuples of values; empty lists are left out (missing)."""
        out: dict[str, tuple[object, ...]] = {}
        for name, value in self.keys.items():
            values = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)
            if values and value is not None:
                out[name.lower()] = values
        return out


@dataclass(frozen=True)
class NamedPolicy:
    name: str  # "System:AdministratorAccess", free text
    version: str  # "v1"; "" for a session policy
    document: Document


@dataclass(frozen=True)
class Match:
    policy: str
    version: str
    statement: int
    effect: str
    sid: str = ""

    def __str__(self) -> str:
        version = f" {self.version}" if self.version else ""
        sid = f" (Sid {self.sid})" if self.sid else ""
        return f"{self.policy}{version} statement {self.statement}{sid}"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    decision: str = "ImplicitDeny"  # "Allow" | "ExplicitDeny" | "ImplicitDeny"
    matches: tuple[Match, ...] = ()


def _scan(policies: Sequence[NamedPolicy], action: str, service: str, request: RequestContext,
          denies: list[Match], allows: list[Match]) -> None:
    resource = request.resource
    for named in policies:
        document = named.document
        for st in document.by_service.get(service, document.any_service):
            if not st.action_matches(action):
                continue
            if st.resources and not st.resource_matches(resource):
                continue
            if st.conditions and not st.conditions_hold(request.lookup):
                continue
            (allows if st.effect == "Allow" else denies).append(Match(named.name, named.version, st.index, st.effect, st.sid))


def _others(matches: Sequence[Match]) -> str:
    n = len(matches) - 1
    return f" and {n} other statement{'s' if n > 1 else ''}" if n else ""


def decide(policies: Sequence[NamedPolicy], request: RequestContext, *, session: Sequence[NamedPolicy] = ()) -> Verdict:
    """Explicit Deny anywhere > (identity Allow and, if there is a session policy, session Allow) >
    implicit deny."""
    action = request.action.lower()
    service = action.partition(":")[0]
    denies: list[Match] = []
    allows: list[Match] = []
    _scan(policies, action, service, request, denies, allows)
    session_allows: list[Match] = []
    if session:
        _scan(session, action, service, request, denies, session_allows)
    if denies:
        return Verdict(False, f"explicitly denied by {denies[0]}{_others(denies)}", "ExplicitDeny", tuple(denies))
    on = f"{request.action} on {request.resource}"
    if not allows:
        return Verdict(False, f"no statement allowed {on}", "ImplicitDeny")
    if session and not session_allows:
        return Verdict(False, f"session policy: no statement allowed {on} (the identity policies allow it by {allows[0]})",
                       "ImplicitDeny")
    also = f", and the session policy by {session_allows[0]}" if session else ""
    return Verdict(True, f"allowed by {allows[0]}{also}", "Allow", tuple(allows + session_allows))


def evaluate(policies: list[tuple[str, Document]], action: str, resource: str, *,
             keys: Mapping[str, object] | None = None) -> Verdict:
    """The older entry point: (name, document) pairs, reasons like "allowed by policy X statement 1"."""
    verdict = decide([NamedPolicy(name, "", document) for name, document in policies],
                     RequestContext(action, resource, keys or {}))
    if verdict.matches:
        first = verdict.matches[0]
        verb = "allowed" if verdict.allowed else "explicitly denied"
        return Verdict(verdict.allowed, f"{verb} by policy {first.policy} statement {first.statement}",
                       verdict.decision, verdict.matches)
    return verdict


def explain_trust(document: Document, kind: str, principal: str, action: str = "sts:AssumeRole", *,
                  keys: Mapping[str, object] | None = None, name: str = "trust policy") -> Verdict:
    """Does this trust policy let ``principal`` (of ``kind`` Service, RAM or Federated) do ``action``?"""
    request = RequestContext(action, "", keys or {})
    lowered = action.lower()
    wanted = principal.lower() if kind == "Service" else principal
    denies: list[Match] = []
    allows: list[Match] = []
    for st in document.statements:
        names = st.principal_matches.get(kind)
        if names is None or not names(wanted) or not st.action_matches(lowered):
            continue
        if st.conditions and not st.conditions_hold(request.lookup):
            continue
        (allows if st.effect == "Allow" else denies).append(Match(name, "", st.index, st.effect, st.sid))
    if denies:
        return Verdict(False, f"explicitly denied by {denies[0]}{_others(denies)}", "ExplicitDeny", tuple(denies))
    if allows:
        return Verdict(True, f"allowed by {allows[0]}", "Allow", tuple(allows))
    return Verdict(False, f"no statement of the {name} allows {kind} {principal} to {action}")


def trusts(document: Document, kind: str, principal: str, action: str = "sts:AssumeRole", *,
           keys: Mapping[str, object] | None = None) -> bool:
    """Does this trust policy allow ``principal`` (of ``kind`` Service/RAM/Federated) to ``action``?"""
    return explain_trust(document, kind, principal, action, keys=keys).allowed


# -- built-in documents ---------------------------------------------------------------------------
ECS_TRUST_POLICY = json.dumps({
    "Statement": [{"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": ["ecs.aliyuncs.com"]}}],
    "Version": "1",
})


def _allow(*actions: str) -> str:
    return json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]})


SYSTEM_POLICIES: dict[str, tuple[str, str]] = {
    "AdministratorAccess": ("Full access to all Alibaba Cloud resources.", _allow("*")),
    "ReadOnlyAccess": ("Read-only access to all resources.", _allow("*:Describe*", "*:List*", "*:Get*")),
    "AliyunECSFullAccess": ("Full access to ECS.", _allow("ecs:*")),
    "AliyunECSReadOnlyAccess": ("Read-only access to ECS.", _allow("ecs:Describe*")),
    "AliyunOSSFullAccess": ("Full access to OSS.", _allow("oss:*")),
    "AliyunOSSReadOnlyAccess": ("Read-only access to OSS.", _allow("oss:Get*", "oss:List*")),
    "AliyunSTSAssumeRoleAccess": ("Permission to call AssumeRole.", _allow("sts:AssumeRole")),
    "AliyunRAMFullAccess": ("Full access to RAM.", _allow("ram:*")),
}
