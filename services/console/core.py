"""Pure core: what the web console shows, built from API answers: sign-in sessions, masked
credentials and their rotation history, pages of instances, health, and why a call was denied.

Nothing here reads a clock or a random source: times and session tokens are handed in. The
shell (:mod:`services.console.app`) makes the signed calls and serves the page.

A secret never leaves this module unmasked: a credential is shown as its AccessKeyId's first
:data:`KEY_PREFIX` characters and ``…``; its AccessKeySecret and SecurityToken are dropped.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from protocol.times import iso, parse_iso
from protocol.trace import trace_id_of

KEY_PREFIX = 8          # characters of an AccessKeyId the console shows ("STS.NUxy…")
HISTORY = 20            # rotations remembered per instance
TRACKED = 2000          # instances whose history is kept (least recently updated dropped first)
SESSION_SECONDS = 8 * 3600
MAX_PAGE_SIZE = 100     # DescribeInstances' own limit
COOKIE = "ramsim_console"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # the Host a browser sends to the console's loopback listener


class Refused(Exception):
    """An API call answered with an error; shown on the page with RAM's explanation."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(body.get("Code", ""))
        self.status, self.body = status, body


# -- sign-in ------------------------------------------------------------------------------------

def credential_matches(given_id: str, given_secret: str, expected_id: str, expected_secret: str) -> bool:
    """The operator's AccessKey pair, compared in constant time (an empty expected pair never matches)."""
    if not expected_id or not expected_secret:
        return False
    same_id = hmac.compare_digest(given_id.encode(), expected_id.encode())
    same_secret = hmac.compare_digest(given_secret.encode(), expected_secret.encode())
    return same_id and same_secret


@dataclass
class Sessions:
    """Signed-in browser sessions: token -> expiry (real seconds). Tokens come from the shell's
    random source; a session lasts :data:`SESSION_SECONDS`."""

    lifetime: float = SESSION_SECONDS
    limit: int = 100
    expiry: dict[str, float] = field(default_factory=dict)

    def open(self, token: str, now: float) -> str:
        self.prune(now)
        while len(self.expiry) >= self.limit:  # the oldest session goes first
            self.expiry.pop(min(self.expiry, key=self.expiry.__getitem__))
        self.expiry[token] = now + self.lifetime
        return token

    def valid(self, token: str | None, now: float) -> bool:
        if not token:
            return False
        found = next((t for t in self.expiry if hmac.compare_digest(t.encode(), token.encode())), None)
        return found is not None and self.expiry[found] > now

    def close(self, token: str | None) -> None:
        if token:
            self.expiry.pop(token, None)

    def prune(self, now: float) -> None:
        for token in [t for t, until in self.expiry.items() if until <= now]:
            del self.expiry[token]


# -- credentials ----------------------------------------------------------------------------------

def mask(access_key_id: str) -> str:
    """An AccessKeyId as the console shows it: its first characters only."""
    if not access_key_id:
        return ""
    return access_key_id[:KEY_PREFIX] + "…"


def credential_view(document: Mapping[str, Any], sim_now: float, time_scale: float) -> dict[str, Any]:
    """A metadata credential document (``security-credentials/<role>``) as shown: masked key,
    Expiration and LastUpdated, and the time left in simulated and in real seconds."""
    try:
        expiration = parse_iso(str(document.get("Expiration", "")))
    except ValueError:
        expiration = 0.0
    left = max(0.0, expiration - sim_now) if expiration else 0.0
    return {"AccessKeyId": mask(str(document.get("AccessKeyId", ""))), "Expiration": document.get("Expiration", ""),
            "LastUpdated": document.get("LastUpdated", ""), "Code": document.get("Code", ""),
            "SecondsLeft": round(left, 1), "RealSecondsLeft": round(left / time_scale, 2) if time_scale > 0 else 0.0}


