"""Pure core: RAM policy documents, parsed once into matchers and evaluated.

Skeleton scope: ``Effect``, ``Action``/``NotAction`` (case-insensitive), ``Resource`` and, in
trust policies, ``Principal``; ``*`` and ``?`` wildcards. Explicit Deny beats Allow; no Allow is
an implicit deny. (Conditions and the full language are their own issue.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_DOCUMENT_CHARS = 6144


class PolicyError(ValueError):
    """A document that is not a valid policy; the message says precisely why."""


def _as_list(value: Any, what: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{what} must be a non-empty string or list of strings")
    return values


def _pattern(glob: str, *, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


@dataclass(frozen=True)
class Statement:
    index: int
    effect: str
    actions: tuple[re.Pattern[str], ...]
    not_action: bool
    resources: tuple[re.Pattern[str], ...]
    principals: dict[str, tuple[str, ...]]

    def matches(self, action: str, resource: str) -> bool:
        hit = any(p.fullmatch(action) for p in self.actions)
        if hit == self.not_action:
            return False
        return not self.resources or any(p.fullmatch(resource) for p in self.resources)


@dataclass(frozen=True)
class Document:
    statements: tuple[Statement, ...]
    text: str


def parse(text: str, *, trust: bool = False) -> Document:
    """Validate and compile a policy document (``trust``: an AssumeRolePolicyDocument)."""
    if not text or len(text) > MAX_DOCUMENT_CHARS:
        raise PolicyError(f"the document must be 1-{MAX_DOCUMENT_CHARS} characters")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise PolicyError("the document must be a JSON object")
    if doc.get("Version") != "1":
        raise PolicyError('"Version" must be "1"')
    raw = doc.get("Statement")
    raw_list = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raw_list, list) or not raw_list:
        raise PolicyError('"Statement" must be a non-empty list')
    return Document(tuple(_statement(i, s, trust) for i, s in enumerate(raw_list)), text)


def _statement(index: int, raw: Any, trust: bool) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f'{where}.Effect must be "Allow" or "Deny", got {effect!r}')
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError(f"{where} needs exactly one of Action and NotAction")
    key = "Action" if "Action" in raw else "NotAction"
    actions = _as_list(raw[key], f"{where}.{key}")
    for action in actions:
        if action != "*" and ":" not in action:
            raise PolicyError(f'{where}.{key} "{action}" must look like "service:Action" or "*"')
    principals: dict[str, tuple[str, ...]] = {}
    if trust:
        principal = raw.get("Principal")
        if not isinstance(principal, dict) or not principal:
            raise PolicyError(f"{where}.Principal must name Service, RAM or Federated principals")
        for kind, values in principal.items():
            if kind not in ("Service", "RAM", "Federated"):
                raise PolicyError(f"{where}.Principal has unknown kind {kind!r}")
            principals[kind] = tuple(_as_list(values, f"{where}.Principal.{kind}"))
        resources: list[str] = []
    else:
        resources = _as_list(raw.get("Resource"), f"{where}.Resource")
        for resource in resources:
            if resource != "*" and not resource.startswith("acs:"):
                raise PolicyError(f'{where}.Resource "{resource}" must be "*" or an ARN acs:<service>:<region>:<account>:<id>')
    return Statement(
        index=index, effect=effect, not_action=key == "NotAction",
        actions=tuple(_pattern(a, ignore_case=True) for a in actions),
        resources=tuple(_pattern(r, ignore_case=False) for r in resources),
        principals=principals,
    )


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def evaluate(policies: list[tuple[str, Document]], action: str, resource: str) -> Verdict:
    """Explicit Deny > Allow > implicit deny over named documents."""
    allow: str | None = None
    for name, document in policies:
        for statement in document.statements:
            if statement.matches(action, resource):
                where = f"policy {name} statement {statement.index}"
                if statement.effect == "Deny":
                    return Verdict(False, f"explicitly denied by {where}")
                allow = allow or where
    if allow:
        return Verdict(True, f"allowed by {allow}")
    return Verdict(False, f"no statement allowed {action} on {resource}")


def trusts(document: Document, kind: str, principal: str, action: str = "sts:AssumeRole") -> bool:
    """Does this trust policy allow ``principal`` (of ``kind`` Service/RAM) to ``action``?"""
    allowed = False
    for statement in document.statements:
        names = statement.principals.get(kind, ())
        if not any(_pattern(n, ignore_case=kind == "Service").fullmatch(principal) for n in names):
            continue
        if statement.matches(action, ""):
            if statement.effect == "Deny":
                return False
            allowed = True
    return allowed


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
