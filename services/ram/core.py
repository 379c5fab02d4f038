"""Pure core: RAM. The account and its root identity, the directory (users, AccessKeys,
groups, roles, policies with versions, attachments), authentication of AccessKey-signed
requests, and the decisions every other service asks for.

Told the time, handed entropy; no I/O. RAM's own API is enforced as ``ram:<Action>`` on the
entity's ARN. Every change that can alter a decision publishes a past-tense event carrying the
directory's new ``generation``, *before* the reply to the change: an enforcement point that
caches effective policies has dropped its cache by the time the caller can make its next call.

That ordering holds for enforcement points the caller reaches over the bus (ECS: the broker
delivers RAM's event before the caller's next command). One reached by another road (OSS, over
HTTP) registers as a *watcher* (:class:`~protocol.messages.ram.WatchDecisions`): RAM then
holds the reply to each change until every watcher acknowledged its event
(:class:`~protocol.messages.ram.EventApplied`), so the cost of "the next request sees the
change" falls on the rare change, not on every request. A watcher that does not acknowledge
within ``ack_timeout`` is dropped (and told so: it must not decide locally until it watches
again) and the held replies go out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from msgspec.structs import replace

from protocol import errors, topics
from protocol.base import Message
from protocol.envelope import Envelope
from protocol.errors import Error, error
from protocol.messages import common, ram as m
from protocol.times import iso
from services.ram import explain, policy
from services.ram import directory
from services.ram.directory import Directory, KeyRecord, Kind
from services.runtime import paging, signing
from services.runtime.effects import Effect, Log, Publish, Reply, Send, dispatch

NAME = "ram"
WATCHERS = frozenset({"oss"})  # the nodes that may watch decisions (enforcement points reached over HTTP)
Result = Message | Error | tuple[Message, Message]  # a reply, an error, or (event, reply)


def _service(principal: common.Principal) -> bool:
    """One of the cloud's own services acting as itself (it acts for the account)."""
    return principal.identity_type == "Service" and principal.arn in common.SERVICE_PRINCIPALS


MAX_ITEMS = 1000  # MaxItems: 1-1000, default 100 (the lists that page: ListRoles, ListUsers, ListGroups,
# ListPolicies, ListUsersForGroup; RAM's other lists answer everything at once)
LIST_KEYS = {"roles": ("role", lambda r: r.role_name), "users": ("user", lambda u: u.user_name),
             "groups": ("group", lambda g: g.group_name), "policies": ("policy", lambda p: f"{p.policy_type}:{p.policy_name}")}


@dataclass
class Held:
    """A reply to a change, waiting until every watcher has applied ``generation``."""

    generation: int
    reply: Reply
    deadline: float


