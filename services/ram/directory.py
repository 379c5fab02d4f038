"""Pure core: RAM's directory: users, AccessKeys, groups, roles, policies with versions, and
which policies are attached to whom. Every operation validates as Alibaba does and returns a
value or an :class:`~protocol.errors.Error`; nothing here raises for a domain failure.

``generation`` grows with every change that can alter a decision (attachments, versions,
memberships, trust policies, deletions), so enforcement points can order cached answers.

Attachments are one table for the three kinds of principal (``User``, ``Group``, ``Role``):
the same code attaches, detaches and lists for each.

:meth:`Directory.dump` and :meth:`Directory.load` turn the directory into rows (:data:`ROWS`)
and back, for the service's store: documents are kept as the text the user wrote and parsed
again on load; the system policies and the root key are not rows (every start makes them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal

import msgspec
from msgspec.structs import replace

from protocol import ids
from protocol.errors import Error, error
from protocol.messages import ram as m
from protocol.times import iso
from services.ram import policy

Kind = Literal["User", "Group", "Role"]
NAMES = {
    "User": (re.compile(r"^[a-zA-Z0-9.\-_]{1,64}$"), "UserName"),
    "Group": (re.compile(r"^[a-zA-Z0-9.\-_]{1,64}$"), "GroupName"),
    "Role": (re.compile(r"^[a-zA-Z0-9.\-]{1,64}$"), "RoleName"),
    "Policy": (re.compile(r"^[a-zA-Z0-9\-]{1,128}$"), "PolicyName"),
}
LIMITS = {"AccessKeysPerUser": 2, "VersionsPerPolicy": 5, "PoliciesPerPrincipal": 25, "Users": 1000, "Roles": 1000,
          "Groups": 1000, "Policies": 1500, "GroupsPerUser": 5}
MAX_DESCRIPTION, MAX_COMMENTS = 1024, 128


@dataclass
class Version:
    version_id: str
    document: policy.Document
    create_date: str


@dataclass
class PolicyRecord:
    policy: m.Policy
    versions: dict[str, Version]
    next_version: int = 2

    @property
    def default(self) -> Version:
        return self.versions[self.policy.default_version]


@dataclass
class KeyRecord:
    access_key: m.AccessKey  # without the secret
    secret: str              # what HMAC verification needs; shown to the user once, at creation
    user_name: str           # "" for the account's root key


@dataclass
class Attachment:
    policy_type: str
    policy_name: str
    attach_date: str


class VersionRow(msgspec.Struct, frozen=True):
    version_id: str
    document: str
    create_date: str


class PolicyRow(msgspec.Struct, frozen=True):
    policy: m.Policy
    versions: list[VersionRow]
    next_version: int


class KeyRow(msgspec.Struct, frozen=True):
    access_key: m.AccessKey
    secret: str
    user_name: str


class AttachmentRow(msgspec.Struct, frozen=True):
    policy_type: str
    policy_name: str
    attach_date: str


class GroupRow(msgspec.Struct, frozen=True):
    group: m.Group
    members: dict[str, str]


ROWS: dict[str, type] = {"users": m.User, "groups": GroupRow, "roles": m.Role, "keys": KeyRow, "policies": PolicyRow,
                         "attached": list[AttachmentRow], "meta": int}
SEALED = frozenset({"keys"})  # AccessKey secrets: encrypted at rest


@dataclass
class Directory:
    account_id: str
    entropy: Callable[[int], bytes]
    users: dict[str, m.User] = field(default_factory=dict)
    groups: dict[str, m.Group] = field(default_factory=dict)
    roles: dict[str, tuple[m.Role, policy.Document]] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> {user: join date}
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    policies: dict[tuple[str, str], PolicyRecord] = field(default_factory=dict)
    attached: dict[tuple[Kind, str], list[Attachment]] = field(default_factory=dict)
    generation: int = 0

    def changed(self) -> int:
        self.generation += 1
        return self.generation

    # -- rows, for the store --------------------------------------------------------------------
    def dump(self) -> dict[str, dict[str, object]]:
        return {
            "users": dict(self.users),
            "groups": {name: GroupRow(g, self.members.get(name, {})) for name, g in self.groups.items()},
            "roles": {name: role for name, (role, _) in self.roles.items()},
            "keys": {i: KeyRow(k.access_key, k.secret, k.user_name) for i, k in self.keys.items() if k.user_name},
            "policies": {name: PolicyRow(r.policy, [VersionRow(v.version_id, v.document.text, v.create_date) for v in r.versions.values()],
                                         r.next_version) for (kind, name), r in self.policies.items() if kind == "Custom"},
            "attached": {f"{kind}:{name}": [AttachmentRow(a.policy_type, a.policy_name, a.attach_date) for a in attachments]
                         for (kind, name), attachments in self.attached.items() if attachments},
            "meta": {"generation": self.generation},
        }

    def load(self, rows: dict[str, dict]) -> None:
        """Restore what :meth:`dump` wrote (over a directory holding only what a start makes)."""
        self.users.update(rows.get("users", {}))
        for name, row in rows.get("groups", {}).items():
            self.groups[name] = row.group
            self.members[name] = dict(row.members)
        for name, role in rows.get("roles", {}).items():
            self.roles[name] = (role, policy.parse(role.assume_role_policy_document, trust=True))
        for key_id, row in rows.get("keys", {}).items():
            self.keys[key_id] = KeyRecord(row.access_key, row.secret, row.user_name)
        for name, row in rows.get("policies", {}).items():
            versions = {v.version_id: Version(v.version_id, policy.parse(v.document), v.create_date) for v in row.versions}
            self.policies[("Custom", name)] = PolicyRecord(row.policy, versions, row.next_version)
        for holder, attachments in rows.get("attached", {}).items():
            kind, name = holder.split(":", 1)
            self.attached[(kind, name)] = [Attachment(a.policy_type, a.policy_name, a.attach_date) for a in attachments]  # type: ignore[index]
        self.generation = max(self.generation, rows.get("meta", {}).get("generation", 0))

    # -- validation ---------------------------------------------------------------------------
    @staticmethod
    def bad_name(kind: str, name: str) -> Error | None:
        pattern, param = NAMES[kind]
        if not name:
            return error("MissingParameter", f'The input parameter "{param}" that is mandatory for processing this request is not supplied.')
        if len(name) > (128 if kind == "Policy" else 64):
            return error(f"InvalidParameter.{param}.Length", f'The parameter - "{param}" is beyond the length limit.')
        if not pattern.fullmatch(name):  # not match(): "$" would let a trailing newline in
            return error(f"InvalidParameter.{param}.InvalidChars", f'The parameter - "{param}" contains invalid chars.')
        return None

    @staticmethod
    def too_long(param: str, value: str, limit: int) -> Error | None:
        if len(value) > limit:
            return error(f"InvalidParameter.{param}.Length", f'The parameter - "{param}" is beyond the length limit ({limit}).')
        return None

    def _limit(self, what: str, count: int, code: str) -> Error | None:
        if count >= LIMITS[what]:
            return error(code, f"The maximum number of {what} ({LIMITS[what]}) is reached.", 409)
        return None

    def _new_id(self, digits: int = 16) -> str:
        return ids.numeric_id(self.entropy(8), digits)

    # -- users ----------------------------------------------------------------------------------
    def create_user(self, name: str, display_name: str, comments: str, now: float, *, mobile_phone: str = "",
                    email: str = "") -> m.User | Error:
        problem = self.bad_name("User", name) or self.too_long("DisplayName", display_name, 128) or \
            self.too_long("Comments", comments, MAX_COMMENTS) or _bad_contact("", mobile_phone, email) or \
            self._limit("Users", len(self.users), "LimitExceeded.User")
        if problem:
            return problem
        if name in self.users:
            return error("EntityAlreadyExists.User", "The user does already EXIST.", 409)
        user = m.User(user_id=self._new_id(), user_name=name, create_date=iso(now), update_date=iso(now),
                      display_name=display_name or name, comments=comments, mobile_phone=mobile_phone, email=email)
        self.users[name] = user
        return user

    def user(self, name: str) -> m.User | Error:
        return self.users.get(name) or error("EntityNotExist.User", f"The user {name} does not exist.", 404)

    def update_user(self, name: str, new_name: str, display_name: str, comments: str, now: float, *,
                    mobile_phone: str = "", email: str = "") -> m.User | Error:
        user = self.user(name)
        if isinstance(user, Error):
            return user
        problem = self._bad_rename("User", self.users, name, new_name) or \
            self.too_long("NewDisplayName", display_name, 128) or self.too_long("NewComments", comments, MAX_COMMENTS) or \
            _bad_contact("New", mobile_phone, email)
        if problem:
            return problem
        updated = replace(user, user_name=new_name or name, display_name=display_name or user.display_name,
                          comments=comments or user.comments, mobile_phone=mobile_phone or user.mobile_phone,
                          email=email or user.email, update_date=iso(now))
        if new_name and new_name != name:
            self._rename("User", name, new_name)
        self.users[updated.user_name] = updated
        self.changed()
        return updated

    def _bad_rename(self, kind: Kind, table: dict, name: str, new_name: str) -> Error | None:
        """Why ``name`` may not become ``new_name`` (checked before anything changes), or None."""
        if not new_name or new_name == name:
            return None
        return self.bad_name(kind, new_name) or (
            error(f"EntityAlreadyExists.{kind}", f"The {kind.lower()} does already EXIST.", 409) if new_name in table else None)

    def _rename(self, kind: Kind, old: str, new: str) -> None:
        table: dict = self.users if kind == "User" else self.groups
        del table[old]
        if (kind, old) in self.attached:
            self.attached[(kind, new)] = self.attached.pop((kind, old))
        if kind == "User":
            for joined in self.members.values():
                if old in joined:
                    joined[new] = joined.pop(old)
            for key in self.keys.values():
                if key.user_name == old:
                    key.user_name = new
        elif old in self.members:
            self.members[new] = self.members.pop(old)

    def delete_user(self, name: str) -> Error | None:
        user = self.user(name)
        if isinstance(user, Error):
            return user
        if any(k.user_name == name for k in self.keys.values()):
            return error("DeleteConflict.User.AccessKey", "The user has AccessKeys; delete them first.", 409)
        if self.attached.get(("User", name)):
            return error("DeleteConflict.User.Policy", "The user has policies attached; detach them first.", 409)
        if any(name in joined for joined in self.members.values()):
            return error("DeleteConflict.User.Group", "The user is a member of groups; remove it first.", 409)
        del self.users[name]
        self.changed()
        return None

    def groups_of(self, user_name: str) -> list[str]:
        return [g for g, joined in self.members.items() if user_name in joined]

    # -- AccessKeys -----------------------------------------------------------------------------
    def create_access_key(self, user_name: str, now: float) -> m.AccessKey | Error:
        user = self.user(user_name)
        if isinstance(user, Error):
            return user
        owned = sum(1 for k in self.keys.values() if k.user_name == user_name)
        if owned >= LIMITS["AccessKeysPerUser"]:
            return error("LimitExceeded.User.AccessKey", f"A user can have at most {LIMITS['AccessKeysPerUser']} AccessKeys.", 409)
        key = m.AccessKey(access_key_id=ids.access_key_id(self.entropy(20)), status="Active", create_date=iso(now))
        secret = ids.secret(self.entropy(30))
        self.keys[key.access_key_id] = KeyRecord(key, secret, user_name)
        return replace(key, access_key_secret=secret)

    def user_key(self, user_name: str, key_id: str) -> KeyRecord | Error:
        key = self.keys.get(key_id)
        if key is None or not key.user_name or key.user_name != user_name:
            return error("EntityNotExist.User.AccessKey", "The AccessKey does not exist for the user.", 404)
        return key

    # -- groups ---------------------------------------------------------------------------------
    def create_group(self, name: str, comments: str, now: float) -> m.Group | Error:
        problem = self.bad_name("Group", name) or self.too_long("Comments", comments, MAX_COMMENTS) or \
            self._limit("Groups", len(self.groups), "LimitExceeded.Group")
        if problem:
            return problem
        if name in self.groups:
            return error("EntityAlreadyExists.Group", "The group does already EXIST.", 409)
        group = m.Group(group_id=self._new_id(), group_name=name, create_date=iso(now), update_date=iso(now), comments=comments)
        self.groups[name] = group
        self.members[name] = {}
        return group

    def group(self, name: str) -> m.Group | Error:
        return self.groups.get(name) or error("EntityNotExist.Group", f"The group {name} does not exist.", 404)

    def update_group(self, name: str, new_name: str, comments: str, now: float) -> m.Group | Error:
        group = self.group(name)
        if isinstance(group, Error):
            return group
        problem = self._bad_rename("Group", self.groups, name, new_name) or self.too_long("NewComments", comments, MAX_COMMENTS)
        if problem:
            return problem
        if new_name and new_name != name:
            self._rename("Group", name, new_name)
        updated = replace(group, group_name=new_name or name, comments=comments or group.comments, update_date=iso(now))
        self.groups[updated.group_name] = updated
        self.changed()
        return updated

    def delete_group(self, name: str) -> Error | None:
        group = self.group(name)
        if isinstance(group, Error):
            return group
        if self.members.get(name):
            return error("DeleteConflict.Group.User", "The group has members; remove them first.", 409)
        if self.attached.get(("Group", name)):
            return error("DeleteConflict.Group.Policy", "The group has policies attached; detach them first.", 409)
        del self.groups[name]
        self.members.pop(name, None)
        self.changed()
        return None

    def join(self, user_name: str, group_name: str, now: float) -> Error | None:
        user, group = self.user(user_name), self.group(group_name)
        for found in (user, group):
            if isinstance(found, Error):
                return found
        if user_name in self.members[group_name]:
            return error("EntityAlreadyExists.User.Group", "The user is already in the group.", 409)
        if len(self.groups_of(user_name)) >= LIMITS["GroupsPerUser"]:
            return error("LimitExceeded.User.Group", f"A user can join at most {LIMITS['GroupsPerUser']} groups.", 409)
        self.members[group_name][user_name] = iso(now)
        self.changed()
        return None

    def leave(self, user_name: str, group_name: str) -> Error | None:
        user, group = self.user(user_name), self.group(group_name)
        for found in (user, group):
            if isinstance(found, Error):
                return found
        if user_name not in self.members[group_name]:
            return error("EntityNotExist.User.Group", "The user is not in the group.", 404)
        del self.members[group_name][user_name]
        self.changed()
        return None

    # -- roles ----------------------------------------------------------------------------------
    def create_role(self, name: str, trust_text: str, description: str, max_session: int, now: float) -> m.Role | Error:
        problem = self.bad_name("Role", name) or self.too_long("Description", description, MAX_DESCRIPTION) or \
            self._session_limit(max_session) or self._limit("Roles", len(self.roles), "LimitExceeded.Role")
        if problem:
            return problem
        if name in self.roles:
            return error("EntityAlreadyExists.Role", "The role does already EXIST.", 409)
        trust = self._trust(trust_text)
        if isinstance(trust, Error):
            return trust
        role = m.Role(role_id=self._new_id(17), role_name=name, arn=f"acs:ram::{self.account_id}:role/{name}",
                      assume_role_policy_document=trust_text, create_date=iso(now), update_date=iso(now),
                      max_session_duration=max_session, description=description)
        self.roles[name] = (role, trust)
        return role

    @staticmethod
    def _session_limit(seconds: int) -> Error | None:
        if not 3600 <= seconds <= 43200:
            return error("InvalidParameter.MaxSessionDuration", "MaxSessionDuration must be 3600-43200 seconds.")
        return None

    @staticmethod
    def _trust(text: str) -> policy.Document | Error:
        if len(text) > 2048:
            return error("InvalidParameter.AssumeRolePolicyDocument.Length", 'The parameter - "AssumeRolePolicyDocument" is beyond the length limit (2048).')
        try:
            return policy.parse(text, trust=True)
        except policy.PolicyError as exc:
            return error("MalformedPolicyDocument", f"AssumeRolePolicyDocument: {exc}")

    def role(self, name: str) -> tuple[m.Role, policy.Document] | Error:
        return self.roles.get(name) or error("EntityNotExist.Role", "The specified Role not exists.", 404)

    def update_role(self, name: str, trust_text: str, max_session: int, description: str, now: float) -> m.Role | Error:
        found = self.role(name)
        if isinstance(found, Error):
            return found
        role, trust = found
        if trust_text:
            trust = self._trust(trust_text)
            if isinstance(trust, Error):
                return trust
        if max_session:
            problem = self._session_limit(max_session)
            if problem:
                return problem
        problem = self.too_long("NewDescription", description, MAX_DESCRIPTION)
        if problem:
            return problem
        role = replace(role, assume_role_policy_document=trust_text or role.assume_role_policy_document,
                       max_session_duration=max_session or role.max_session_duration,
                       description=description or role.description, update_date=iso(now))
        self.roles[name] = (role, trust)
        self.changed()
        return role

    def delete_role(self, name: str) -> Error | None:
        found = self.role(name)
        if isinstance(found, Error):
            return found
        if self.attached.get(("Role", name)):
            return error("DeleteConflict.Role.Policy", "The role has policies attached; detach them first.", 409)
        del self.roles[name]
        self.changed()
        return None

    # -- policies and versions ------------------------------------------------------------------
    def add_system_policy(self, name: str, description: str, text: str, now: float) -> None:
        record = m.Policy(policy_name=name, policy_type="System", description=description, create_date=iso(now),
                          update_date=iso(now))
        self.policies[("System", name)] = PolicyRecord(record, {"v1": Version("v1", policy.parse(text), iso(now))})

    def find_policy(self, policy_type: str, name: str) -> PolicyRecord | Error:
        if policy_type not in ("System", "Custom"):
            return error("InvalidParameter.PolicyType", 'The parameter - "PolicyType" is incorrect.')
        record = self.policies.get((policy_type, name))
        if record is None:
            return error("EntityNotExist.Policy", f"The policy {policy_type}:{name} does not exist.", 404)
        return record

    @staticmethod
    def _document(text: str) -> policy.Document | Error:
        try:
            return policy.parse(text)
        except policy.PolicyError as exc:
            code = getattr(exc, "code", "MalformedPolicyDocument")
            return error(code, str(exc))

    def create_policy(self, name: str, text: str, description: str, now: float) -> m.Policy | Error:
        problem = self.bad_name("Policy", name) or self.too_long("Description", description, MAX_DESCRIPTION) or \
            self._limit("Policies", sum(1 for t, _ in self.policies if t == "Custom"), "LimitExceeded.Policy")
        if problem:
            return problem
        if ("Custom", name) in self.policies:
            return error("EntityAlreadyExists.Policy", "The policy does already EXIST.", 409)
        document = self._document(text)
        if isinstance(document, Error):
            return document
        record = m.Policy(policy_name=name, policy_type="Custom", description=description, create_date=iso(now), update_date=iso(now))
        self.policies[("Custom", name)] = PolicyRecord(record, {"v1": Version("v1", document, iso(now))})
        return record

    def custom_policy(self, name: str) -> PolicyRecord | Error:
        return self.find_policy("Custom", name)

    def delete_policy(self, name: str) -> Error | None:
        record = self.custom_policy(name)
        if isinstance(record, Error):
            return record
        for (kind, _), attachments in self.attached.items():
            if any((a.policy_type, a.policy_name) == ("Custom", name) for a in attachments):
                return error(f"DeleteConflict.Policy.{kind}", f"The policy is attached to a {kind.lower()}; detach it first.", 409)
        if len(record.versions) > 1:
            return error("DeleteConflict.Policy.Version", "The policy has non-default versions; delete them first.", 409)
        del self.policies[("Custom", name)]
        self.changed()
        return None

    def create_version(self, name: str, text: str, set_default: bool, rotate: str, now: float) -> m.PolicyVersion | Error:
        record = self.custom_policy(name)
        if isinstance(record, Error):
            return record
        if rotate not in ("None", "DeleteOldestNonDefaultVersionWhenLimitExceeded"):
            return error("InvalidParameter.RotateStrategy", 'The parameter - "RotateStrategy" is incorrect.')
        document = self._document(text)
        if isinstance(document, Error):
            return document
        if len(record.versions) >= LIMITS["VersionsPerPolicy"]:
            oldest = next((v for v in record.versions if v != record.policy.default_version), None)
            if rotate == "None" or oldest is None:
                return error("LimitExceeded.Policy.Version",
                             f"Exceeded the limit of policy versions. The maximum number of versions allowed is {LIMITS['VersionsPerPolicy']}", 409)
            del record.versions[oldest]
        version_id = f"v{record.next_version}"
        record.next_version += 1
        record.versions[version_id] = Version(version_id, document, iso(now))
        if set_default:
            record.policy = replace(record.policy, default_version=version_id, update_date=iso(now))
            self.changed()
        return self.version_shape(record, version_id)

    def version_shape(self, record: PolicyRecord, version_id: str) -> m.PolicyVersion:
        v = record.versions[version_id]
        return m.PolicyVersion(version_id=v.version_id, is_default_version=version_id == record.policy.default_version,
                               create_date=v.create_date, policy_document=v.document.text)

    def version(self, record: PolicyRecord, version_id: str) -> Version | Error:
        if not re.match(r"^v\d+$", version_id):
            return error("InvalidParameter.VersionId.Format", 'The parameter - "VersionId" must look like v1.')
        return record.versions.get(version_id) or error("EntityNotExist.Policy.Version", "The policy version does not exist.", 404)

    def set_default(self, name: str, version_id: str, now: float) -> Error | None:
        record = self.custom_policy(name)
        if isinstance(record, Error):
            return record
        found = self.version(record, version_id)
        if isinstance(found, Error):
            return found
        record.policy = replace(record.policy, default_version=version_id, update_date=iso(now))
        self.changed()
        return None

    def delete_version(self, name: str, version_id: str) -> Error | None:
        record = self.custom_policy(name)
        if isinstance(record, Error):
            return record
        found = self.version(record, version_id)
        if isinstance(found, Error):
            return found
        if version_id == record.policy.default_version:
            return error("DeleteConflict.Policy.Version.Default", "The default version of a policy cannot be deleted.", 409)
        del record.versions[version_id]
        return None

    # -- attachments (one table for users, groups and roles) ------------------------------------
    def principal(self, kind: Kind, name: str) -> object | Error:
        if kind == "User":
            return self.user(name)
        if kind == "Group":
            return self.group(name)
        return self.role(name)

    def attach(self, kind: Kind, name: str, policy_type: str, policy_name: str, now: float) -> Error | None:
        for found in (self.principal(kind, name), self.find_policy(policy_type, policy_name)):
            if isinstance(found, Error):
                return found
        attachments = self.attached.setdefault((kind, name), [])
        if any((a.policy_type, a.policy_name) == (policy_type, policy_name) for a in attachments):
            return error(f"EntityAlreadyExists.{kind}.Policy", f"The policy is already attached to the {kind.lower()}.", 409)
        if len(attachments) >= LIMITS["PoliciesPerPrincipal"]:
            return error(f"LimitExceeded.{kind}.Policy", f"A {kind.lower()} can have at most {LIMITS['PoliciesPerPrincipal']} policies.", 409)
        attachments.append(Attachment(policy_type, policy_name, iso(now)))
        self.changed()
        return None

    def detach(self, kind: Kind, name: str, policy_type: str, policy_name: str) -> Error | None:
        for found in (self.principal(kind, name), self.find_policy(policy_type, policy_name)):
            if isinstance(found, Error):
                return found
        attachments = self.attached.get((kind, name), [])
        kept = [a for a in attachments if (a.policy_type, a.policy_name) != (policy_type, policy_name)]
        if len(kept) == len(attachments):
            return error(f"EntityNotExist.{kind}.Policy", f"The policy is not attached to the {kind.lower()}.", 404)
        self.attached[(kind, name)] = kept
        self.changed()
        return None

    def attached_policies(self, kind: Kind, name: str) -> list[m.Policy] | Error:
        found = self.principal(kind, name)
        if isinstance(found, Error):
            return found
        listed = []
        for a in self.attached.get((kind, name), []):
            p = self.policies[(a.policy_type, a.policy_name)].policy
            listed.append(replace(p, attach_date=a.attach_date))
        return listed

    def entities_for(self, policy_type: str, policy_name: str) -> dict[Kind, list[tuple[str, str]]] | Error:
        found = self.find_policy(policy_type, policy_name)
        if isinstance(found, Error):
            return found
        entities: dict[Kind, list[tuple[str, str]]] = {"User": [], "Group": [], "Role": []}
        for (kind, name), attachments in self.attached.items():
            for a in attachments:
                if (a.policy_type, a.policy_name) == (policy_type, policy_name):
                    entities[kind].append((name, a.attach_date))
        return entities

    def effective(self, kind: Kind, name: str) -> list[policy.NamedPolicy]:
        """The policies that apply to a user (its own and its groups') or a role, by default version."""
        holders: list[tuple[Kind, str]] = [(kind, name)]
        if kind == "User":
            holders += [("Group", g) for g in self.groups_of(name)]
        named = []
        for holder in holders:
            for a in self.attached.get(holder, []):
                record = self.policies.get((a.policy_type, a.policy_name))
                if record is not None:
                    named.append(policy.NamedPolicy(f"{a.policy_type}:{a.policy_name}", record.policy.default_version,
                                                    record.default.document))
        return named


_MOBILE_PHONE = re.compile(r"^[0-9]{1,3}-[0-9]{4,15}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")


def _bad_contact(prefix: str, mobile_phone: str, email: str) -> Error | None:
    """A user's contact data as RAM takes it: ``86-18600008888``, and an address with one ``@``."""
    if mobile_phone and not _MOBILE_PHONE.match(mobile_phone):
        return error(f"InvalidParameter.{prefix}MobilePhone", f'The parameter - "{prefix}MobilePhone" must be <country code>-<number>.')
    if email and not _EMAIL.match(email):
        return error(f"InvalidParameter.{prefix}Email", f'The parameter - "{prefix}Email" is not an email address.')
    return None
