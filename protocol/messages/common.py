"""Pure protocol: messages shared by every service (liveness, identity, authentication)."""

from __future__ import annotations

from typing import Literal

from protocol.base import Message, Shape

IdentityType = Literal["Account", "RAMUser", "AssumedRoleUser", "Service"]
DropReason = Literal["malformed", "forged", "caller_refused", "core_failed", "unexpected_reply"]


# The cloud services that act as themselves (ECS assumes roles and reads them as
# ecs.aliyuncs.com; STS reads roles as sts.aliyuncs.com): the only Service principals there are.
SERVICE_PRINCIPALS = frozenset({"ecs.aliyuncs.com", "sts.aliyuncs.com"})


class Principal(Shape):
    """An authenticated caller, as RAM or STS vouched for it.

    ``arn`` is Alibaba's: ``acs:ram::<acct>:root``, ``acs:ram::<acct>:user/<name>``,
    ``acs:ram::<acct>:assumed-role/<role>/<session>``; services are ``<svc>.aliyuncs.com``.
    """

    identity_type: IdentityType
    account_id: str
    arn: str
    principal_id: str
    user_name: str = ""
    role_name: str = ""
    role_id: str = ""
    session_name: str = ""
    session_policy: str = ""
    access_key_id: str = ""


class ApiCommand(Message, kw_only=True):
    """Base of every API command: ``caller`` is the principal the gateway authenticated, and
    ``request_context`` the condition keys it observed (``acs:SourceIp``,
    ``acs:SecureTransport``). Clients can set neither."""

    caller: Principal | None = None
    request_context: dict[str, str] = {}


class Ping(Message):
    """Are you there? Answered by every node once it is ready."""


class PingOk(Message):
    node: str
    started_at: float


class Authenticate(Message):
    """Verify a signed API request. Sent to ``ram`` for AccessKeys, to ``sts`` for ``STS.`` keys.

    The verifier holds the secret; the asker never does. ``string_to_sign`` is what the
    signature scheme (``signature_method``) signs.
    """

    access_key_id: str
    signature: str
    string_to_sign: str
    signature_method: str = "HMAC-SHA1"
    security_token: str = ""
    want_signing_key: bool = False  # OSS only: also return the V4 key scoped to this request's day/region/product


class AuthenticateOk(Message):
    principal: Principal
    signing_key: str = ""     # hex; a scoped V4 derived key, never the secret (see signing.oss4_signing_key)
    valid_until: float = 0.0  # epoch seconds: the end of the key's day, or the session's expiry if sooner


class DeadLetter(Message):
    """Event on ``topics.deadletter(node)``: ``node`` dropped a message it received on ``topic``.

    ``reason``: ``malformed`` (did not decode; ``field`` and ``detail`` say where and why),
    ``forged`` (the envelope's ``src`` is not the topic's sender), ``caller_refused`` (an API
    command naming a caller its sender may not speak for), ``core_failed`` (the core raised on
    it; the request was answered ``InternalError``), ``unexpected_reply`` (a reply to nothing
    pending from that node: late, duplicated or from the wrong node). ``src`` is the envelope's
    self-declared sender when readable, ``body`` its body type. The payload itself is never
    carried (it may hold secrets): ``size`` and ``sha256`` identify it.
    """

    node: str
    topic: str
    reason: DropReason
    size: int
    sha256: str
    field: str = ""
    detail: str = ""
    src: str = ""
    body: str = ""


ALL = (Ping, PingOk, Authenticate, AuthenticateOk, DeadLetter)
