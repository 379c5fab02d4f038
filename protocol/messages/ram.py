"""Pure protocol: RAM (API version 2015-05-01) commands, replies, internal queries and events.

API commands derive from :class:`~protocol.messages.common.ApiCommand` and carry ``caller``,
the principal the gateway authenticated (a client-supplied value is always overwritten).
Lists use Alibaba's XML-style wrappers (``Users.User[]``, ``Policies.Policy[]``).
Events carry RAM's ``generation``: it grows with every change that can alter a decision, so
an enforcement point can tell a cached answer from before a change from one after it.
"""

from __future__ import annotations

from protocol.base import Message, Shape
from protocol.messages.common import ApiCommand, Principal


# -- shapes ---------------------------------------------------------------------------------
class Role(Shape):
    role_id: str
    role_name: str
    arn: str
    assume_role_policy_document: str
    create_date: str
    max_session_duration: int = 3600
    description: str = ""
    update_date: str = ""
    attach_date: str = ""  # ListEntitiesForPolicy's


class Policy(Shape):
    policy_name: str
    policy_type: str
    default_version: str = "v1"
    create_date: str = ""
    update_date: str = ""
    description: str = ""
    attach_date: str = ""
    attachment_count: int = 0
    policy_document: str = ""  # GetPolicy's: the default version's document


class PolicyVersion(Shape):
    version_id: str
    is_default_version: bool
    create_date: str
    policy_document: str = ""


class User(Shape):
    user_id: str
    user_name: str
    create_date: str
    display_name: str = ""
    comments: str = ""
    update_date: str = ""
    attach_date: str = ""
    join_date: str = ""
    mobile_phone: str = ""
    email: str = ""


class Group(Shape):
    group_id: str
    group_name: str
    create_date: str
    comments: str = ""
    update_date: str = ""
    attach_date: str = ""
    join_date: str = ""


class AccessKey(Shape):
    access_key_id: str
    status: str
    create_date: str
    access_key_secret: str = ""


class PolicyList(Shape):
    policy: list[Policy] = []


class PolicyVersionList(Shape):
    policy_version: list[PolicyVersion] = []


class UserList(Shape):
    user: list[User] = []


class GroupList(Shape):
    group: list[Group] = []


class RoleList(Shape):
    role: list[Role] = []


class AccessKeyList(Shape):
    access_key: list[AccessKey] = []


class Check(Shape):
    """One question for :class:`Authorize`: may the principal do ``action`` on ``resource``?

    ``context`` holds request condition keys (``acs:SourceIp``, ``acs:SecureTransport``, ...)."""

    action: str
    resource: str
    context: dict[str, str] = {}


class Match(Shape):
    policy: str
    version: str
    statement: int
    effect: str
    sid: str = ""


class Decision(Shape):
    allowed: bool
    reason: str
    decision: str = "ImplicitDeny"  # Allow | ExplicitDeny | ImplicitDeny
    matches: list[Match] = []


class PolicyDocument(Shape):
    """A policy as an enforcement point needs it to decide by itself."""

    name: str      # "System:AdministratorAccess"
    version: str
    document: str


# -- roles ----------------------------------------------------------------------------------
class CreateRole(ApiCommand):
    role_name: str
    assume_role_policy_document: str
    description: str = ""
    max_session_duration: int = 3600


class CreateRoleOk(Message):
    role: Role


class GetRole(ApiCommand):
    role_name: str


class GetRoleOk(Message):
    role: Role


class UpdateRole(ApiCommand):
    role_name: str
    new_assume_role_policy_document: str = ""
    new_max_session_duration: int = 0
    new_description: str = ""


class UpdateRoleOk(Message):
    role: Role


class DeleteRole(ApiCommand):
    role_name: str


class DeleteRoleOk(Message):
    pass


class ListRoles(ApiCommand):
    marker: str = ""
    max_items: int = 100


class ListRolesOk(Message):
    roles: RoleList
    is_truncated: bool  # always answered: SDK paging loops test it
    marker: str = ""


# -- users and AccessKeys -------------------------------------------------------------------
class CreateUser(ApiCommand):
    user_name: str
    display_name: str = ""
    comments: str = ""
    mobile_phone: str = ""  # <country code>-<number>, 86-18600008888
    email: str = ""


class CreateUserOk(Message):
    user: User


