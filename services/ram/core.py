"""Pure core: RAM. One account with a root identity; users and their AccessKeys; roles with
trust policies; custom and system policies and their attachments; authentication of
AccessKey-signed requests; authorization decisions for every other service.

Told the time, handed entropy; no I/O. Every change publishes a past-tense event so that
enforcement points elsewhere can react at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import msgspec

from protocol import errors, ids, topics
from protocol.envelope import Envelope
from protocol.errors import Error, error
from protocol.messages import common, ram as m
from protocol.times import iso
from services.ram import policy
from services.runtime import signing
from services.runtime.effects import Effect, Log, Publish, Reply, dispatch

NAME = "ram"
ROLE_NAME = re.compile(r"^[a-zA-Z0-9.\-]{1,64}$")
USER_NAME = re.compile(r"^[a-zA-Z0-9.\-_]{1,64}$")
POLICY_NAME = re.compile(r"^[a-zA-Z0-9\-]{1,128}$")
MAX_ACCESS_KEYS = 2


@dataclass
class RoleRecord:
    role: m.Role
    trust: policy.Document
    policies: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, attach date)


@dataclass
class PolicyRecord:
    policy: m.Policy
    document: policy.Document


@dataclass
class UserRecord:
    user: m.User
    policies: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class KeyRecord:
    access_key: m.AccessKey  # without the secret
    secret: str
    user_name: str  # "" for the root identity


class RamCore:
    node_id = NAME

    def __init__(self, *, account_id: str, root_access_key_id: str, root_access_key_secret: str,
                 entropy: Callable[[int], bytes], now: float) -> None:
        self.account_id = account_id
        self._entropy = entropy
        self.roles: dict[str, RoleRecord] = {}
        self.users: dict[str, UserRecord] = {}
        self.policies: dict[tuple[str, str], PolicyRecord] = {}
        self.keys: dict[str, KeyRecord] = {}
        if root_access_key_id:
            self.keys[root_access_key_id] = KeyRecord(
                m.AccessKey(access_key_id=root_access_key_id, status="Active", create_date=iso(now)),
                root_access_key_secret, "")
        for name, (description, text) in policy.SYSTEM_POLICIES.items():
            self.policies[("System", name)] = PolicyRecord(
                m.Policy(policy_name=name, policy_type="System", description=description, create_date=iso(now)),
                policy.parse(text))
        self._table = {
            common.Authenticate: self._authenticate,
            m.Authorize: self._authorize,
            m.CreateRole: self._api(self._create_role),
            m.GetRole: self._api(self._get_role),
            m.CreatePolicy: self._api(self._create_policy),
            m.AttachPolicyToRole: self._api(self._attach_policy_to_role),
            m.DetachPolicyFromRole: self._api(self._detach_policy_from_role),
            m.ListPoliciesForRole: self._api(self._list_policies_for_role),
            m.CreateUser: self._api(self._create_user),
            m.CreateAccessKey: self._api(self._create_access_key),
            m.UpdateAccessKey: self._api(self._update_access_key),
            m.AttachPolicyToUser: self._api(self._attach_policy_to_user),
        }

    # -- the Core protocol ----------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return []

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        return dispatch(self._table, msg, now, product=NAME)

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        return []

    def on_timer(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self) -> float | None:
        return None

    # -- identities -----------------------------------------------------------------------
    def root(self) -> common.Principal:
        return common.Principal(identity_type="Account", account_id=self.account_id,
                                arn=f"acs:ram::{self.account_id}:root", principal_id=self.account_id)

    def user_principal(self, record: UserRecord, access_key_id: str = "") -> common.Principal:
        return common.Principal(identity_type="RAMUser", account_id=self.account_id,
                                arn=f"acs:ram::{self.account_id}:user/{record.user.user_name}",
                                principal_id=record.user.user_id, user_name=record.user.user_name,
                                access_key_id=access_key_id)

    def _authenticate(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, common.Authenticate)
        key = self.keys.get(body.access_key_id)
        if key is None:
            return [Reply(msg, error("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404))]
        if key.access_key.status != "Active":
            return [Reply(msg, error("InvalidAccessKeyId.Inactive", "Specified access key is disabled.", 403))]
        if not signing.verify(key.secret, body.string_to_sign, body.signature, body.signature_method):
            return [Reply(msg, error("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)),
                    Log("signature_mismatch", "warning", {"access_key_id": body.access_key_id})]
        if not key.user_name:
            principal = self.root()
        else:
            principal = self.user_principal(self.users[key.user_name], body.access_key_id)
        return [Reply(msg, common.AuthenticateOk(principal=principal))]

    # -- decisions ------------------------------------------------------------------------
    def decide(self, principal: common.Principal, action: str, resource: str) -> m.Decision:
        if principal.identity_type in ("Account", "Service") and principal.account_id == self.account_id:
            return m.Decision(allowed=True, reason=f"{principal.arn} is the account owner")
        if principal.account_id != self.account_id:
            return m.Decision(allowed=False, reason="principal belongs to another account")
        if principal.identity_type == "RAMUser":
            record = self.users.get(principal.user_name)
            attached = record.policies if record else []
        elif principal.identity_type == "AssumedRoleUser":
            role = self.roles.get(principal.role_name)
            attached = role.policies if role else []
        else:
            return m.Decision(allowed=False, reason=f"unknown identity type {principal.identity_type}")
        documents = [(f"{t}:{n}", self.policies[(t, n)].document) for t, n, _ in attached if (t, n) in self.policies]
        verdict = policy.evaluate(documents, action, resource)
        if verdict.allowed and principal.session_policy:
            session = policy.evaluate([("session-policy", policy.parse(principal.session_policy))], action, resource)
            if not session.allowed:
                return m.Decision(allowed=False, reason=f"session policy: {session.reason}")
        return m.Decision(allowed=verdict.allowed, reason=verdict.reason)

    def _authorize(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.Authorize)
        decisions = [self.decide(body.principal, c.action, c.resource) for c in body.checks]
        return [Reply(msg, m.AuthorizeOk(decisions=decisions))]

    def _api(self, handler: Callable[[Envelope, float], list[Effect] | Error]) -> Callable[[Envelope, float], list[Effect]]:
        """Authorize ``ram:<Action>`` for the caller, then run ``handler``; an Error it returns
        becomes the reply."""

        def run(msg: Envelope, now: float) -> list[Effect]:
            caller = getattr(msg.body, "caller", None)
            if caller is None:
                return [Reply(msg, errors.no_permission("The request is not authenticated."))]
            action = f"ram:{type(msg.body).__name__}"
            decision = self.decide(caller, action, self._resource(msg.body))
            if not decision.allowed:
                return [Reply(msg, errors.no_permission(decision.reason)),
                        Log("access_denied", "info", {"principal": caller.arn, "action": action})]
            result = handler(msg, now)
            return [Reply(msg, result)] if isinstance(result, Error) else result

        return run

    def _resource(self, body: object) -> str:
        base = f"acs:ram:*:{self.account_id}"
        for attr, kind in (("role_name", "role"), ("user_name", "user"), ("policy_name", "policy")):
            name = getattr(body, attr, "")
            if name:
                return f"{base}:{kind}/{name}"
        return f"{base}:*"

    # -- roles ----------------------------------------------------------------------------
    def _create_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.CreateRole)
        if not ROLE_NAME.match(body.role_name):
            return error("InvalidParameter.RoleName.InvalidChars", 'The parameter - "RoleName" contains invalid chars or is beyond the length limit.')
        if not 3600 <= body.max_session_duration <= 43200:
            return error("InvalidParameter.MaxSessionDuration", "MaxSessionDuration must be 3600-43200 seconds.")
        if body.role_name in self.roles:
            return error("EntityAlreadyExists.Role", "The role does already EXIST.", 409)
        try:
            trust = policy.parse(body.assume_role_policy_document, trust=True)
        except policy.PolicyError as exc:
            return error("MalformedPolicyDocument", f"AssumeRolePolicyDocument: {exc}")
        role_id = ids.numeric_id(self._entropy(8), 17)
        role = m.Role(role_id=role_id, role_name=body.role_name, arn=f"acs:ram::{self.account_id}:role/{body.role_name}",
                      assume_role_policy_document=body.assume_role_policy_document, create_date=iso(now),
                      max_session_duration=body.max_session_duration, description=body.description)
        self.roles[body.role_name] = RoleRecord(role, trust)
        return [Reply(msg, m.CreateRoleOk(role=role)), Publish(topics.event(NAME, "RoleCreated"), m.RoleCreated(role=role))]

    def _get_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.GetRole)
        record = self.roles.get(body.role_name)
        if record is None:
            return error("EntityNotExist.Role", "The specified Role not exists.", 404)
        return [Reply(msg, m.GetRoleOk(role=record.role))]

    def _attach_policy_to_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.AttachPolicyToRole)
        role = self.roles.get(body.role_name)
        if role is None:
            return error("EntityNotExist.Role", "The specified Role not exists.", 404)
        found = self._find_policy(body.policy_type, body.policy_name)
        if isinstance(found, Error):
            return found
        if any((t, n) == (body.policy_type, body.policy_name) for t, n, _ in role.policies):
            return error("EntityAlreadyExists.Role.Policy", "The policy is already attached to the role.", 409)
        role.policies.append((body.policy_type, body.policy_name, iso(now)))
        event = m.PolicyAttachedToRole(policy_type=body.policy_type, policy_name=body.policy_name, role_name=body.role_name)
        return [Reply(msg, m.AttachPolicyToRoleOk()), Publish(topics.event(NAME, "PolicyAttachedToRole"), event)]

    def _detach_policy_from_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.DetachPolicyFromRole)
        role = self.roles.get(body.role_name)
        if role is None:
            return error("EntityNotExist.Role", "The specified Role not exists.", 404)
        kept = [p for p in role.policies if (p[0], p[1]) != (body.policy_type, body.policy_name)]
        if len(kept) == len(role.policies):
            return error("EntityNotExist.Role.Policy", "The policy is not attached to the role.", 404)
        role.policies = kept
        event = m.PolicyDetachedFromRole(policy_type=body.policy_type, policy_name=body.policy_name, role_name=body.role_name)
        return [Reply(msg, m.DetachPolicyFromRoleOk()), Publish(topics.event(NAME, "PolicyDetachedFromRole"), event)]

    def _list_policies_for_role(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.ListPoliciesForRole)
        role = self.roles.get(body.role_name)
        if role is None:
            return error("EntityNotExist.Role", "The specified Role not exists.", 404)
        listed = [self._attached(t, n, date) for t, n, date in role.policies]
        return [Reply(msg, m.ListPoliciesForRoleOk(policies=m.PolicyList(policy=listed)))]

    # -- policies -------------------------------------------------------------------------
    def _find_policy(self, policy_type: str, name: str) -> PolicyRecord | Error:
        if policy_type not in ("System", "Custom"):
            return error("InvalidParameter.PolicyType", 'The parameter - "PolicyType" is incorrect.')
        record = self.policies.get((policy_type, name))
        if record is None:
            return error("EntityNotExist.Policy", f"The policy {policy_type}:{name} does not exist.", 404)
        return record

    def _attached(self, policy_type: str, name: str, date: str) -> m.Policy:
        p = self.policies[(policy_type, name)].policy
        return m.Policy(policy_name=p.policy_name, policy_type=p.policy_type, default_version=p.default_version,
                        description=p.description, attach_date=date)

    def _create_policy(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.CreatePolicy)
        if not POLICY_NAME.match(body.policy_name):
            return error("InvalidParameter.PolicyName.InvalidChars", 'The parameter - "PolicyName" contains invalid chars or is beyond the length limit.')
        if ("Custom", body.policy_name) in self.policies:
            return error("EntityAlreadyExists.Policy", "The policy does already EXIST.", 409)
        try:
            document = policy.parse(body.policy_document)
        except policy.PolicyError as exc:
            return error("MalformedPolicyDocument", str(exc))
        record = m.Policy(policy_name=body.policy_name, policy_type="Custom", description=body.description, create_date=iso(now))
        self.policies[("Custom", body.policy_name)] = PolicyRecord(record, document)
        return [Reply(msg, m.CreatePolicyOk(policy=record)), Publish(topics.event(NAME, "PolicyCreated"), m.PolicyCreated(policy=record))]

    # -- users and AccessKeys -------------------------------------------------------------
    def _create_user(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.CreateUser)
        if not USER_NAME.match(body.user_name):
            return error("InvalidParameter.UserName.InvalidChars", 'The parameter - "UserName" contains invalid chars or is beyond the length limit.')
        if body.user_name in self.users:
            return error("EntityAlreadyExists.User", "The user does already EXIST.", 409)
        user = m.User(user_id=ids.numeric_id(self._entropy(8), 16), user_name=body.user_name, create_date=iso(now),
                      display_name=body.display_name or body.user_name, comments=body.comments)
        self.users[body.user_name] = UserRecord(user)
        return [Reply(msg, m.CreateUserOk(user=user)), Publish(topics.event(NAME, "UserCreated"), m.UserCreated(user=user))]

    def _create_access_key(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.CreateAccessKey)
        user_name = body.user_name or (body.caller.user_name if body.caller else "")
        if not user_name:
            return error("MissingParameter", 'The input parameter "UserName" is mandatory when the caller is the account root.')
        if user_name not in self.users:
            return error("EntityNotExist.User", "The user does not exist.", 404)
        if sum(1 for k in self.keys.values() if k.user_name == user_name) >= MAX_ACCESS_KEYS:
            return error("LimitExceeded.User.AccessKey", f"A user can have at most {MAX_ACCESS_KEYS} AccessKeys.", 409)
        key = m.AccessKey(access_key_id=ids.access_key_id(self._entropy(20)), status="Active", create_date=iso(now))
        secret = ids.secret(self._entropy(30))
        self.keys[key.access_key_id] = KeyRecord(key, secret, user_name)
        shown = m.AccessKey(access_key_id=key.access_key_id, status=key.status, create_date=key.create_date, access_key_secret=secret)
        return [Reply(msg, m.CreateAccessKeyOk(access_key=shown)),
                Log("access_key_created", "info", {"user_name": user_name, "access_key_id": key.access_key_id})]

    def _update_access_key(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.UpdateAccessKey)
        if body.status not in ("Active", "Inactive"):
            return error("InvalidParameter.Status", 'The parameter - "Status" must be Active or Inactive.')
        user_name = body.user_name or (body.caller.user_name if body.caller else "")
        key = self.keys.get(body.user_access_key_id)
        if key is None or not key.user_name or key.user_name != user_name:
            return error("EntityNotExist.User.AccessKey", "The AccessKey does not exist for the user.", 404)
        key.access_key = msgspec.structs.replace(key.access_key, status=body.status)
        return [Reply(msg, m.UpdateAccessKeyOk()),
                Log("access_key_updated", "info", {"user_name": user_name, "access_key_id": body.user_access_key_id, "status": body.status})]

    def _attach_policy_to_user(self, msg: Envelope, now: float) -> list[Effect] | Error:
        body = msg.body
        assert isinstance(body, m.AttachPolicyToUser)
        user = self.users.get(body.user_name)
        if user is None:
            return error("EntityNotExist.User", "The user does not exist.", 404)
        found = self._find_policy(body.policy_type, body.policy_name)
        if isinstance(found, Error):
            return found
        if any((t, n) == (body.policy_type, body.policy_name) for t, n, _ in user.policies):
            return error("EntityAlreadyExists.User.Policy", "The policy is already attached to the user.", 409)
        user.policies.append((body.policy_type, body.policy_name, iso(now)))
        event = m.PolicyAttachedToUser(policy_type=body.policy_type, policy_name=body.policy_name, user_name=body.user_name)
        return [Reply(msg, m.AttachPolicyToUserOk()), Publish(topics.event(NAME, "PolicyAttachedToUser"), event)]
