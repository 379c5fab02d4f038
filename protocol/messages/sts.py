"""Pure protocol: STS (API version 2015-04-01) commands, replies and events."""

from __future__ import annotations

from protocol.base import Message, Shape
from protocol.errors import Error
from protocol.messages.common import ApiCommand


class Credentials(Shape):
    access_key_id: str
    access_key_secret: str
    security_token: str
    expiration: str


class AssumedRoleUser(Shape):
    arn: str
    assumed_role_id: str


class AssumeRole(ApiCommand):
    """Assume ``role_arn``. ``caller`` is a RAM principal, or the ECS service principal when
    ECS obtains credentials for an instance."""

    role_arn: str
    role_session_name: str
    duration_seconds: int = 3600
    policy: str = ""


class AssumeRoleOk(Message):
    credentials: Credentials
    assumed_role_user: AssumedRoleUser


class GetCallerIdentity(ApiCommand):
    """Who am I? No parameters and no permission needed."""


class GetCallerIdentityOk(Message):
    account_id: str
    arn: str
    identity_type: str
    principal_id: str
    user_id: str = ""
    role_id: str = ""


class RoleAssumed(Message):
    """Event: a session was minted (no secret material)."""

    access_key_id: str
    role_arn: str
    session_name: str
    expires_at: float


class AssumeRoles(Message):
    """ECS -> STS (ramsim-internal, not an API): several AssumeRole calls of the ECS service
    principal in one message, e.g. a batch attach of up to 100 instances: one round trip to
    STS, and one role lookup in RAM per distinct role, instead of one each. Only ECS may send it."""

    requests: list[AssumeRole]


class AssumeRoleResult(Shape):
    """One answer of :class:`AssumeRolesOk`: the credential, or why there is none."""

    ok: AssumeRoleOk | None = None
    error: Error | None = None


class AssumeRolesOk(Message):
    results: list[AssumeRoleResult]  # in the order of AssumeRoles.requests


COMMANDS = (AssumeRole, GetCallerIdentity)
ALL = (AssumeRole, AssumeRoleOk, GetCallerIdentity, GetCallerIdentityOk, RoleAssumed, AssumeRoles, AssumeRolesOk)