class RamCore:
    node_id = NAME
    ROWS = {**directory.ROWS, "watchers": int}
    SEALED = directory.SEALED
    READ_ONLY = frozenset({common.Authenticate, m.Authorize, m.GetEffectivePolicies, m.SimulatePrincipalPolicy,
                           *(t for t in m.__dict__.values() if isinstance(t, type) and t.__name__.startswith(("Get", "List")))})

    def __init__(self, *, account_id: str, root_access_key_id: str, root_access_key_secret: str,
                 entropy: Callable[[int], bytes], now: float, ack_timeout: float = 1.0) -> None:
        self.account_id = account_id
        self.ack_timeout = ack_timeout
        self.watchers: dict[str, int] = {}  # node -> the generation it has applied
        self._held: list[Held] = []
        self.dir = Directory(account_id, entropy)
        if root_access_key_id:
            root_key = m.AccessKey(access_key_id=root_access_key_id, status="Active", create_date=iso(now))
            self.dir.keys[root_access_key_id] = KeyRecord(root_key, root_access_key_secret, "")
        for name, (description, text) in policy.SYSTEM_POLICIES.items():
            self.dir.add_system_policy(name, description, text, now)
        self._session_policies: dict[str, policy.Document] = {}
        self._table: dict[type, Callable[[Envelope, float], list[Effect]]] = {
            common.Authenticate: self._authenticate,
            m.Authorize: self._authorize,
            m.GetEffectivePolicies: self._effective_policies,
            m.WatchDecisions: self._watch,
            m.EventApplied: self._applied,
            **{kind: self._api(handler) for kind, handler in self._handlers().items()},
        }

    # -- the Core protocol ----------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        return []

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        return dispatch(self._table, msg, now, product=NAME)

    def on_reply(self, context: object, body: object, now: float) -> list[Effect]:
        return []

    def on_timer(self, now: float) -> list[Effect]:
        return self._release(now)

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self._held), default=None)

    # -- durable state (Durable: the driver persists the directory's rows) ----------------------
    def dump(self) -> dict[str, dict[str, object]]:
        return {**self.dir.dump(), "watchers": dict(self.watchers)}

    def load(self, rows: dict[str, dict], now: float) -> list[Effect]:
        self.dir.load(rows)
        self.watchers = dict(rows.get("watchers", {}))
        return [Log("directory_restored", "info", {"users": len(self.dir.users), "roles": len(self.dir.roles),
                                                   "generation": self.dir.generation})]

    # -- identities -----------------------------------------------------------------------
    def root(self) -> common.Principal:
        return common.Principal(identity_type="Account", account_id=self.account_id,
                                arn=f"acs:ram::{self.account_id}:root", principal_id=self.account_id)

    def user_principal(self, user: m.User, access_key_id: str = "") -> common.Principal:
        return common.Principal(identity_type="RAMUser", account_id=self.account_id,
                                arn=f"acs:ram::{self.account_id}:user/{user.user_name}", principal_id=user.user_id,
                                user_name=user.user_name, access_key_id=access_key_id)

    def _authenticate(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, common.Authenticate)
        key = self.dir.keys.get(body.access_key_id)
        if key is None:
            return [Reply(msg, error("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404))]
        if key.access_key.status != "Active":
            return [Reply(msg, error("InvalidAccessKeyId.Inactive", "Specified access key is disabled.", 403))]
        if not signing.verify(key.secret, body.string_to_sign, body.signature, body.signature_method):
            return [Reply(msg, error("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)),
                    Log("signature_mismatch", "warning", {"access_key_id": body.access_key_id})]
        user = self.dir.users.get(key.user_name) if key.user_name else None
        principal = self.user_principal(user, body.access_key_id) if user else self.root()
        signing_key, valid_until = signing.scoped_key(key.secret, body, msg.src)
        return [Reply(msg, common.AuthenticateOk(principal=principal, signing_key=signing_key, valid_until=valid_until))]

    # -- decisions ------------------------------------------------------------------------
    def decide(self, principal: common.Principal, check: m.Check, now: float) -> m.Decision:
        """May ``principal`` do ``check``? Unknown or foreign principals are denied, never an error."""
        if principal.account_id != self.account_id:
            return m.Decision(allowed=False, reason="the principal belongs to another account")
        if principal.identity_type == "Account" or _service(principal):
            return m.Decision(allowed=True, reason=f"{principal.arn} is the account owner", decision="Allow")
        holder = self._holder(principal)
        if isinstance(holder, Error):
            return m.Decision(allowed=False, reason=holder.message)
        session = self._session(principal)
        context = {"acs:CurrentTime": iso(now), "acs:PrincipalARN": principal.arn, **check.context}
        request = policy.RequestContext(action=check.action, resource=check.resource, keys=context)
        return explain.decision(policy.decide(self.dir.effective(*holder), request, session=session))

    def _holder(self, principal: common.Principal) -> tuple[Kind, str] | Error:
        if principal.identity_type == "RAMUser" and principal.user_name in self.dir.users:
            return "User", principal.user_name
        if principal.identity_type == "AssumedRoleUser" and principal.role_name in self.dir.roles:
            return "Role", principal.role_name
        return error("EntityNotExist", f"the principal {principal.arn} does not exist")

    def _session(self, principal: common.Principal) -> list[policy.NamedPolicy]:
        text = principal.session_policy
        if not text:
            return []
        document = self._session_policies.get(text)
        if document is None:
            document = self._session_policies[text] = policy.parse(text, max_chars=2048)
        return [policy.NamedPolicy("session-policy", "", document)]

    def _authorize(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.Authorize)
        decisions = [self.decide(body.principal, c, now) for c in body.checks]
        return [Reply(msg, m.AuthorizeOk(decisions=decisions, generation=self.dir.generation))]

    def _effective_policies(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.GetEffectivePolicies)
        principal = body.principal
        if principal.account_id == self.account_id and (principal.identity_type == "Account" or _service(principal)):
            return [Reply(msg, m.GetEffectivePoliciesOk(policies=[], all_allowed=True, generation=self.dir.generation))]
        holder = self._holder(principal) if principal.account_id == self.account_id else error("EntityNotExist", "foreign")
        named = [] if isinstance(holder, Error) else self.dir.effective(*holder)
        documents = [m.PolicyDocument(name=p.name, version=p.version, document=p.document.text) for p in named]
        return [Reply(msg, m.GetEffectivePoliciesOk(policies=documents, generation=self.dir.generation))]

    # -- watchers: enforcement points that acknowledge each change before it is answered ------
    def _watch(self, msg: Envelope, now: float) -> list[Effect]:
        if msg.src not in WATCHERS:  # holding replies for a node is a lever: only known enforcement points get it
            return [Reply(msg, errors.no_permission(f"{msg.src} may not watch decisions.")),
                    Log("watch_refused", "warning", {"src": msg.src})]
        self.watchers[msg.src] = self.dir.generation
        return [Reply(msg, m.WatchDecisionsOk(generation=self.dir.generation)),
                Log("watcher_added", "info", {"node": msg.src, "generation": self.dir.generation}), *self._release(now)]

    def _applied(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, m.EventApplied)
        if msg.src not in self.watchers:
            return []
        self.watchers[msg.src] = max(self.watchers[msg.src], body.generation)
        return self._release(now)

    def _answer(self, reply: Reply, generation: int, now: float) -> list[Effect]:
        """Reply now if every watcher has applied ``generation``; else hold the reply."""
        if all(applied >= generation for applied in self.watchers.values()):
            return [reply]
        self._held.append(Held(generation, reply, now + self.ack_timeout))
        return []

    def _release(self, now: float) -> list[Effect]:
        """Send the held replies every watcher has caught up with; at a deadline, drop the
        watchers that lag (telling them) and send what they held up."""
        effects: list[Effect] = []
        late = [h for h in self._held if h.deadline <= now]
        if late:
            needed = max(h.generation for h in late)
            for node in sorted(n for n, applied in self.watchers.items() if applied < needed):
                del self.watchers[node]
                effects += [Send(node, m.WatchDropped(waited_for=needed)),
                            Log("watcher_dropped", "warning", {"node": node, "waited_for": needed})]
        waiting: list[Held] = []
        for held in self._held:
            if all(applied >= held.generation for applied in self.watchers.values()):
                effects.append(held.reply)
            else:
                waiting.append(held)
        self._held = waiting
        return effects

    # -- the API --------------------------------------------------------------------------
    def _api(self, handler: Callable[..., Result]) -> Callable[[Envelope, float], list[Effect]]:
        """Enforce ``ram:<Action>`` on the target's ARN, run ``handler(body, caller, now)``, and
        publish the event it returns before the reply."""

        def run(msg: Envelope, now: float) -> list[Effect]:
            body = msg.body
            caller = getattr(body, "caller", None)
            if caller is None:
                return [Reply(msg, errors.no_permission("The request is not authenticated."))]
            action = f"ram:{type(body).__name__}"
            check = m.Check(action=action, resource=self._resource(body), context=body.request_context)
            verdict = self.decide(caller, check, now)
            if not verdict.allowed:
                return [Reply(msg, explain.denied("NoPermission", "You are not authorized to do this action.", 403, caller, action, verdict)),
                        Log("access_denied", "info", {"principal": caller.arn, "action": action, "reason": verdict.reason})]
            result = handler(body, caller, now)
            if isinstance(result, tuple):
                event, reply = result
                return [Publish(topics.event(NAME, type(event).__name__), event),
                        *self._answer(Reply(msg, reply), event.generation, now)]  # type: ignore[attr-defined]
            return [Reply(msg, result)]

        return run

    def _resource(self, body: object) -> str:
        base = f"acs:ram:*:{self.account_id}"
        for attr, kind in (("role_name", "role"), ("user_name", "user"), ("group_name", "group"), ("policy_name", "policy")):
            name = getattr(body, attr, "")
            if name:
                return f"{base}:{kind}/{name}"
        return f"{base}:*"

    def _event(self, kind: type, reply: Message, **fields: object) -> tuple[Message, Message]:
        return kind(**fields, generation=self.dir.generation), reply

    def _handlers(self) -> dict[type, Callable[..., Result]]:
        d = self.dir
        gen = self._event

        def ok_or(problem: Error | None, event: type, reply: Message, **fields: object) -> Result:
            return problem if problem is not None else gen(event, reply, **fields)

        def value(found: object, wrap: Callable[[object], Result]) -> Result:
            return found if isinstance(found, Error) else wrap(found)

        return {
            # roles
            m.CreateRole: lambda b, c, now: value(d.create_role(b.role_name, b.assume_role_policy_document, b.description,
                                                                b.max_session_duration, now),
                                                  lambda r: gen(m.RoleCreated, m.CreateRoleOk(role=r), role=r)),
            m.GetRole: lambda b, c, now: value(d.role(b.role_name), lambda found: m.GetRoleOk(role=found[0])),
            m.UpdateRole: lambda b, c, now: value(d.update_role(b.role_name, b.new_assume_role_policy_document,
                                                                b.new_max_session_duration, b.new_description, now),
                                                  lambda r: gen(m.RoleChanged, m.UpdateRoleOk(role=r), role_name=r.role_name)),
            m.DeleteRole: lambda b, c, now: ok_or(d.delete_role(b.role_name), m.RoleChanged, m.DeleteRoleOk(),
                                                  role_name=b.role_name, deleted=True),
            m.ListRoles: lambda b, c, now: self._list(m.ListRolesOk, "roles", m.RoleList, [r for r, _ in d.roles.values()], b),
            # users and keys
            m.CreateUser: lambda b, c, now: value(d.create_user(b.user_name, b.display_name, b.comments, now,
                                                                mobile_phone=b.mobile_phone, email=b.email),
                                                  lambda u: gen(m.UserCreated, m.CreateUserOk(user=u), user=u)),
            m.GetUser: lambda b, c, now: value(d.user(b.user_name), lambda u: m.GetUserOk(user=u)),
            m.UpdateUser: lambda b, c, now: value(d.update_user(b.user_name, b.new_user_name, b.new_display_name, b.new_comments, now,
                                                                mobile_phone=b.new_mobile_phone, email=b.new_email),
                                                  lambda u: gen(m.UserChanged, m.UpdateUserOk(user=u), user_name=b.user_name,
                                                                new_user_name=u.user_name)),
            m.DeleteUser: lambda b, c, now: ok_or(d.delete_user(b.user_name), m.UserChanged, m.DeleteUserOk(),
                                                  user_name=b.user_name, deleted=True),
            m.ListUsers: lambda b, c, now: self._list(m.ListUsersOk, "users", m.UserList, list(d.users.values()), b),
            m.CreateAccessKey: self._create_access_key,
            m.UpdateAccessKey: self._update_access_key,
            m.DeleteAccessKey: self._delete_access_key,
            m.ListAccessKeys: self._list_access_keys,
            # groups
            m.CreateGroup: lambda b, c, now: value(d.create_group(b.group_name, b.comments, now), lambda g: m.CreateGroupOk(group=g)),
            m.GetGroup: lambda b, c, now: value(d.group(b.group_name), lambda g: m.GetGroupOk(group=g)),
            m.UpdateGroup: lambda b, c, now: value(d.update_group(b.group_name, b.new_group_name, b.new_comments, now),
                                                   lambda g: gen(m.GroupChanged, m.UpdateGroupOk(group=g), group_name=b.group_name,
                                                                 new_group_name=g.group_name)),
            m.DeleteGroup: lambda b, c, now: ok_or(d.delete_group(b.group_name), m.GroupChanged, m.DeleteGroupOk(),
                                                   group_name=b.group_name, deleted=True),
            m.ListGroups: lambda b, c, now: self._list(m.ListGroupsOk, "groups", m.GroupList, list(d.groups.values()), b),
            m.AddUserToGroup: lambda b, c, now: ok_or(d.join(b.user_name, b.group_name, now), m.GroupMembershipChanged,
                                                      m.AddUserToGroupOk(), user_name=b.user_name, group_name=b.group_name, member=True),
            m.RemoveUserFromGroup: lambda b, c, now: ok_or(d.leave(b.user_name, b.group_name), m.GroupMembershipChanged,
                                                           m.RemoveUserFromGroupOk(), user_name=b.user_name,
                                                           group_name=b.group_name, member=False),
            m.ListGroupsForUser: lambda b, c, now: value(d.user(b.user_name), lambda u: m.ListGroupsForUserOk(groups=m.GroupList(
                group=[replace(d.groups[g], join_date=d.members[g][b.user_name]) for g in d.groups_of(b.user_name)]))),
            m.ListUsersForGroup: lambda b, c, now: value(d.group(b.group_name), lambda g: self._list(
                m.ListUsersForGroupOk, "users", m.UserList,
                [replace(d.users[u], join_date=j) for u, j in d.members[b.group_name].items()], b)),
            # policies and versions
            m.CreatePolicy: lambda b, c, now: value(d.create_policy(b.policy_name, b.policy_document, b.description, now),
                                                    lambda p: gen(m.PolicyCreated, m.CreatePolicyOk(policy=p), policy=p)),
            m.GetPolicy: lambda b, c, now: value(d.find_policy(b.policy_type, b.policy_name), lambda r: self._get_policy(r)),
            m.DeletePolicy: lambda b, c, now: ok_or(d.delete_policy(b.policy_name), m.PolicyChanged, m.DeletePolicyOk(),
                                                    policy_type="Custom", policy_name=b.policy_name, deleted=True),
            m.ListPolicies: self._list_policies,
            m.CreatePolicyVersion: self._create_policy_version,
            m.GetPolicyVersion: lambda b, c, now: value(d.find_policy(b.policy_type, b.policy_name), lambda r: value(
                d.version(r, b.version_id), lambda v: m.GetPolicyVersionOk(policy_version=d.version_shape(r, b.version_id)))),
            m.ListPolicyVersions: lambda b, c, now: value(d.find_policy(b.policy_type, b.policy_name), lambda r: m.ListPolicyVersionsOk(
                policy_versions=m.PolicyVersionList(policy_version=[d.version_shape(r, v) for v in r.versions]))),
            m.SetDefaultPolicyVersion: lambda b, c, now: ok_or(d.set_default(b.policy_name, b.version_id, now), m.PolicyChanged,
                                                               m.SetDefaultPolicyVersionOk(), policy_type="Custom",
                                                               policy_name=b.policy_name, default_version=b.version_id),
            m.DeletePolicyVersion: lambda b, c, now: d.delete_version(b.policy_name, b.version_id) or m.DeletePolicyVersionOk(),
            # attachments
            m.AttachPolicyToUser: self._attachment("User", True, m.PolicyAttachedToUser, m.AttachPolicyToUserOk),
            m.DetachPolicyFromUser: self._attachment("User", False, m.PolicyDetachedFromUser, m.DetachPolicyFromUserOk),
            m.AttachPolicyToGroup: self._attachment("Group", True, m.PolicyAttachedToGroup, m.AttachPolicyToGroupOk),
            m.DetachPolicyFromGroup: self._attachment("Group", False, m.PolicyDetachedFromGroup, m.DetachPolicyFromGroupOk),
            m.AttachPolicyToRole: self._attachment("Role", True, m.PolicyAttachedToRole, m.AttachPolicyToRoleOk),
            m.DetachPolicyFromRole: self._attachment("Role", False, m.PolicyDetachedFromRole, m.DetachPolicyFromRoleOk),
            m.ListPoliciesForUser: lambda b, c, now: value(d.attached_policies("User", b.user_name),
                                                           lambda ps: m.ListPoliciesForUserOk(policies=m.PolicyList(policy=ps))),
            m.ListPoliciesForGroup: lambda b, c, now: value(d.attached_policies("Group", b.group_name),
                                                            lambda ps: m.ListPoliciesForGroupOk(policies=m.PolicyList(policy=ps))),
            m.ListPoliciesForRole: lambda b, c, now: value(d.attached_policies("Role", b.role_name),
                                                           lambda ps: m.ListPoliciesForRoleOk(policies=m.PolicyList(policy=ps))),
            m.ListEntitiesForPolicy: self._entities_for_policy,
            m.SimulatePrincipalPolicy: self._simulate,
        }

    def _list(self, reply: type, field: str, wrapper: type, items: list, body: object) -> Message | Error:
        """One page of ``items`` (Marker/MaxItems), with IsTruncated and, when truncated, the
        opaque Marker of the next page."""
        max_items = getattr(body, "max_items")
        if not 1 <= max_items <= MAX_ITEMS:
            return error("InvalidParameter.MaxItems", f'The parameter - "MaxItems" must be 1-{MAX_ITEMS}.')
        inner, key = LIST_KEYS[field]
        found = paging.page(items, key, getattr(body, "marker"), max_items)
        if found is None:
            return error("InvalidParameter.Marker", 'The parameter - "Marker" is not a marker this list returned.')
        chunk, marker = found
        return reply(**{field: wrapper(**{inner: chunk}), "is_truncated": bool(marker), "marker": marker})

    def _attachment(self, kind: Kind, attach: bool, event: type, reply: type) -> Callable[..., Result]:
        target = {"User": "user_name", "Group": "group_name", "Role": "role_name"}[kind]

        def run(body: object, caller: common.Principal, now: float) -> Result:
            name, policy_type, policy_name = getattr(body, target), getattr(body, "policy_type"), getattr(body, "policy_name")
            problem = self.dir.attach(kind, name, policy_type, policy_name, now) if attach else \
                self.dir.detach(kind, name, policy_type, policy_name)
            if problem is not None:
                return problem
            return self._event(event, reply(), policy_type=policy_type, policy_name=policy_name, **{target: name})

        return run

    # -- handlers that need more than a line ------------------------------------------------
    def _key_owner(self, user_name: str, caller: common.Principal) -> str:
        return user_name or caller.user_name

    def _create_access_key(self, body: m.CreateAccessKey, caller: common.Principal, now: float) -> Result:
        user_name = self._key_owner(body.user_name, caller)
        if not user_name:
            return errors.missing_parameter("UserName")
        key = self.dir.create_access_key(user_name, now)
        return key if isinstance(key, Error) else m.CreateAccessKeyOk(access_key=key)

    def _update_access_key(self, body: m.UpdateAccessKey, caller: common.Principal, now: float) -> Result:
        if body.status not in ("Active", "Inactive"):
            return error("InvalidParameter.Status", 'The parameter - "Status" must be Active or Inactive.')
        user_name = self._key_owner(body.user_name, caller)
        key = self.dir.user_key(user_name, body.user_access_key_id)
        if isinstance(key, Error):
            return key
        key.access_key = replace(key.access_key, status=body.status)
        self.dir.changed()
        return self._event(m.AccessKeyChanged, m.UpdateAccessKeyOk(), access_key_id=body.user_access_key_id,
                           user_name=user_name, status=body.status)

    def _delete_access_key(self, body: m.DeleteAccessKey, caller: common.Principal, now: float) -> Result:
        user_name = self._key_owner(body.user_name, caller)
        key = self.dir.user_key(user_name, body.user_access_key_id)
        if isinstance(key, Error):
            return key
        del self.dir.keys[body.user_access_key_id]
        self.dir.changed()
        return self._event(m.AccessKeyChanged, m.DeleteAccessKeyOk(), access_key_id=body.user_access_key_id,
                           user_name=user_name, status="Deleted")

    def _list_access_keys(self, body: m.ListAccessKeys, caller: common.Principal, now: float) -> Result:
        user_name = self._key_owner(body.user_name, caller)
        user = self.dir.user(user_name)
        if isinstance(user, Error):
            return user
        keys = [k.access_key for k in self.dir.keys.values() if k.user_name == user_name]
        return m.ListAccessKeysOk(access_keys=m.AccessKeyList(access_key=keys))

    def _list_policies(self, body: m.ListPolicies, caller: common.Principal, now: float) -> Result:
        if body.policy_type not in ("", "System", "Custom"):
            return error("InvalidParameter.PolicyType", 'The parameter - "PolicyType" is incorrect.')
        counts: dict[tuple[str, str], int] = {}
        for attachments in self.dir.attached.values():
            for a in attachments:
                counts[(a.policy_type, a.policy_name)] = counts.get((a.policy_type, a.policy_name), 0) + 1
        items = [replace(r.policy, attachment_count=counts.get(k, 0)) for k, r in self.dir.policies.items()
                 if not body.policy_type or k[0] == body.policy_type]
        return self._list(m.ListPoliciesOk, "policies", m.PolicyList, items, body)

    def _get_policy(self, record: directory.PolicyRecord) -> m.GetPolicyOk:
        default = self.dir.version_shape(record, record.policy.default_version)
        return m.GetPolicyOk(policy=replace(record.policy, policy_document=default.policy_document), default_policy_version=default)

    def _create_policy_version(self, body: m.CreatePolicyVersion, caller: common.Principal, now: float) -> Result:
        version = self.dir.create_version(body.policy_name, body.policy_document, body.set_as_default, body.rotate_strategy, now)
        if isinstance(version, Error):
            return version
        reply = m.CreatePolicyVersionOk(policy_version=version)
        if not body.set_as_default:
            return reply
        return self._event(m.PolicyChanged, reply, policy_type="Custom", policy_name=body.policy_name,
                           default_version=version.version_id)

    def _entities_for_policy(self, body: m.ListEntitiesForPolicy, caller: common.Principal, now: float) -> Result:
        found = self.dir.entities_for(body.policy_type, body.policy_name)
        if isinstance(found, Error):
            return found
        d = self.dir
        return m.ListEntitiesForPolicyOk(
            users=m.UserList(user=[replace(d.users[n], attach_date=a) for n, a in found["User"]]),
            groups=m.GroupList(group=[replace(d.groups[n], attach_date=a) for n, a in found["Group"]]),
            roles=m.RoleList(role=[replace(d.roles[n][0], attach_date=a) for n, a in found["Role"]]))

    def _simulate(self, body: m.SimulatePrincipalPolicy, caller: common.Principal, now: float) -> Result:
        if body.principal_type == "User":
            user = self.dir.user(body.principal_name)
            if isinstance(user, Error):
                return user
            principal = self.user_principal(user)
        elif body.principal_type == "Role":
            found = self.dir.role(body.principal_name)
            if isinstance(found, Error):
                return found
            role = found[0]
            principal = common.Principal(identity_type="AssumedRoleUser", account_id=self.account_id,
                                         arn=f"acs:ram::{self.account_id}:assumed-role/{role.role_name}/simulation",
                                         principal_id=f"{role.role_id}:simulation", role_name=role.role_name, role_id=role.role_id)
        else:
            return error("InvalidParameter.PrincipalType", 'The parameter - "PrincipalType" must be User or Role.')
        try:
            context = json.loads(body.context) if body.context else {}
        except ValueError:
            context = None
        if not isinstance(context, dict):
            return errors.invalid_parameter("Context", "It must be a JSON object of condition keys.")
        check = m.Check(action=body.action_name, resource=body.resource_name, context={k: str(v) for k, v in context.items()})
        return m.SimulatePrincipalPolicyOk(decision=self.decide(principal, check, now))