class GetUser(ApiCommand):
    user_name: str


class GetUserOk(Message):
    user: User


class UpdateUser(ApiCommand):
    user_name: str
    new_user_name: str = ""
    new_display_name: str = ""
    new_comments: str = ""
    new_mobile_phone: str = ""
    new_email: str = ""


class UpdateUserOk(Message):
    user: User


class DeleteUser(ApiCommand):
    user_name: str


class DeleteUserOk(Message):
    pass


class ListUsers(ApiCommand):
    marker: str = ""
    max_items: int = 100


class ListUsersOk(Message):
    users: UserList
    is_truncated: bool  # always answered: SDK paging loops test it
    marker: str = ""


class CreateAccessKey(ApiCommand):
    user_name: str = ""


class CreateAccessKeyOk(Message):
    access_key: AccessKey


class UpdateAccessKey(ApiCommand):
    user_access_key_id: str
    status: str
    user_name: str = ""


class UpdateAccessKeyOk(Message):
    pass


class DeleteAccessKey(ApiCommand):
    user_access_key_id: str
    user_name: str = ""


class DeleteAccessKeyOk(Message):
    pass


class ListAccessKeys(ApiCommand):
    user_name: str = ""


class ListAccessKeysOk(Message):
    access_keys: AccessKeyList


# -- groups ---------------------------------------------------------------------------------
class CreateGroup(ApiCommand):
    group_name: str
    comments: str = ""


class CreateGroupOk(Message):
    group: Group


class GetGroup(ApiCommand):
    group_name: str


class GetGroupOk(Message):
    group: Group


class UpdateGroup(ApiCommand):
    group_name: str
    new_group_name: str = ""
    new_comments: str = ""


class UpdateGroupOk(Message):
    group: Group


class DeleteGroup(ApiCommand):
    group_name: str


class DeleteGroupOk(Message):
    pass


class ListGroups(ApiCommand):
    marker: str = ""
    max_items: int = 100


class ListGroupsOk(Message):
    groups: GroupList
    is_truncated: bool  # always answered: SDK paging loops test it
    marker: str = ""


class AddUserToGroup(ApiCommand):
    user_name: str
    group_name: str


class AddUserToGroupOk(Message):
    pass


class RemoveUserFromGroup(ApiCommand):
    user_name: str
    group_name: str


class RemoveUserFromGroupOk(Message):
    pass


class ListGroupsForUser(ApiCommand):
    user_name: str


class ListGroupsForUserOk(Message):
    groups: GroupList


class ListUsersForGroup(ApiCommand):
    group_name: str
    marker: str = ""
    max_items: int = 100


class ListUsersForGroupOk(Message):
    users: UserList
    is_truncated: bool  # always answered: SDK paging loops test it
    marker: str = ""


# -- policies and versions ------------------------------------------------------------------
class CreatePolicy(ApiCommand):
    policy_name: str
    policy_document: str
    description: str = ""


class CreatePolicyOk(Message):
    policy: Policy


class GetPolicy(ApiCommand):
    policy_name: str
    policy_type: str = "Custom"


class GetPolicyOk(Message):
    policy: Policy
    default_policy_version: PolicyVersion


class DeletePolicy(ApiCommand):
    policy_name: str


class DeletePolicyOk(Message):
    pass


class ListPolicies(ApiCommand):
    policy_type: str = ""
    marker: str = ""
    max_items: int = 100


class ListPoliciesOk(Message):
    policies: PolicyList
    is_truncated: bool  # always answered: SDK paging loops test it
    marker: str = ""


class CreatePolicyVersion(ApiCommand):
    policy_name: str
    policy_document: str
    set_as_default: bool = False
    rotate_strategy: str = "None"


class CreatePolicyVersionOk(Message):
    policy_version: PolicyVersion


class GetPolicyVersion(ApiCommand):
    policy_name: str
    version_id: str
    policy_type: str = "Custom"


class GetPolicyVersionOk(Message):
    policy_version: PolicyVersion


class ListPolicyVersions(ApiCommand):
    policy_name: str
    policy_type: str = "Custom"


class ListPolicyVersionsOk(Message):
    policy_versions: PolicyVersionList


class SetDefaultPolicyVersion(ApiCommand):
    policy_name: str
    version_id: str


class SetDefaultPolicyVersionOk(Message):
    pass