@dataclass
class Rotations:
    """Each instance's credential history, newest last: masked AccessKeyIds with when they were
    first seen, their expiry, and where from (``metadata`` read, ``event`` on the bus)."""

    per_instance: int = HISTORY
    tracked: int = TRACKED
    seen: "OrderedDict[str, deque[dict[str, Any]]]" = field(default_factory=OrderedDict)

    def record(self, instance_id: str, access_key_id: str, expiration: str, seen_at: str, source: str, role: str = "") -> bool:
        """Remember a credential of ``instance_id``; False if it is the one already newest."""
        if not instance_id or not access_key_id:
            return False
        masked = mask(access_key_id)
        history = self.seen.get(instance_id)
        if history is None:
            history = self.seen[instance_id] = deque(maxlen=self.per_instance)
            while len(self.seen) > self.tracked:
                self.seen.popitem(last=False)
        self.seen.move_to_end(instance_id)
        if any(entry["AccessKeyId"] == masked for entry in history):
            return False
        history.append({"AccessKeyId": masked, "Expiration": expiration, "SeenAt": seen_at, "Source": source, "RoleName": role})
        return True

    def history(self, instance_id: str) -> list[dict[str, Any]]:
        return list(self.seen.get(instance_id, ()))


# -- pages and lists ------------------------------------------------------------------------------

def page_request(page: str | None, size: str | None) -> tuple[int, int]:
    """PageNumber and PageSize from the page's query, clamped to what DescribeInstances takes."""
    def number(raw: str | None, default: int) -> int:
        try:
            return int(raw) if raw else default
        except ValueError:
            return default
    return max(1, number(page, 1)), min(MAX_PAGE_SIZE, max(1, number(size, 20)))


