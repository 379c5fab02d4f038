"""Pure core: STS. AssumeRole for the ECS service principal (instance roles) and for RAM
principals; verification of requests signed with STS credentials; GetCallerIdentity.

AssumeRole asks RAM for the role (and, for RAM principals, whether their identity policies
allow ``sts:AssumeRole``), checks the role's trust policy, then mints an ``STS.`` AccessKeyId,
a secret, a sealed SecurityToken and an Expiration. The token *is* the session (see
:mod:`services.sts.tokens`): STS keeps no session table and no secret, so a session stays
verifiable until its own expiry, whatever happens to the role, and across STS restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from protocol import errors, ids, topics
from protocol.envelope import Envelope
from protocol.errors import Error, error
from protocol.messages import common, ram, sts as m
from protocol.times import iso
from services.ram import explain, policy
from services.runtime import signing
from services.runtime.effects import Effect, Log, Publish, Reply, Request, dispatch
from services.sts import tokens

NAME = "sts"
ECS_SERVICE = "ecs.aliyuncs.com"
ROLE_ARN = re.compile(r"^acs:ram::(\d+):role/([a-zA-Z0-9.\-]{1,64})\Z")  # \Z: "$" would let a trailing newline in
SESSION_NAME = re.compile(r"^[a-zA-Z0-9.@\-_]{2,64}\Z")
MIN_DURATION = 900
MAX_POLICY = 2048
NO_PERMISSION = "You are not authorized to do this action. You should be authorized by RAM."
MAX_BATCH = 100  # AssumeRoles: as many as one AttachInstanceRamRole names


@dataclass
class Assume:
    """An AssumeRole waiting for RAM: first the role, then (RAM callers) the decision."""

    request: Envelope
    role: ram.Role | None = None


@dataclass
class Batch:
    """An AssumeRoles waiting for RAM: its answers so far, and how many role lookups are out."""

    request: Envelope
    results: list[m.AssumeRoleResult]
    waiting: int = 0


@dataclass
class BatchRole:
    """One role lookup of a :class:`Batch`: the positions of the requests that assume it."""

    batch: Batch
    positions: list[int]


@dataclass
class RoleLookup:
    """The one GetRole in flight for ``role_name``; what waits for it is in ``StsCore._lookups``."""

    role_name: str


class StsCore:
    node_id = NAME
    REPLIES_FROM = ("ram",)  # the only node it asks (GetRole, Authorize): as a shared worker it hears every reply from it

    def __init__(self, *, account_id: str, signing_key: bytes, entropy: Callable[[int], bytes],
                 key_rotation: float = 21600.0) -> None:
        self.account_id = account_id
        self.keys = tokens.KeyRing(signing_key, key_rotation)
        self._entropy = entropy
        self._opened: dict[str, tuple[int, tokens.Claims]] = {}  # token -> (its key epoch, its claims)
        self._trusted: dict[tuple[str, str], bool] = {}  # (trust policy, service) -> trusted (a pure function's answers)
        self._lookups: dict[str, list[Assume | BatchRole]] = {}  # role name -> what waits for its GetRole in flight
        self._table = {
            m.AssumeRole: self._assume_role,
            m.AssumeRoles: self._assume_roles,
            m.GetCallerIdentity: self._get_caller_identity,
            common.Authenticate: self._authenticate,
        }

    def subscriptions(self) -> list[str]:
        return []

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        return dispatch(self._table, msg, now, product=NAME)

    def on_timer(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self) -> float | None:
        return None  # keys rotate by epoch: nothing to do at any particular time

    # -- AssumeRole -----------------------------------------------------------------------
    def _assume_role(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.AssumeRole)
        problem = self._validate(body)
        if problem is None and body.caller is not None and body.caller.identity_type == "Service" \
                and (msg.src != "ecs" or body.caller.arn != ECS_SERVICE):
            problem = errors.no_permission(f"{msg.src} may not act as service principal {body.caller.arn}.")
        if problem is not None:
            return [Reply(msg, problem)]
        role_name = ROLE_ARN.match(body.role_arn).group(2)  # type: ignore[union-attr]
        return self._get_role(role_name, Assume(msg), msg.trace_id)

    def _get_role(self, role_name: str, waiter: Assume | BatchRole, trace_id: str) -> list[Effect]:
        """Ask RAM for ``role_name`` once however many requests want it at the same moment: a
        refresh of 10,000 instances due together is one GetRole, not 10,000 queued at RAM (whose
        timeouts and retries once kept the fleet from refreshing at all). The waiters all get
        that one answer, as if they had come one after another."""
        waiting = self._lookups.get(role_name)
        if waiting is not None:
            waiting.append(waiter)
            return []
        self._lookups[role_name] = [waiter]
        return [Request("ram", ram.GetRole(role_name=role_name, caller=self._service_principal()), RoleLookup(role_name),
                        trace_id=trace_id)]

    def _validate(self, body: m.AssumeRole) -> Error | None:
        if body.caller is None:
            return errors.no_permission("The request is not authenticated.")
        if body.caller.identity_type == "Account":
            return error("NoPermission", "Roles may not be assumed by an Alibaba Cloud account; use a RAM user.", 403)
        found = ROLE_ARN.match(body.role_arn)
        if found is None:
            return error("InvalidParameter.RoleArn", "The parameter RoleArn is wrongly formed.")
        if found.group(1) != self.account_id:
            return error("EntityNotExist.Role", "The specified Role not exists.", 404)
        if not SESSION_NAME.match(body.role_session_name):
            return error("InvalidParameter.RoleSessionName", "The parameter RoleSessionName is wrongly formed.")
        if body.duration_seconds < MIN_DURATION:
            return error("InvalidParameter.DurationSeconds", f"DurationSeconds must be at least {MIN_DURATION}.")
        if len(body.policy) > MAX_POLICY:
            return error("InvalidParameter.PolicySize", f"The size of Policy must be smaller than {MAX_POLICY} characters.")
        if body.policy:
            try:
                policy.parse(body.policy, max_chars=MAX_POLICY)
            except policy.PolicyError as exc:
                return error("InvalidParameter.PolicyGrammar", f"The parameter Policy has not passed grammar check: {exc}")
        return None

    def _assume_roles(self, msg: Envelope, now: float) -> list[Effect]:
        """ECS's batch: each request checked as AssumeRole checks it, one GetRole per distinct
        role, one reply with every answer in order (and a RoleAssumed event per credential)."""
        body = msg.body
        assert isinstance(body, m.AssumeRoles)
        if msg.src != "ecs" or len(body.requests) > MAX_BATCH:
            return [Reply(msg, errors.no_permission(f"{msg.src} may not send AssumeRoles (ECS only, at most {MAX_BATCH})."))]
        batch = Batch(msg, [m.AssumeRoleResult() for _ in body.requests])
        by_role: dict[str, list[int]] = {}
        for n, assume in enumerate(body.requests):
            problem = self._validate(assume)
            if problem is None and (assume.caller is None or assume.caller.identity_type != "Service" or assume.caller.arn != ECS_SERVICE):
                problem = errors.no_permission("AssumeRoles is for the ECS service principal only.")
            if problem is not None:
                batch.results[n] = m.AssumeRoleResult(error=problem)
            else:
                by_role.setdefault(ROLE_ARN.match(assume.role_arn).group(2), []).append(n)  # type: ignore[union-attr]
        if not by_role:
            return [Reply(msg, m.AssumeRolesOk(results=batch.results))]
        batch.waiting = len(by_role)
        return [e for name, positions in by_role.items() for e in self._get_role(name, BatchRole(batch, positions), msg.trace_id)]

    def _batch_role(self, context: BatchRole, body: object, now: float) -> list[Effect]:
        batch = context.batch
        requests = batch.request.body
        assert isinstance(requests, m.AssumeRoles)
        effects: list[Effect] = []
        trust = policy.parse(body.role.assume_role_policy_document, trust=True) if isinstance(body, ram.GetRoleOk) else None
        for n in context.positions:
            if isinstance(body, Error):
                batch.results[n] = m.AssumeRoleResult(error=body)
            elif not isinstance(body, ram.GetRoleOk):
                batch.results[n] = m.AssumeRoleResult(error=errors.internal_error())
            elif trust is None or not policy.trusts(trust, "Service", ECS_SERVICE):
                batch.results[n] = m.AssumeRoleResult(error=errors.no_permission(f"The role does not trust {ECS_SERVICE}."))
            else:
                answer, event = self._minted(requests.requests[n], body.role, now)
                batch.results[n] = m.AssumeRoleResult(ok=answer) if isinstance(answer, m.AssumeRoleOk) else m.AssumeRoleResult(error=answer)
                if event is not None:
                    effects.append(event)
        batch.waiting -= 1
        if batch.waiting == 0:
            effects.append(Reply(batch.request, m.AssumeRolesOk(results=batch.results)))
        return effects

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        if isinstance(context, RoleLookup):  # the role's one GetRole answered (or timed out): every waiter's answer
            return [e for waiter in self._lookups.pop(context.role_name, []) for e in self.on_reply(waiter, body, now)]
        if isinstance(context, BatchRole):
            return self._batch_role(context, body, now)
        assert isinstance(context, Assume)
        request = context.request
        assume = request.body
        assert isinstance(assume, m.AssumeRole) and assume.caller is not None
        if isinstance(body, Error):
            return [Reply(request, body)]
        if isinstance(body, ram.GetRoleOk):
            context.role = body.role
            trust = policy.parse(body.role.assume_role_policy_document, trust=True)
            caller = assume.caller
            if caller.identity_type == "Service":
                if not self._service_trusted(body.role.assume_role_policy_document, trust, caller.arn):
                    return [Reply(request, errors.no_permission(f"The role does not trust {caller.arn}."))]
            else:
                # the caller matches statements naming it or its account's root; a Deny in either wins
                verdicts = [policy.explain_trust(trust, "RAM", name) for name in (caller.arn, f"acs:ram::{caller.account_id}:root")]
                if any(v.decision == "ExplicitDeny" for v in verdicts) or not any(v.allowed for v in verdicts):
                    return [Reply(request, errors.no_permission(f"The role's trust policy does not allow {caller.arn}."))]
                check = ram.Check(action="sts:AssumeRole", resource=body.role.arn, context=assume.request_context)
                return [Request("ram", ram.Authorize(principal=caller, checks=[check]), context, trace_id=request.trace_id)]
            return self._mint(context, now)
        if isinstance(body, ram.AuthorizeOk):
            decision = body.decisions[0]
            if not decision.allowed:  # Alibaba's AccessDeniedDetail, with RAM's explanation of what decided
                return [Reply(request, explain.denied("NoPermission", NO_PERMISSION, 403, assume.caller, "sts:AssumeRole", decision))]
            return self._mint(context, now)
        return [Reply(request, errors.internal_error()), Log("unexpected_reply", "error", {"type": type(body).__name__})]

    def _service_trusted(self, text: str, trust: policy.Document, service: str) -> bool:
        """policy.trusts(trust, "Service", service), remembered per (document, service): ECS asks
        once per instance and refresh, always with the same few trust policies."""
        key = (text, service)
        found = self._trusted.get(key)
        if found is None:
            if len(self._trusted) >= 1024:
                self._trusted.clear()
            found = self._trusted[key] = policy.trusts(trust, "Service", service)
        return found

    def _mint(self, context: Assume, now: float) -> list[Effect]:
        assume = context.request.body
        role = context.role
        assert isinstance(assume, m.AssumeRole) and role is not None
        answer, event = self._minted(assume, role, now)
        return [Reply(context.request, answer), *([event] if event is not None else [])]

    def _minted(self, assume: m.AssumeRole, role: ram.Role, now: float) -> tuple[m.AssumeRoleOk | Error, Publish | None]:
        """A new session of ``role`` for ``assume`` (whose caller was checked), and its event."""
        # ECS obtains instance credentials as a service (real ECS issues 6 h ones); RAM callers
        # are bounded by the role's MaxSessionDuration.
        service = assume.caller is not None and assume.caller.identity_type == "Service"
        max_duration = 43200 if service else max(role.max_session_duration, 3600)
        if assume.duration_seconds > max_duration:
            return error("InvalidParameter.DurationSeconds", f"The Min/Max value of DurationSeconds is {MIN_DURATION}/{max_duration} seconds."), None
        expires_at = float(int(now + assume.duration_seconds))  # Expiration has whole seconds; so does the session
        claims = tokens.Claims(
            access_key_id=ids.access_key_id(self._entropy(24), sts=True), access_key_secret=ids.secret(self._entropy(30)),
            account_id=self.account_id, role_arn=role.arn, role_name=role.role_name, role_id=role.role_id,
            session_name=assume.role_session_name, expires_at=expires_at, session_policy=assume.policy,
            policy_digest=tokens.policy_digest(assume.policy))
        token = tokens.seal(self.keys, claims, now, self._entropy(12))
        access_key_id = claims.access_key_id
        reply = m.AssumeRoleOk(
            credentials=m.Credentials(access_key_id=access_key_id, access_key_secret=claims.access_key_secret,
                                      security_token=token, expiration=iso(expires_at)),
            assumed_role_user=m.AssumedRoleUser(arn=f"{role.arn}/{assume.role_session_name}",
                                                assumed_role_id=f"{role.role_id}:{assume.role_session_name}"))
        event = m.RoleAssumed(access_key_id=access_key_id, role_arn=role.arn, session_name=assume.role_session_name,
                              expires_at=expires_at)
        return reply, Publish(topics.event(NAME, "RoleAssumed"), event)

    # -- verification ---------------------------------------------------------------------
    def _authenticate(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, common.Authenticate)
        claims = self._open(body.security_token, now) if body.security_token else None
        if not body.security_token:
            problem = error("MissingSecurityToken", "The SecurityToken is required for STS credentials.")
        elif claims is None and tokens.outlived(self.keys, body.security_token, now):
            problem = error("InvalidSecurityToken.Expired", "The security token you provided has expired.")
        elif claims is None:
            problem = error("InvalidSecurityToken.Malformed", "The security token you provided is invalid.")
        elif claims.access_key_id != body.access_key_id:
            problem = error("InvalidSecurityToken.MismatchWithAccessKey", "The security token does not belong to the AccessKeyId.")
        elif claims.expires_at <= now:
            problem = error("InvalidSecurityToken.Expired", "The security token you provided has expired.")
        elif not signing.verify(claims.access_key_secret, body.string_to_sign, body.signature, body.signature_method):
            problem = error("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        else:
            signing_key, valid_until = signing.scoped_key(claims.access_key_secret, body, msg.src)
            return [Reply(msg, common.AuthenticateOk(principal=self.principal(claims), signing_key=signing_key,
                                                     valid_until=min(valid_until, claims.expires_at)))]
        return [Reply(msg, problem)]

    def _open(self, token: str, now: float) -> tokens.Claims | None:
        """tokens.open_token, its decryption remembered per token (an application signs many calls
        with one): a remembered token's key epoch is judged against ``now`` each time, as
        open_token judges it; a token that did not open is not remembered."""
        hit = self._opened.get(token)
        if hit is not None:
            epoch, claims = hit
            return claims if self.keys.oldest_valid_epoch(now) <= epoch <= self.keys.epoch(now) + 1 else None
        claims = tokens.open_token(self.keys, token, now)
        epoch = tokens.sealed_epoch(token) if claims is not None else None
        if claims is not None and epoch is not None:
            if len(self._opened) >= 8192:
                self._opened.clear()
            self._opened[token] = (epoch, claims)
        return claims

    def principal(self, claims: tokens.Claims) -> common.Principal:
        """The assumed-role session a token stands for."""
        return common.Principal(
            identity_type="AssumedRoleUser", account_id=claims.account_id,
            arn=f"acs:ram::{claims.account_id}:assumed-role/{claims.role_name}/{claims.session_name}",
            principal_id=f"{claims.role_id}:{claims.session_name}", role_name=claims.role_name, role_id=claims.role_id,
            session_name=claims.session_name, session_policy=claims.session_policy, access_key_id=claims.access_key_id)

    def _get_caller_identity(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.GetCallerIdentity)
        caller = body.caller
        if caller is None:
            return [Reply(msg, errors.no_permission("The request is not authenticated."))]
        reply = m.GetCallerIdentityOk(account_id=caller.account_id, arn=caller.arn, identity_type=caller.identity_type,
                                      principal_id=caller.principal_id,
                                      user_id=caller.principal_id if caller.identity_type != "AssumedRoleUser" else "",
                                      role_id=caller.role_id)
        return [Reply(msg, reply)]

    def _service_principal(self) -> common.Principal:
        return common.Principal(identity_type="Service", account_id=self.account_id, arn="sts.aliyuncs.com",
                                principal_id="sts.aliyuncs.com")