class DeletePolicyVersion(ApiCommand):
    policy_name: str
    version_id: str


class DeletePolicyVersionOk(Message):
    pass


# -- attachments ----------------------------------------------------------------------------
class AttachPolicyToUser(ApiCommand):
    policy_type: str
    policy_name: str
    user_name: str


class AttachPolicyToUserOk(Message):
    pass


class DetachPolicyFromUser(ApiCommand):
    policy_type: str
    policy_name: str
    user_name: str


class DetachPolicyFromUserOk(Message):
    pass


class AttachPolicyToGroup(ApiCommand):
    policy_type: str
    policy_name: str
    group_name: str


class AttachPolicyToGroupOk(Message):
    pass


class DetachPolicyFromGroup(ApiCommand):
    policy_type: str
    policy_name: str
    group_name: str


class DetachPolicyFromGroupOk(Message):
    pass


class AttachPolicyToRole(ApiCommand):
    policy_type: str
    policy_name: str
    role_name: str


class AttachPolicyToRoleOk(Message):
    pass


class DetachPolicyFromRole(ApiCommand):
    policy_type: str
    policy_name: str
    role_name: str


class DetachPolicyFromRoleOk(Message):
    pass


class ListPoliciesForUser(ApiCommand):
    user_name: str


class ListPoliciesForUserOk(Message):
    policies: PolicyList


class ListPoliciesForGroup(ApiCommand):
    group_name: str


class ListPoliciesForGroupOk(Message):
    policies: PolicyList


class ListPoliciesForRole(ApiCommand):
    role_name: str


class ListPoliciesForRoleOk(Message):
    policies: PolicyList


class ListEntitiesForPolicy(ApiCommand):
    policy_name: str
    policy_type: str = "Custom"


class ListEntitiesForPolicyOk(Message):
    users: UserList
    groups: GroupList
    roles: RoleList


# -- explanation (ramsim extension, not an Alibaba API) --------------------------------------
class SimulatePrincipalPolicy(ApiCommand):
    """Would ``principal_type`` (User | Role) ``principal_name`` be allowed ``action_name`` on
    ``resource_name``? ``context`` is a JSON object of condition keys."""

    principal_type: str
    principal_name: str
    action_name: str
    resource_name: str = "*"
    context: str = ""


class SimulatePrincipalPolicyOk(Message):
    decision: Decision


# -- internal queries ------------------------------------------------------------------------
class Authorize(Message):
    """May ``principal`` do each of ``checks``? Answered with one Decision per check."""

    principal: Principal
    checks: list[Check]


class AuthorizeOk(Message):
    decisions: list[Decision]
    generation: int = 0


class GetEffectivePolicies(Message):
    """Every policy that applies to ``principal`` (its own, its groups', its role's), so an
    enforcement point can decide by itself and cache them until a RAM event says otherwise."""

    principal: Principal


class GetEffectivePoliciesOk(Message):
    policies: list[PolicyDocument]
    all_allowed: bool = False  # the account itself: everything is allowed
    generation: int = 0


class WatchDecisions(Message):
    """From an enforcement point that decides locally with cached policies and is reached by
    another road than the bus (OSS's HTTP): from now on RAM answers a change only after this
    node acknowledged its event (:class:`EventApplied`), so the caller's next request to it is
    decided with the change. Only the nodes RAM knows as such enforcement points may ask."""


class WatchDecisionsOk(Message):
    generation: int  # RAM's current generation: the watcher has applied everything up to it


class EventApplied(Message):
    """One-way, to RAM: the sender's cache reflects every change up to ``generation``."""

    generation: int


class WatchDropped(Message):
    """One-way, from RAM: the watcher did not acknowledge in time and no longer watches; it must
    not decide from its cache alone until it watches again."""

    waited_for: int


# -- events (published before the reply to the change, carrying the new generation) ---------
class RoleCreated(Message):
    role: Role
    generation: int = 0


class RoleChanged(Message):
    role_name: str
    deleted: bool = False
    generation: int = 0


class PolicyCreated(Message):
    policy: Policy
    generation: int = 0


class PolicyChanged(Message):
    """A policy's default version changed, or the policy was deleted."""

    policy_type: str
    policy_name: str
    default_version: str = ""
    deleted: bool = False
    generation: int = 0


class PolicyAttachedToRole(Message):
    policy_type: str
    policy_name: str
    role_name: str
    generation: int = 0