def instances_page(described: Mapping[str, Any], roles: Iterable[Mapping[str, Any]], endpoints: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One page of instances: DescribeInstances' page joined with each instance's role
    (DescribeInstanceRamRole) and its metadata view (DescribeInstanceMetadataEndpoints)."""
    role_of = {r.get("InstanceId", ""): r.get("RamRoleName", "") for r in roles}
    listed = described.get("Instances", {}).get("Instance", [])
    total, size = int(described.get("TotalCount", 0)), int(described.get("PageSize", 0)) or 1
    rows = [{"InstanceId": i.get("InstanceId", ""), "InstanceName": i.get("InstanceName", ""), "Status": i.get("Status", ""),
             "ZoneId": i.get("ZoneId", ""), "PrivateIp": _private_ip(i), "RamRoleName": role_of.get(i.get("InstanceId", ""), ""),
             "HostId": endpoints.get(i.get("InstanceId", ""), {}).get("HostId", "")} for i in listed]
    return {"Instances": rows, "TotalCount": total, "PageNumber": int(described.get("PageNumber", 1)), "PageSize": size,
            "Pages": max(1, -(-total // size))}


def _private_ip(instance: Mapping[str, Any]) -> str:
    addresses = instance.get("VpcAttributes", {}).get("PrivateIpAddress", {}).get("IpAddress", [])
    return addresses[0] if addresses else ""


def role_row(role: Mapping[str, Any], policies: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"RoleName": role.get("RoleName", ""), "Arn": role.get("Arn", ""), "Description": role.get("Description", ""),
            "MaxSessionDuration": role.get("MaxSessionDuration", 0),
            "Policies": [{"PolicyName": p.get("PolicyName", ""), "PolicyType": p.get("PolicyType", "")} for p in policies]}


# -- health ---------------------------------------------------------------------------------------

def process_state(stat: str | None) -> str:
    """``running``, ``paused`` (stopped by a signal: a pause fault) or ``down``, from /proc/<pid>/stat."""
    if not stat:
        return "down"
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return {"T": "paused", "t": "paused", "Z": "down", "X": "down"}.get(state, "running" if state else "down")


def health_row(name: str, state: str, probe: tuple[bool, float, str] | None) -> dict[str, Any]:
    """A service's health: its process state, and the last probe through the APIs (ok, latency, what)."""
    ok, latency, detail = probe if probe is not None else (state == "running", 0.0, "")
    healthy = state == "running" and ok
    return {"Name": name, "Process": state, "Healthy": healthy, "LatencyMs": round(latency * 1000, 1), "Detail": detail,
            "Status": "healthy" if healthy else ("paused" if state == "paused" else ("down" if state == "down" else "unhealthy"))}


# -- explain --------------------------------------------------------------------------------------

def explain_error(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """An error answer as the console shows it: Code and Message, and for a denial which policy
    statement (or none: an implicit deny) decided it, from RAM's AccessDeniedDetail."""
    detail = body.get("AccessDeniedDetail") or {}
    shown: dict[str, Any] = {"Status": status, "Code": body.get("Code", "Unknown"), "Message": body.get("Message", "")}
    if detail:
        shown["Denied"] = {"Action": detail.get("AuthAction", ""), "Principal": detail.get("AuthPrincipalDisplayName", ""),
                           "PrincipalType": detail.get("AuthPrincipalType", ""), "Kind": detail.get("NoPermissionType", ""),
                           "Reason": detail.get("EncodedDiagnosticMessage", "")}
    return shown


def explain_decision(answer: Mapping[str, Any]) -> dict[str, Any]:
    """SimulatePrincipalPolicy's answer: allowed or not, the deciding statements, and the reason."""
    decision = answer.get("Decision", {})
    return {"Allowed": bool(decision.get("Allowed")), "Decision": decision.get("Decision", ""), "Reason": decision.get("Reason", ""),
            "Matches": [{"Policy": m.get("Policy", ""), "Version": m.get("Version", ""), "Statement": m.get("Statement", 0),
                         "Effect": m.get("Effect", ""), "Sid": m.get("Sid", "")} for m in decision.get("Matches", [])]}


# -- the live feed --------------------------------------------------------------------------------

READS = ("Describe", "List", "Get", "Simulate")  # the console's own reads: their traces stay off the feed
FEED_RATE = 40.0   # messages a second drawn at most (a refresh storm of 10,000 instances is summarised)
FEED_BURST = 80


def is_read(action: str) -> bool:
    return action.startswith(READS)


def trace_of(request_id: str) -> str:
    """The trace id the gateway gives the messages of the call it answered with ``request_id``."""
    return trace_id_of(request_id)


def feed_item(event: Mapping[str, Any]) -> dict[str, Any]:
    """A :class:`protocol.trace.TraceEvent` (as builtins) as the page draws it: an arrow from
    ``Src`` to ``Dest`` (``events`` for a broadcast), its type, a short summary, its key fields
    with every AccessKeyId masked, and for a denial RAM's reason."""
    fields = {k: (mask(v) if k.endswith("AccessKeyId") else v) for k, v in dict(event.get("fields", {})).items()}
    kind = str(event.get("type", ""))
    summary = " ".join(str(fields[k]) for k in ("Code", "InstanceId", "RamRoleName", "RoleName", "PolicyName", "UserName")
                       if fields.get(k))[:60]
    item: dict[str, Any] = {"Kind": "message", "Src": str(event.get("src", "")), "Type": kind,
                            "Dest": "events" if event.get("dest") == "*" else str(event.get("dest", "")),
                            "TraceId": str(event.get("trace_id", "")), "At": event.get("time", 0.0), "Summary": summary,
                            "Fields": fields, "Event": event.get("dest") == "*", "Error": kind == "Error"}
    if kind == "Error" and (fields.get("AccessDeniedDetail.NoPermissionType") or "Denied" in str(fields.get("Code", ""))
                            or "Forbidden" in str(fields.get("Code", ""))):
        item["Denied"] = {"Code": fields.get("Code", ""), "Action": fields.get("AccessDeniedDetail.AuthAction", ""),
                          "Kind": fields.get("AccessDeniedDetail.NoPermissionType", ""),
                          "Reason": fields.get("AccessDeniedDetail.EncodedDiagnosticMessage", "") or fields.get("Message", "")}
    return item


def rotation_of(item: Mapping[str, Any]) -> tuple[str, str, str, str] | None:
    """(instance id, AccessKeyId, Expiration, role) of an ``InstanceCredentialsRefreshed`` event, else None."""
    if item.get("Type") != "InstanceCredentialsRefreshed":
        return None
    fields = item.get("Fields", {})
    expiration = str(fields.get("Expiration", ""))
    try:
        expiration = iso(float(expiration))
    except ValueError:
        pass
    return str(fields.get("InstanceId", "")), str(fields.get("AccessKeyId", "")), expiration, str(fields.get("RamRoleName", ""))


@dataclass
class Throttle:
    """A token bucket: at most ``rate`` a second, ``burst`` at once; what it refuses is counted."""

    rate: float = FEED_RATE
    burst: float = FEED_BURST
    tokens: float = FEED_BURST
    last: float = 0.0
    refused: int = 0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False
