"""Pure core: the matching primitives of the RAM policy language: glob matchers for actions and
resources (compiled once, no backtracking blow-ups) and the condition operators, as a table.

See :mod:`services.ram.policy` for the language and the decisions made with these.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

MALFORMED = "MalformedPolicyDocument"
TOO_LONG = "InvalidParameter.PolicyDocument.Length"


class PolicyError(ValueError):
    """A document that is not a valid policy: ``str(exc)`` says where and why."""

    def __init__(self, message: str, *, location: str = "", code: str = MALFORMED) -> None:
        super().__init__(message)
        self.message, self.location, self.code = message, location, code

# -- globs ----------------------------------------------------------------------------------
Matcher = Callable[[str], bool]


def _always(_: str) -> bool:
    return True


def _glob_regex(glob: str) -> str:
    """``a*b?c*d`` -> ``a(?>.*?b.c).*d``: each middle segment is committed at its leftmost
    match, which is always enough for globs and keeps the match linear-ish."""
    parts = re.split(r"\*+", glob)
    seg = ["".join("." if c == "?" else re.escape(c) for c in p) for p in parts]
    if len(seg) == 1:
        return seg[0]
    return seg[0] + "".join(f"(?>.*?{s})" for s in seg[1:-1] if s) + ".*" + seg[-1]


def _matcher(patterns: Iterable[str]) -> Matcher:
    """One precompiled test for "does any of these globs match the whole string"."""
    exact: set[str] = set()
    prefixes: list[str] = []
    general: list[str] = []
    for p in patterns:
        stem = p.rstrip("*")
        if p and not stem:
            return _always
        if "*" not in p and "?" not in p:
            exact.add(p)
        elif "*" not in stem and "?" not in stem:
            prefixes.append(stem)
        else:
            general.append(p)
    words, prefix = frozenset(exact), tuple(prefixes)
    if not general:
        if not prefix:
            return words.__contains__
        if not words:
            return lambda s: s.startswith(prefix)
        return lambda s: s in words or s.startswith(prefix)
    full = re.compile("|".join(f"(?:{_glob_regex(g)})" for g in general), re.DOTALL).fullmatch
    if not words and not prefix:
        return lambda s: full(s) is not None
    return lambda s: s in words or s.startswith(prefix) or full(s) is not None


# -- request values -------------------------------------------------------------------------
def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_EPOCH = re.compile(r"\d+(\.\d+)?")


@lru_cache(maxsize=4096)
def _parse_date(text: str) -> float | None:
    """ISO 8601 (``2019-08-12T11:12:00Z``, ``...+08:00``, a bare date) or epoch seconds; no
    offset means UTC."""
    text = text.strip()
    if _EPOCH.fullmatch(text):
        return float(text)
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _date(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return _parse_date(value) if isinstance(value, str) and value else None


def _bool(value: object) -> str | None:
    text = _text(value).lower()
    return text if text in ("true", "false") else None


@lru_cache(maxsize=4096)
def _parse_ip(text: str) -> tuple[int, int] | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return address.version, int(address)


def _ip(value: object) -> tuple[int, int] | None:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value.version, int(value)
    return _parse_ip(value) if isinstance(value, str) else None


# -- condition operators (the table is the data: add a row, get the operator) ---------------------
ValueTest = Callable[[object], "bool | None"]  # None: the request value cannot be compared


def _strings(values: list[object], where: str) -> list[str]:
    return [_text(v) for v in values]


def _numbers(values: list[object], where: str) -> list[float]:
    numbers = [_number(v) for v in values]
    for raw, number in zip(values, numbers):
        if number is None:
            raise PolicyError(f"{where}: {json.dumps(raw)} is not a number", location=where)
    return numbers  # type: ignore[return-value]


def _dates(values: list[object], where: str) -> list[float]:
    dates = [None if isinstance(v, bool) else _date(v) for v in values]
    for raw, date in zip(values, dates):
        if date is None:
            raise PolicyError(f"{where}: {json.dumps(raw)} is not an ISO 8601 date-time or epoch seconds", location=where)
    return dates  # type: ignore[return-value]


def _compare(kind: Callable[[object], float | None], test: str) -> Callable[[list[float]], ValueTest]:
    """Numeric and Date tests; "any policy value" folds into one threshold (v < any x <=> v < max)."""
    def build(values: list[float]) -> ValueTest:
        if test == "eq":
            pool = frozenset(values)
            return lambda v: None if (x := kind(v)) is None else x in pool
        limit = max(values) if test in ("lt", "le") else min(values)
        op = {"lt": float.__lt__, "le": float.__le__, "gt": float.__gt__, "ge": float.__ge__}[test]
        return lambda v: None if (x := kind(v)) is None else op(x, limit)
    return build


def _string_test(mode: str) -> Callable[[list[str]], ValueTest]:
    def build(values: list[str]) -> ValueTest:
        if mode == "like":
            match = _matcher(values)
            return lambda v: match(_text(v))
        if mode == "ignorecase":
            folded = frozenset(x.lower() for x in values)
            return lambda v: _text(v).lower() in folded
        exact = frozenset(values)
        return lambda v: _text(v) in exact
    return build


def _bools(values: list[object], where: str) -> list[str]:
    out = [_bool(v) for v in values]
    for raw, flag in zip(values, out):
        if flag is None:
            raise PolicyError(f'{where}: {json.dumps(raw)} must be "true" or "false"', location=where)
    return out  # type: ignore[return-value]


def _bool_test(values: list[str]) -> ValueTest:
    wanted = frozenset(values)
    return lambda v: None if (x := _bool(v)) is None else x in wanted


Network = tuple[int, int, int]  # version, network address, mask


def _networks(values: list[object], where: str) -> list[Network]:
    out = []
    for raw in values:
        try:
            net = ipaddress.ip_network(_text(raw).strip(), strict=False) if isinstance(raw, str) else None
        except ValueError:
            net = None
        if net is None:
            raise PolicyError(f"{where}: {json.dumps(raw)} is not an IP address or CIDR block", location=where)
        out.append((net.version, int(net.network_address), int(net.netmask)))
    return out


def _ip_test(values: list[Network]) -> ValueTest:
    nets = tuple(values)

    def test(value: object) -> bool | None:
        address = _ip(value)
        if address is None:
            return None
        version, number = address
        return any(v == version and number & mask == net for v, net, mask in nets)
    return test


@dataclass(frozen=True)
class Operator:
    name: str
    values: Callable[[list[object], str], list[Any]]  # validate and convert the policy's values
    build: Callable[[list[Any]], ValueTest]           # one request value -> matches any of them?
    negated: bool = False                             # true when the value matches none of them
    if_exists: bool = False                           # the ...IfExists form: a missing key passes


_BASE = [
    Operator("StringEquals", _strings, _string_test("exact")),
    Operator("StringNotEquals", _strings, _string_test("exact"), negated=True),
    Operator("StringEqualsIgnoreCase", _strings, _string_test("ignorecase")),
    Operator("StringNotEqualsIgnoreCase", _strings, _string_test("ignorecase"), negated=True),
    Operator("StringLike", _strings, _string_test("like")),
    Operator("StringNotLike", _strings, _string_test("like"), negated=True),
    Operator("NumericEquals", _numbers, _compare(_number, "eq")),
    Operator("NumericNotEquals", _numbers, _compare(_number, "eq"), negated=True),
    Operator("NumericLessThan", _numbers, _compare(_number, "lt")),
    Operator("NumericLessThanEquals", _numbers, _compare(_number, "le")),
    Operator("NumericGreaterThan", _numbers, _compare(_number, "gt")),
    Operator("NumericGreaterThanEquals", _numbers, _compare(_number, "ge")),
    Operator("DateEquals", _dates, _compare(_date, "eq")),
    Operator("DateNotEquals", _dates, _compare(_date, "eq"), negated=True),
    Operator("DateLessThan", _dates, _compare(_date, "lt")),
    Operator("DateLessThanEquals", _dates, _compare(_date, "le")),
    Operator("DateGreaterThan", _dates, _compare(_date, "gt")),
    Operator("DateGreaterThanEquals", _dates, _compare(_date, "ge")),
    Operator("Bool", _bools, _bool_test),
    Operator("IpAddress", _networks, _ip_test),
    Operator("NotIpAddress", _networks, _ip_test, negated=True),
]
# Which operators take the IfExists suffix. Alibaba's pages reachable here do not list them;
# AWS allows it on every operator but Null (which RAM does not have), so: all of them.
IF_EXISTS = frozenset(op.name for op in _BASE)
OPERATORS: dict[str, Operator] = {op.name: op for op in _BASE} | {
    f"{op.name}IfExists": Operator(f"{op.name}IfExists", op.values, op.build, op.negated, True)
    for op in _BASE if op.name in IF_EXISTS
}
_BY_LOWER = {name.lower(): name for name in OPERATORS}


def _key_test(match: ValueTest, negated: bool) -> Callable[[tuple[object, ...]], bool]:
    """Any request value satisfies it; for a negated operator: matches none of the policy's values."""
    if negated:
        def test_none(values: tuple[object, ...]) -> bool:
            for value in values:
                if match(value) is False:
                    return True
            return False
        return test_none

    def test_any(values: tuple[object, ...]) -> bool:
        for value in values:
            if match(value):
                return True
        return False
    return test_any


@dataclass(frozen=True)
class Condition:
    operator: str  # as written: "StringEqualsIfExists"
    key: str  # as written: "acs:SourceIp"
    values: tuple[object, ...]  # as written
    if_exists: bool
    test: Callable[[tuple[object, ...]], bool] = field(repr=False, compare=False)
    name: str = field(default="", repr=False, compare=False)  # the key as looked up: lower-cased