class PolicyDetachedFromRole(Message):
    policy_type: str
    policy_name: str
    role_name: str
    generation: int = 0


class PolicyAttachedToUser(Message):
    policy_type: str
    policy_name: str
    user_name: str
    generation: int = 0


class PolicyDetachedFromUser(Message):
    policy_type: str
    policy_name: str
    user_name: str
    generation: int = 0


class PolicyAttachedToGroup(Message):
    policy_type: str
    policy_name: str
    group_name: str
    generation: int = 0


class PolicyDetachedFromGroup(Message):
    policy_type: str
    policy_name: str
    group_name: str
    generation: int = 0


class UserCreated(Message):
    user: User
    generation: int = 0


class UserChanged(Message):
    user_name: str
    new_user_name: str = ""
    deleted: bool = False
    generation: int = 0


class GroupMembershipChanged(Message):
    user_name: str
    group_name: str
    member: bool
    generation: int = 0


class GroupChanged(Message):
    group_name: str
    new_group_name: str = ""
    deleted: bool = False
    generation: int = 0


class AccessKeyChanged(Message):
    """No secret: the key id, its owner and its status (Deleted when removed)."""

    access_key_id: str
    user_name: str
    status: str
    generation: int = 0


COMMANDS = (
    CreateRole, GetRole, UpdateRole, DeleteRole, ListRoles,
    CreateUser, GetUser, UpdateUser, DeleteUser, ListUsers,
    CreateAccessKey, UpdateAccessKey, DeleteAccessKey, ListAccessKeys,
    CreateGroup, GetGroup, UpdateGroup, DeleteGroup, ListGroups, AddUserToGroup, RemoveUserFromGroup,
    ListGroupsForUser, ListUsersForGroup,
    CreatePolicy, GetPolicy, DeletePolicy, ListPolicies, CreatePolicyVersion, GetPolicyVersion, ListPolicyVersions,
    SetDefaultPolicyVersion, DeletePolicyVersion,
    AttachPolicyToUser, DetachPolicyFromUser, AttachPolicyToGroup, DetachPolicyFromGroup,
    AttachPolicyToRole, DetachPolicyFromRole,
    ListPoliciesForUser, ListPoliciesForGroup, ListPoliciesForRole, ListEntitiesForPolicy,
    SimulatePrincipalPolicy,
)
REPLIES = (
    CreateRoleOk, GetRoleOk, UpdateRoleOk, DeleteRoleOk, ListRolesOk,
    CreateUserOk, GetUserOk, UpdateUserOk, DeleteUserOk, ListUsersOk,
    CreateAccessKeyOk, UpdateAccessKeyOk, DeleteAccessKeyOk, ListAccessKeysOk,
    CreateGroupOk, GetGroupOk, UpdateGroupOk, DeleteGroupOk, ListGroupsOk, AddUserToGroupOk, RemoveUserFromGroupOk,
    ListGroupsForUserOk, ListUsersForGroupOk,
    CreatePolicyOk, GetPolicyOk, DeletePolicyOk, ListPoliciesOk, CreatePolicyVersionOk, GetPolicyVersionOk,
    ListPolicyVersionsOk, SetDefaultPolicyVersionOk, DeletePolicyVersionOk,
    AttachPolicyToUserOk, DetachPolicyFromUserOk, AttachPolicyToGroupOk, DetachPolicyFromGroupOk,
    AttachPolicyToRoleOk, DetachPolicyFromRoleOk,
    ListPoliciesForUserOk, ListPoliciesForGroupOk, ListPoliciesForRoleOk, ListEntitiesForPolicyOk,
    SimulatePrincipalPolicyOk,
)
EVENTS = (
    RoleCreated, RoleChanged, PolicyCreated, PolicyChanged, PolicyAttachedToRole, PolicyDetachedFromRole,
    PolicyAttachedToUser, PolicyDetachedFromUser, PolicyAttachedToGroup, PolicyDetachedFromGroup,
    UserCreated, UserChanged, GroupMembershipChanged, GroupChanged, AccessKeyChanged,
)
ALL = (*COMMANDS, *REPLIES, Authorize, AuthorizeOk, GetEffectivePolicies, GetEffectivePoliciesOk,
       WatchDecisions, WatchDecisionsOk, EventApplied, WatchDropped, *EVENTS)
