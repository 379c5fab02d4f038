"""Pure protocol: RAM (API version 2015-05-01) commands, replies, internal queries and events.

API commands carry ``caller``, the principal the gateway authenticated; a client-supplied
value is always overwritten.
"""

from __future__ import annotations

from protocol.base import Message, Shape
from protocol.messages.common import Principal


# -- shapes ---------------------------------------------------------------------------------
class Role(Shape):
    role_id: str
    role_name: str
    arn: str
    assume_role_policy_document: str
    create_date: str
    max_session_duration: int = 3600
    description: str = ""


class Policy(Shape):
    policy_name: str
    policy_type: str
    default_version: str = "v1"
    create_date: str = ""
    description: str = ""
    attach_date: str = ""


class User(Shape):
    user_id: str
    user_name: str
    create_date: str
    display_name: str = ""
    comments: str = ""


class AccessKey(Shape):
    access_key_id: str
    status: str
    create_date: str
    access_key_secret: str = ""


class PolicyList(Shape):
    policy: list[Policy] = []


class Check(Shape):
    """One question for :class:`Authorize`: may the principal do ``action`` on ``resource``?"""

    action: str
    resource: str


class Decision(Shape):
    allowed: bool
    reason: str


# -- API commands and replies ----------------------------------------------------------------
class CreateRole(Message):
    role_name: str
    assume_role_policy_document: str
    description: str = ""
    max_session_duration: int = 3600
    caller: Principal | None = None


class CreateRoleOk(Message):
    role: Role


class GetRole(Message):
    role_name: str
    caller: Principal | None = None


class GetRoleOk(Message):
    role: Role


class CreatePolicy(Message):
    policy_name: str
    policy_document: str
    description: str = ""
    caller: Principal | None = None


class CreatePolicyOk(Message):
    policy: Policy


class AttachPolicyToRole(Message):
    policy_type: str
    policy_name: str
    role_name: str
    caller: Principal | None = None


class AttachPolicyToRoleOk(Message):
    pass


class DetachPolicyFromRole(Message):
    policy_type: str
    policy_name: str
    role_name: str
    caller: Principal | None = None


class DetachPolicyFromRoleOk(Message):
    pass


class ListPoliciesForRole(Message):
    role_name: str
    caller: Principal | None = None


class ListPoliciesForRoleOk(Message):
    policies: PolicyList


class CreateUser(Message):
    user_name: str
    display_name: str = ""
    comments: str = ""
    caller: Principal | None = None


class CreateUserOk(Message):
    user: User


class CreateAccessKey(Message):
    user_name: str = ""
    caller: Principal | None = None


class CreateAccessKeyOk(Message):
    access_key: AccessKey


class UpdateAccessKey(Message):
    user_access_key_id: str
    status: str
    user_name: str = ""
    caller: Principal | None = None


class UpdateAccessKeyOk(Message):
    pass


class AttachPolicyToUser(Message):
    policy_type: str
    policy_name: str
    user_name: str
    caller: Principal | None = None


class AttachPolicyToUserOk(Message):
    pass


# -- internal queries ------------------------------------------------------------------------
class Authorize(Message):
    """May ``principal`` do each of ``checks``? Answered with one Decision per check."""

    principal: Principal
    checks: list[Check]


class AuthorizeOk(Message):
    decisions: list[Decision]


# -- events (published after the change) -----------------------------------------------------
class RoleCreated(Message):
    role: Role


class PolicyCreated(Message):
    policy: Policy


class PolicyAttachedToRole(Message):
    policy_type: str
    policy_name: str
    role_name: str


class PolicyDetachedFromRole(Message):
    policy_type: str
    policy_name: str
    role_name: str


class UserCreated(Message):
    user: User


class PolicyAttachedToUser(Message):
    policy_type: str
    policy_name: str
    user_name: str


COMMANDS = (CreateRole, GetRole, CreatePolicy, AttachPolicyToRole, DetachPolicyFromRole,
            ListPoliciesForRole, CreateUser, CreateAccessKey, UpdateAccessKey, AttachPolicyToUser)
REPLIES = (CreateRoleOk, GetRoleOk, CreatePolicyOk, AttachPolicyToRoleOk, DetachPolicyFromRoleOk,
           ListPoliciesForRoleOk, CreateUserOk, CreateAccessKeyOk, UpdateAccessKeyOk, AttachPolicyToUserOk)
EVENTS = (RoleCreated, PolicyCreated, PolicyAttachedToRole, PolicyDetachedFromRole, UserCreated,
          PolicyAttachedToUser)
ALL = (*COMMANDS, *REPLIES, Authorize, AuthorizeOk, *EVENTS)
