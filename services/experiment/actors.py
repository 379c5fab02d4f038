"""Pure core: the two actors a simulated experiment adds to the cluster: the operator and the application.

* :class:`Operator` (node ``gateway``): what the gateway sends after it authenticated the account's
  root: the setup (CreateRole, AttachPolicyToRole, RunInstances) and the timeline's control
  actions. Each call is a :class:`~services.runtime.effects.Request` whose answer goes to a
  callback ``then(body, now) -> effects``.
* :class:`Application` (node ``oss``): the ``ramsim app`` workload. A call takes the credential the
  instance's application holds (read from its metadata view: it re-reads when it has none or its
  own clock says the one it has is within :data:`STALE` of expiring, as the credentials SDK does),
  signs the request, and goes through the real authorization path: STS ``Authenticate`` (the
  token opened, its expiry and signature checked) then RAM ``Authorize`` (the role's policies
  now). A detached policy is denied, an expired token is refused, a timeout is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from protocol.errors import Error
from protocol.messages import common, ram
from protocol.messages.common import Principal
from protocol.times import parse_iso
from services.runtime import signing
from services.runtime.effects import Effect, Request

Then = Callable[[Any, float], list[Effect]]
STALE = 180.0  # seconds before its Expiration that the SDK reads a credential again
CREDENTIALS = "/latest/meta-data/ram/security-credentials/"


def root(account_id: str) -> Principal:
    return Principal(identity_type="Account", account_id=account_id, arn=f"acs:ram::{account_id}:root", principal_id=account_id)


class Operator:
    """Sends API commands as the account's root (the gateway's role: it vouches for the caller)."""

    node_id = "gateway"

    def __init__(self, account_id: str) -> None:
        self.caller = root(account_id)

    def subscriptions(self) -> list[str]:
        return []

    def call(self, dest: str, body: Any, then: Then) -> list[Effect]:
        body.caller = self.caller
        return [Request(dest, body, then)]

    def handle(self, msg: Any, now: float) -> list[Effect]:
        return []

    def on_reply(self, context: Then, body: Any, now: float) -> list[Effect]:
        return context(body, now)

    def on_timer(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self) -> float | None:
        return None


@dataclass
class Held:
    """The credential an instance's application holds (what the SDK cached)."""

    role: str
    access_key_id: str
    secret: str
    token: str
    expiration: float


@dataclass
class CallState:
    instance_id: str
    operation: str
    started: float
    done: Callable[[str, str, float], None]  # (outcome, code, now)
    held: Held


def parse_credential(body: str, role: str) -> Held | None:
    try:
        doc = msgspec.json.decode(body)  # (json.loads, faster: a probe parses every credential it sees)
        return Held(role, doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"], parse_iso(doc["Expiration"]))
    except (ValueError, KeyError, TypeError):
        return None


class Application:
    """The workload's calls (OSS PutObject/GetObject), decided by STS and RAM."""

    node_id = "oss"

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.held: dict[str, Held] = {}

    def subscriptions(self) -> list[str]:
        return []

    def credential(self, instance_id: str, read: Callable[[str], tuple[int, str]], instance_now: float) -> Held | None:
        """The credential to sign with: the one held, or a fresh read of the metadata view
        (``read(path) -> (status, body)``; status 0: no answer)."""
        held = self.held.get(instance_id)
        if held is not None and instance_now < held.expiration - STALE:
            return held
        status, listing = read(CREDENTIALS)
        if status == 200 and listing:
            role = listing.split("\n")[0]
            status, body = read(CREDENTIALS + role)
            fresh = parse_credential(body, role) if status == 200 else None
            if fresh is not None:
                self.held[instance_id] = fresh
                return fresh
        if status == 404:
            self.held.pop(instance_id, None)  # no role: the SDK has nothing to sign with
            return None
        return held  # no answer: keep using what it has

    def call(self, instance_id: str, operation: str, held: Held, now: float, done: Callable[[str, str, float], None]) -> list[Effect]:
        string_to_sign = f"{operation}\n{instance_id}\n{now:.3f}"
        ask = common.Authenticate(access_key_id=held.access_key_id, signature=signing.hmac_sha1(held.secret, string_to_sign),
                                  string_to_sign=string_to_sign, security_token=held.token)
        return [Request("sts", ask, CallState(instance_id, operation, now, done, held))]

    def on_reply(self, context: Any, body: Any, now: float) -> list[Effect]:
        if isinstance(context, tuple):  # the Authorize answer
            state, _ = context
            if isinstance(body, ram.AuthorizeOk):
                allowed = all(d.allowed for d in body.decisions)
                state.done("ok" if allowed else "denied", "" if allowed else "AccessDenied", now)
            else:
                state.done("error", body.code if isinstance(body, Error) else type(body).__name__, now)
            return []
        state = context
        if isinstance(body, common.AuthenticateOk):
            operation = state.operation
            check = ram.Check(action=operation, resource=f"acs:oss:*:{self.account_id}:app-bucket/{state.instance_id}")
            return [Request("ram", ram.Authorize(principal=body.principal, checks=[check]), (state, operation))]
        code = body.code if isinstance(body, Error) else type(body).__name__
        state.done("expired" if code == "InvalidSecurityToken.Expired" else "error", code, now)
        return []

    def handle(self, msg: Any, now: float) -> list[Effect]:
        return []

    def on_timer(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self) -> float | None:
        return None
