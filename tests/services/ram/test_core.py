"""The RAM core: roles, policies, users and AccessKeys, authentication, authorization, and the
enforcement of RAM's own API.

Every call goes through ``RamCore.handle`` with an explicit ``now``; assertions are on the
replies, published events and logs it returns, and on the directory it keeps. (Groups, policy
versions, paging and the rest of the API beyond these basics: ``test_api.py``.)
"""

from __future__ import annotations

import json
import re

import pytest

from protocol import topics
from protocol.errors import Error
from protocol.messages import common, ram as m
from protocol.messages.common import Principal
from services.ram.core import RamCore
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime import signing
from services.runtime.effects import Log, Publish, Reply
from tests.helpers import ACCOUNT, T0, entropy, envelope, reply, root

ROOT_AK = "LTAIrootrootrootroot0000"
ROOT_SECRET = "rootSecretrootSecretrootSecret"
T0_ISO = "2023-11-14T22:13:20Z"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STRING_TO_SIGN = "POST&%2F&AccessKeyId%3Dx%26Action%3DGetRole"
OSS_OBJECT = "acs:oss:*:1:bucket/key"


def policy_text(*statements: dict) -> str:
    return json.dumps({"Version": "1", "Statement": list(statements)})


def allow(action: object, resource: object = "*") -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def deny(action: object, resource: object = "*") -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


@pytest.fixture
def core() -> RamCore:
    return RamCore(account_id=ACCOUNT, root_access_key_id=ROOT_AK, root_access_key_secret=ROOT_SECRET,
                   entropy=entropy(), now=T0)


def run(core: RamCore, body: object, now: float = T0) -> list:
    return core.handle(envelope(body, dest="ram"), now)  # type: ignore[arg-type]


def ask(core: RamCore, body: object, now: float = T0) -> object:
    """The single reply to ``body``."""
    return reply(run(core, body, now))


def as_caller(body: object, caller: Principal | None) -> object:
    """``body`` with ``caller`` replaced."""
    fields = {f: getattr(body, f) for f in body.__struct_fields__ if f != "caller"}  # type: ignore[attr-defined]
    return type(body)(**fields, caller=caller)


def events(effects: list) -> list[tuple[str, object]]:
    return [(e.topic, e.body) for e in effects if isinstance(e, Publish)]


def assert_error(body: object, code: str, status: int = 400) -> Error:
    assert isinstance(body, Error), body
    assert (body.code, body.http_status) == (code, status), body
    return body


def create_role(core: RamCore, name: str = "EcsRole", trust: str = ECS_TRUST_POLICY, **kw: object) -> m.Role:
    answer = ask(core, m.CreateRole(role_name=name, assume_role_policy_document=trust, caller=root(), **kw))  # type: ignore[arg-type]
    assert isinstance(answer, m.CreateRoleOk), answer
    return answer.role


def create_policy(core: RamCore, name: str, text: str) -> None:
    assert isinstance(ask(core, m.CreatePolicy(policy_name=name, policy_document=text, caller=root())), m.CreatePolicyOk)


def create_user(core: RamCore, name: str = "alice") -> Principal:
    assert isinstance(ask(core, m.CreateUser(user_name=name, caller=root())), m.CreateUserOk)
    return core.user_principal(core.dir.users[name])


def attach_to_user(core: RamCore, user: str, name: str, kind: str = "System") -> None:
    answer = ask(core, m.AttachPolicyToUser(policy_type=kind, policy_name=name, user_name=user, caller=root()))
    assert isinstance(answer, m.AttachPolicyToUserOk), answer


def attach_to_role(core: RamCore, role: str, name: str, kind: str = "System") -> None:
    answer = ask(core, m.AttachPolicyToRole(policy_type=kind, policy_name=name, role_name=role, caller=root()))
    assert isinstance(answer, m.AttachPolicyToRoleOk), answer


def attached(core: RamCore, kind: str, name: str) -> list[tuple[str, str]]:
    return [(a.policy_type, a.policy_name) for a in core.dir.attached.get((kind, name), [])]  # type: ignore[index]


def create_key(core: RamCore, user: str) -> m.AccessKey:
    answer = ask(core, m.CreateAccessKey(user_name=user, caller=root()))
    assert isinstance(answer, m.CreateAccessKeyOk), answer
    return answer.access_key


def decide(core: RamCore, principal: Principal, action: str, resource: str = "*") -> m.Decision:
    answer = ask(core, m.Authorize(principal=principal, checks=[m.Check(action=action, resource=resource)]))
    assert isinstance(answer, m.AuthorizeOk) and len(answer.decisions) == 1, answer
    return answer.decisions[0]


def role_session(core: RamCore, role: str = "EcsRole", session_policy: str = "") -> Principal:
    record = core.dir.roles[role][0]
    return Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT,
                     arn=f"acs:ram::{ACCOUNT}:assumed-role/{role}/s1", principal_id=f"{record.role_id}:s1",
                     role_name=role, role_id=record.role_id, session_name="s1", session_policy=session_policy)


# -- CreateRole / GetRole ------------------------------------------------------------------
def test_create_role_returns_the_alibaba_role_shape(core: RamCore) -> None:
    answer = ask(core, m.CreateRole(role_name="EcsRole", assume_role_policy_document=ECS_TRUST_POLICY,
                                    description="for ECS", max_session_duration=7200, caller=root()))
    assert isinstance(answer, m.CreateRoleOk)
    role = answer.role
    assert role.role_name == "EcsRole"
    assert role.arn == f"acs:ram::{ACCOUNT}:role/EcsRole"
    assert role.create_date == T0_ISO and DATE.match(role.create_date)
    assert role.assume_role_policy_document == ECS_TRUST_POLICY
    assert (role.description, role.max_session_duration) == ("for ECS", 7200)
    assert len(role.role_id) == 17 and role.role_id.isdigit() and role.role_id[0] != "0"


def test_create_role_date_follows_now(core: RamCore) -> None:
    answer = ask(core, m.CreateRole(role_name="Later", assume_role_policy_document=ECS_TRUST_POLICY, caller=root()),
                 now=T0 + 86400 + 61.9)
    assert isinstance(answer, m.CreateRoleOk)
    assert answer.role.create_date == "2023-11-15T22:14:21Z"


def test_create_role_publishes_role_created_before_the_reply(core: RamCore) -> None:
    effects = run(core, m.CreateRole(role_name="EcsRole", assume_role_policy_document=ECS_TRUST_POLICY, caller=root()))
    role = reply(effects).role  # type: ignore[attr-defined]
    assert [type(e) for e in effects] == [Publish, Reply]
    assert events(effects) == [(topics.event("ram", "RoleCreated"), m.RoleCreated(role=role, generation=core.dir.generation))]


def test_role_ids_differ(core: RamCore) -> None:
    assert create_role(core, "A").role_id != create_role(core, "B").role_id


def test_get_role_returns_what_was_created(core: RamCore) -> None:
    role = create_role(core)
    effects = run(core, m.GetRole(role_name="EcsRole", caller=root()), now=T0 + 500)
    assert reply(effects) == m.GetRoleOk(role=role)
    assert events(effects) == []


def test_get_role_unknown(core: RamCore) -> None:
    error = assert_error(ask(core, m.GetRole(role_name="Nope", caller=root())), "EntityNotExist.Role", 404)
    assert error.message == "The specified Role not exists."


def test_create_role_twice_is_a_conflict(core: RamCore) -> None:
    first = create_role(core)
    effects = run(core, m.CreateRole(role_name="EcsRole", assume_role_policy_document=ECS_TRUST_POLICY,
                                     description="second", caller=root()))
    error = assert_error(reply(effects), "EntityAlreadyExists.Role", 409)
    assert error.message == "The role does already EXIST."
    assert events(effects) == []
    assert core.dir.roles["EcsRole"][0] == first


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("has space", "InvalidParameter.RoleName.InvalidChars"),
        ("under_score", "InvalidParameter.RoleName.InvalidChars"),
        ("slash/role", "InvalidParameter.RoleName.InvalidChars"),
        ("caf\u00e9", "InvalidParameter.RoleName.InvalidChars"),
        ("role\n", "InvalidParameter.RoleName.InvalidChars"),
        ("a:b", "InvalidParameter.RoleName.InvalidChars"),
        ("x" * 65, "InvalidParameter.RoleName.Length"),
        ("", "MissingParameter"),
    ],
)
def test_create_role_rejects_bad_names(core: RamCore, name: str, code: str) -> None:
    effects = run(core, m.CreateRole(role_name=name, assume_role_policy_document=ECS_TRUST_POLICY, caller=root()))
    assert_error(reply(effects), code)
    assert core.dir.roles == {} and events(effects) == []


@pytest.mark.parametrize("name", ["a", "x" * 64, "Ecs.Role-2"])
def test_create_role_accepts_good_names(core: RamCore, name: str) -> None:
    assert create_role(core, name).arn == f"acs:ram::{ACCOUNT}:role/{name}"


@pytest.mark.parametrize(("seconds", "ok"), [(3599, False), (3600, True), (43200, True), (43201, False), (0, False)])
def test_create_role_max_session_duration_bounds(core: RamCore, seconds: int, ok: bool) -> None:
    answer = ask(core, m.CreateRole(role_name="R", assume_role_policy_document=ECS_TRUST_POLICY,
                                    max_session_duration=seconds, caller=root()))
    if ok:
        assert isinstance(answer, m.CreateRoleOk) and answer.role.max_session_duration == seconds
    else:
        assert_error(answer, "InvalidParameter.MaxSessionDuration")
        assert "R" not in core.dir.roles


@pytest.mark.parametrize(
    ("trust", "detail"),
    [
        ("{", "not valid JSON"),
        (json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]}),
         "Statement[0].Principal must name Service, RAM or Federated principals"),
        (json.dumps({"Version": "2", "Statement": []}), '"Version" must be "1"'),
        (policy_text(allow("ecs:*")), "Statement[0].Principal must name Service, RAM or Federated principals"),
    ],
)
def test_create_role_rejects_a_malformed_trust_policy(core: RamCore, trust: str, detail: str) -> None:
    error = assert_error(ask(core, m.CreateRole(role_name="R", assume_role_policy_document=trust, caller=root())),
                         "MalformedPolicyDocument")
    assert error.message.startswith("AssumeRolePolicyDocument: ")
    assert detail in error.message
    assert core.dir.roles == {}


# -- CreatePolicy --------------------------------------------------------------------------
def test_create_policy_shape_and_event(core: RamCore) -> None:
    effects = run(core, m.CreatePolicy(policy_name="Read-Buckets", policy_document=policy_text(allow("oss:Get*")),
                                       description="d", caller=root()))
    answer = reply(effects)
    assert isinstance(answer, m.CreatePolicyOk)
    created = answer.policy
    assert (created.policy_name, created.policy_type, created.default_version, created.create_date, created.description) == \
        ("Read-Buckets", "Custom", "v1", T0_ISO, "d")
    assert events(effects) == [(topics.event("ram", "PolicyCreated"), m.PolicyCreated(policy=created, generation=core.dir.generation))]


def test_create_policy_twice_is_a_conflict(core: RamCore) -> None:
    create_policy(core, "P", policy_text(allow("oss:*")))
    effects = run(core, m.CreatePolicy(policy_name="P", policy_document=policy_text(allow("ecs:*")), caller=root()))
    assert_error(reply(effects), "EntityAlreadyExists.Policy", 409)
    assert events(effects) == []


def test_a_custom_policy_may_share_a_system_policy_name(core: RamCore) -> None:
    create_policy(core, "AdministratorAccess", policy_text(allow("oss:GetObject")))
    assert ("Custom", "AdministratorAccess") in core.dir.policies and ("System", "AdministratorAccess") in core.dir.policies


@pytest.mark.parametrize(("name", "code"), [
    ("dot.name", "InvalidParameter.PolicyName.InvalidChars"),
    ("under_score", "InvalidParameter.PolicyName.InvalidChars"),
    ("p\n", "InvalidParameter.PolicyName.InvalidChars"),
    ("x" * 129, "InvalidParameter.PolicyName.Length"),
    ("", "MissingParameter"),
])
def test_create_policy_rejects_bad_names(core: RamCore, name: str, code: str) -> None:
    answer = ask(core, m.CreatePolicy(policy_name=name, policy_document=policy_text(allow("oss:*")), caller=root()))
    assert_error(answer, code)
    assert not any(t == "Custom" for t, _ in core.dir.policies)


def test_create_policy_rejects_a_malformed_document_with_the_reason(core: RamCore) -> None:
    answer = ask(core, m.CreatePolicy(policy_name="P", policy_document=policy_text(allow("oss")), caller=root()))
    error = assert_error(answer, "MalformedPolicyDocument")
    assert error.message == 'Statement[0].Action "oss" must look like "service:Action" or "*"'
    assert ("Custom", "P") not in core.dir.policies


def test_create_policy_rejects_an_oversized_document(core: RamCore) -> None:
    text = policy_text(allow(["oss:GetObject"] * 600))
    assert len(text) > 6144
    assert_error(ask(core, m.CreatePolicy(policy_name="Big", policy_document=text, caller=root())),
                 "InvalidParameter.PolicyDocument.Length")


# -- attaching policies to roles ------------------------------------------------------------
def test_attach_list_and_detach_policies_for_a_role(core: RamCore) -> None:
    create_role(core)
    create_policy(core, "Mine", policy_text(allow("oss:*")))
    before = core.dir.generation
    effects = run(core, m.AttachPolicyToRole(policy_type="Custom", policy_name="Mine", role_name="EcsRole", caller=root()), now=T0 + 60)
    assert reply(effects) == m.AttachPolicyToRoleOk()
    assert core.dir.generation > before
    assert events(effects) == [(topics.event("ram", "PolicyAttachedToRole"),
                                m.PolicyAttachedToRole(policy_type="Custom", policy_name="Mine", role_name="EcsRole",
                                                       generation=core.dir.generation))]
    attach_to_role(core, "EcsRole", "AliyunECSReadOnlyAccess")

    listed = ask(core, m.ListPoliciesForRole(role_name="EcsRole", caller=root()))
    assert isinstance(listed, m.ListPoliciesForRoleOk)
    assert [(p.policy_type, p.policy_name, p.attach_date, p.default_version) for p in listed.policies.policy] == [
        ("Custom", "Mine", "2023-11-14T22:14:20Z", "v1"),
        ("System", "AliyunECSReadOnlyAccess", T0_ISO, "v1"),
    ]
    assert listed.policies.policy[1].description == "Read-only access to ECS."

    before = core.dir.generation
    effects = run(core, m.DetachPolicyFromRole(policy_type="Custom", policy_name="Mine", role_name="EcsRole", caller=root()))
    assert reply(effects) == m.DetachPolicyFromRoleOk()
    assert core.dir.generation > before
    assert events(effects) == [(topics.event("ram", "PolicyDetachedFromRole"),
                                m.PolicyDetachedFromRole(policy_type="Custom", policy_name="Mine", role_name="EcsRole",
                                                         generation=core.dir.generation))]
    listed = ask(core, m.ListPoliciesForRole(role_name="EcsRole", caller=root()))
    assert [p.policy_name for p in listed.policies.policy] == ["AliyunECSReadOnlyAccess"]  # type: ignore[attr-defined]


def test_list_policies_for_a_role_without_any(core: RamCore) -> None:
    create_role(core)
    assert ask(core, m.ListPoliciesForRole(role_name="EcsRole", caller=root())) == m.ListPoliciesForRoleOk(policies=m.PolicyList(policy=[]))


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        (m.AttachPolicyToRole(policy_type="System", policy_name="AdministratorAccess", role_name="Nope"), "EntityNotExist.Role", 404),
        (m.AttachPolicyToRole(policy_type="Custom", policy_name="Nope", role_name="EcsRole"), "EntityNotExist.Policy", 404),
        (m.AttachPolicyToRole(policy_type="System", policy_name="Nope", role_name="EcsRole"), "EntityNotExist.Policy", 404),
        (m.AttachPolicyToRole(policy_type="Managed", policy_name="AdministratorAccess", role_name="EcsRole"), "InvalidParameter.PolicyType", 400),
        (m.AttachPolicyToRole(policy_type="Custom", policy_name="AdministratorAccess", role_name="EcsRole"), "EntityNotExist.Policy", 404),
        (m.DetachPolicyFromRole(policy_type="System", policy_name="AdministratorAccess", role_name="Nope"), "EntityNotExist.Role", 404),
        (m.DetachPolicyFromRole(policy_type="System", policy_name="AdministratorAccess", role_name="EcsRole"), "EntityNotExist.Role.Policy", 404),
        (m.DetachPolicyFromRole(policy_type="Custom", policy_name="Nope", role_name="EcsRole"), "EntityNotExist.Policy", 404),
        (m.ListPoliciesForRole(role_name="Nope"), "EntityNotExist.Role", 404),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__ if not isinstance(v, int) else str(v),
)
def test_role_policy_errors(core: RamCore, body: object, code: str, status: int) -> None:
    create_role(core)
    before = core.dir.generation
    effects = run(core, as_caller(body, root()))
    assert_error(reply(effects), code, status)
    assert events(effects) == []
    assert attached(core, "Role", "EcsRole") == [] and core.dir.generation == before


def test_attach_the_same_policy_twice_is_a_conflict(core: RamCore) -> None:
    create_role(core)
    attach_to_role(core, "EcsRole", "AliyunOSSReadOnlyAccess")
    effects = run(core, m.AttachPolicyToRole(policy_type="System", policy_name="AliyunOSSReadOnlyAccess", role_name="EcsRole", caller=root()))
    assert_error(reply(effects), "EntityAlreadyExists.Role.Policy", 409)
    assert events(effects) == [] and attached(core, "Role", "EcsRole") == [("System", "AliyunOSSReadOnlyAccess")]


def test_detach_only_removes_the_named_type(core: RamCore) -> None:
    create_role(core)
    create_policy(core, "AdministratorAccess", policy_text(allow("oss:GetObject")))
    attach_to_role(core, "EcsRole", "AdministratorAccess", "Custom")
    attach_to_role(core, "EcsRole", "AdministratorAccess", "System")
    assert isinstance(ask(core, m.DetachPolicyFromRole(policy_type="System", policy_name="AdministratorAccess",
                                                       role_name="EcsRole", caller=root())), m.DetachPolicyFromRoleOk)
    assert attached(core, "Role", "EcsRole") == [("Custom", "AdministratorAccess")]


# -- users and AccessKeys ------------------------------------------------------------------
def test_create_user_shape_and_event(core: RamCore) -> None:
    effects = run(core, m.CreateUser(user_name="alice_1.x-y", comments="dev", caller=root()))
    answer = reply(effects)
    assert isinstance(answer, m.CreateUserOk)
    user = answer.user
    assert (user.user_name, user.display_name, user.comments, user.create_date) == ("alice_1.x-y", "alice_1.x-y", "dev", T0_ISO)
    assert len(user.user_id) == 16 and user.user_id.isdigit()
    assert events(effects) == [(topics.event("ram", "UserCreated"), m.UserCreated(user=user, generation=core.dir.generation))]


def test_create_user_keeps_a_display_name(core: RamCore) -> None:
    answer = ask(core, m.CreateUser(user_name="alice", display_name="Alice A.", caller=root()))
    assert answer.user.display_name == "Alice A."  # type: ignore[attr-defined]


def test_create_user_twice_is_a_conflict(core: RamCore) -> None:
    create_user(core)
    assert_error(ask(core, m.CreateUser(user_name="alice", caller=root())), "EntityAlreadyExists.User", 409)


@pytest.mark.parametrize(("name", "code"), [
    ("a b", "InvalidParameter.UserName.InvalidChars"),
    ("a/b", "InvalidParameter.UserName.InvalidChars"),
    ("alice\n", "InvalidParameter.UserName.InvalidChars"),
    ("x" * 65, "InvalidParameter.UserName.Length"),
    ("", "MissingParameter"),
])
def test_create_user_rejects_bad_names(core: RamCore, name: str, code: str) -> None:
    assert_error(ask(core, m.CreateUser(user_name=name, caller=root())), code)
    assert core.dir.users == {}


def test_create_access_key_returns_the_secret_once(core: RamCore) -> None:
    create_user(core)
    effects = run(core, m.CreateAccessKey(user_name="alice", caller=root()))
    key = reply(effects).access_key  # type: ignore[attr-defined]
    assert re.fullmatch(r"LTAI[A-Za-z0-9]{20}", key.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9]{30}", key.access_key_secret)
    assert (key.status, key.create_date) == ("Active", T0_ISO)
    # nothing but the reply carries the secret
    assert key.access_key_secret not in repr([e for e in effects if not isinstance(e, Reply)])
    # the stored record keeps the secret apart from the AccessKey shape
    stored = core.dir.keys[key.access_key_id]
    assert stored.access_key.access_key_secret == "" and stored.secret == key.access_key_secret
    # and listing the keys later never shows it
    listed = ask(core, m.ListAccessKeys(user_name="alice", caller=root()))
    assert [(k.access_key_id, k.access_key_secret) for k in listed.access_keys.access_key] == [(key.access_key_id, "")]  # type: ignore[attr-defined]


def test_two_access_keys_differ(core: RamCore) -> None:
    create_user(core)
    first, second = create_key(core, "alice"), create_key(core, "alice")
    assert first.access_key_id != second.access_key_id
    assert first.access_key_secret != second.access_key_secret


def test_a_user_has_at_most_two_access_keys(core: RamCore) -> None:
    create_user(core)
    create_user(core, "bob")
    create_key(core, "alice")
    create_key(core, "alice")
    error = assert_error(ask(core, m.CreateAccessKey(user_name="alice", caller=root())), "LimitExceeded.User.AccessKey", 409)
    assert "2" in error.message
    assert sum(1 for k in core.dir.keys.values() if k.user_name == "alice") == 2
    create_key(core, "bob")  # the limit is per user


def test_create_access_key_errors(core: RamCore) -> None:
    assert_error(ask(core, m.CreateAccessKey(user_name="ghost", caller=root())), "EntityNotExist.User", 404)
    error = assert_error(ask(core, m.CreateAccessKey(caller=root())), "MissingParameter")
    assert '"UserName"' in error.message
    assert list(core.dir.keys) == [ROOT_AK]


def test_attach_policy_to_user_and_its_event(core: RamCore) -> None:
    create_user(core)
    effects = run(core, m.AttachPolicyToUser(policy_type="System", policy_name="AliyunECSFullAccess", user_name="alice", caller=root()))
    assert reply(effects) == m.AttachPolicyToUserOk()
    assert events(effects) == [(topics.event("ram", "PolicyAttachedToUser"),
                                m.PolicyAttachedToUser(policy_type="System", policy_name="AliyunECSFullAccess", user_name="alice",
                                                       generation=core.dir.generation))]
    assert attached(core, "User", "alice") == [("System", "AliyunECSFullAccess")]
    assert core.dir.attached[("User", "alice")][0].attach_date == T0_ISO


@pytest.mark.parametrize(
    ("user", "kind", "name", "code", "status"),
    [
        ("ghost", "System", "AliyunECSFullAccess", "EntityNotExist.User", 404),
        ("alice", "System", "Nope", "EntityNotExist.Policy", 404),
        ("alice", "system", "AliyunECSFullAccess", "InvalidParameter.PolicyType", 400),
    ],
)
def test_attach_policy_to_user_errors(core: RamCore, user: str, kind: str, name: str, code: str, status: int) -> None:
    create_user(core)
    effects = run(core, m.AttachPolicyToUser(policy_type=kind, policy_name=name, user_name=user, caller=root()))
    assert_error(reply(effects), code, status)
    assert events(effects) == [] and attached(core, "User", "alice") == []


def test_attach_policy_to_user_twice_is_a_conflict(core: RamCore) -> None:
    create_user(core)
    attach_to_user(core, "alice", "AliyunECSFullAccess")
    answer = ask(core, m.AttachPolicyToUser(policy_type="System", policy_name="AliyunECSFullAccess", user_name="alice", caller=root()))
    assert_error(answer, "EntityAlreadyExists.User.Policy", 409)


# -- Authenticate --------------------------------------------------------------------------
def authenticate(core: RamCore, access_key_id: str, secret: str, *, text: str = STRING_TO_SIGN,
                 method: str = "HMAC-SHA1") -> object:
    signature = signing.SCHEMES[method](secret, text)
    return ask(core, common.Authenticate(access_key_id=access_key_id, signature=signature,
                                         string_to_sign=text, signature_method=method))


def test_authenticate_the_root_key(core: RamCore) -> None:
    assert authenticate(core, ROOT_AK, ROOT_SECRET) == common.AuthenticateOk(principal=root())


def test_authenticate_with_the_v3_scheme(core: RamCore) -> None:
    answer = authenticate(core, ROOT_AK, ROOT_SECRET, method=signing.ACS3, text="ACS3-HMAC-SHA256\nabc")
    assert answer == common.AuthenticateOk(principal=root())


def test_authenticate_an_unknown_key(core: RamCore) -> None:
    error = assert_error(authenticate(core, "LTAInobody", ROOT_SECRET), "InvalidAccessKeyId.NotFound", 404)
    assert error.message == "Specified access key is not found."


@pytest.mark.parametrize("tamper", ["secret", "text", "method"])
def test_authenticate_a_wrong_signature(core: RamCore, tamper: str) -> None:
    text = STRING_TO_SIGN
    signature = signing.hmac_sha1(ROOT_SECRET + ("x" if tamper == "secret" else ""), text)
    body = common.Authenticate(access_key_id=ROOT_AK, signature=signature,
                               string_to_sign=text + ("x" if tamper == "text" else ""),
                               signature_method=signing.ACS3 if tamper == "method" else "HMAC-SHA1")
    effects = run(core, body)
    assert_error(reply(effects), "SignatureDoesNotMatch", 400)
    logs = [e for e in effects if isinstance(e, Log)]
    assert [(log.event, log.level, log.fields) for log in logs] == [("signature_mismatch", "warning", {"access_key_id": ROOT_AK})]


def test_authenticate_a_ram_user_key(core: RamCore) -> None:
    create_user(core)
    key = create_key(core, "alice")
    answer = authenticate(core, key.access_key_id, key.access_key_secret)
    assert isinstance(answer, common.AuthenticateOk)
    principal = answer.principal
    assert principal.identity_type == "RAMUser"
    assert principal.arn == f"acs:ram::{ACCOUNT}:user/alice"
    assert (principal.account_id, principal.user_name, principal.access_key_id) == (ACCOUNT, "alice", key.access_key_id)
    assert principal.principal_id == core.dir.users["alice"].user_id
    # one user's secret does not sign for the root key
    assert_error(authenticate(core, ROOT_AK, key.access_key_secret), "SignatureDoesNotMatch")


def test_a_disabled_key_no_longer_authenticates(core: RamCore) -> None:
    create_user(core)
    key = create_key(core, "alice")
    answer = ask(core, m.UpdateAccessKey(user_access_key_id=key.access_key_id, status="Inactive", user_name="alice", caller=root()))
    assert answer == m.UpdateAccessKeyOk()
    assert_error(authenticate(core, key.access_key_id, key.access_key_secret), "InvalidAccessKeyId.Inactive", 403)
    ask(core, m.UpdateAccessKey(user_access_key_id=key.access_key_id, status="Active", user_name="alice", caller=root()))
    assert isinstance(authenticate(core, key.access_key_id, key.access_key_secret), common.AuthenticateOk)


def test_update_access_key_errors(core: RamCore) -> None:
    create_user(core)
    create_user(core, "bob")
    key = create_key(core, "alice")
    assert_error(ask(core, m.UpdateAccessKey(user_access_key_id=key.access_key_id, status="Off", user_name="alice", caller=root())),
                 "InvalidParameter.Status")
    for who, key_id in (("bob", key.access_key_id), ("alice", "LTAInope"), ("", ROOT_AK)):
        answer = ask(core, m.UpdateAccessKey(user_access_key_id=key_id, status="Inactive", user_name=who, caller=root()))
        assert_error(answer, "EntityNotExist.User.AccessKey", 404)
    assert core.dir.keys[key.access_key_id].access_key.status == "Active"
    assert core.dir.keys[ROOT_AK].access_key.status == "Active"


# -- Authorize -----------------------------------------------------------------------------
def test_root_is_always_allowed(core: RamCore) -> None:
    decision = decide(core, root(), "ram:DeleteEverything", "acs:ram:*:*:*")
    assert decision.allowed and decision.reason == f"acs:ram::{ACCOUNT}:root is the account owner"


def test_root_of_another_account_is_refused(core: RamCore) -> None:
    decision = decide(core, root("9999999999999999"), "ecs:DescribeInstances")
    assert not decision.allowed and decision.reason == "the principal belongs to another account"


def test_a_ram_user_is_allowed_only_by_attached_policies(core: RamCore) -> None:
    alice = create_user(core)
    denied = decide(core, alice, "ecs:RunInstances", "acs:ecs:*:*:instance/i-1")
    assert (denied.allowed, denied.decision, denied.reason) == (False, "ImplicitDeny", "no statement allowed ecs:RunInstances on acs:ecs:*:*:instance/i-1")
    attach_to_user(core, "alice", "AliyunECSFullAccess")
    decision = decide(core, alice, "ecs:RunInstances")
    assert (decision.allowed, decision.decision) == (True, "Allow")
    assert decision.reason == "allowed by System:AliyunECSFullAccess v1 statement 0"
    assert decision.matches == [m.Match(policy="System:AliyunECSFullAccess", version="v1", statement=0, effect="Allow")]
    assert not decide(core, alice, "oss:GetObject").allowed


def test_policies_of_one_user_do_not_grant_another(core: RamCore) -> None:
    create_user(core)
    bob = create_user(core, "bob")
    attach_to_user(core, "alice", "AdministratorAccess")
    assert not decide(core, bob, "ecs:RunInstances").allowed


def test_an_unknown_user_has_no_permissions(core: RamCore) -> None:
    ghost = Principal(identity_type="RAMUser", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:user/ghost", principal_id="1", user_name="ghost")
    decision = decide(core, ghost, "ecs:DescribeInstances")
    assert not decision.allowed and "does not exist" in decision.reason


def test_explicit_deny_beats_allow(core: RamCore) -> None:
    alice = create_user(core)
    create_policy(core, "NoRun", policy_text(deny("ecs:RunInstances")))
    attach_to_user(core, "alice", "AdministratorAccess")
    attach_to_user(core, "alice", "NoRun", "Custom")
    decision = decide(core, alice, "ecs:RunInstances")
    assert (decision.allowed, decision.decision) == (False, "ExplicitDeny")
    assert decision.reason == "explicitly denied by Custom:NoRun v1 statement 0"
    assert decide(core, alice, "ecs:StopInstances").allowed


def test_authorize_answers_every_check_in_order(core: RamCore) -> None:
    alice = create_user(core)
    attach_to_user(core, "alice", "AliyunOSSReadOnlyAccess")
    checks = [m.Check(action=a, resource=OSS_OBJECT) for a in ("oss:GetObject", "oss:PutObject", "oss:ListObjects")]
    answer = ask(core, m.Authorize(principal=alice, checks=checks))
    assert isinstance(answer, m.AuthorizeOk)
    assert [d.allowed for d in answer.decisions] == [True, False, True]
    assert answer.generation == core.dir.generation


def test_a_decision_follows_attach_and_detach_at_once(core: RamCore) -> None:
    alice = create_user(core)
    attach_to_user(core, "alice", "AliyunOSSReadOnlyAccess")
    assert decide(core, alice, "oss:GetObject", OSS_OBJECT).allowed
    ask(core, m.DetachPolicyFromUser(policy_type="System", policy_name="AliyunOSSReadOnlyAccess", user_name="alice", caller=root()))
    assert not decide(core, alice, "oss:GetObject", OSS_OBJECT).allowed


def test_pass_role_on_any_account_matches_the_account_role(core: RamCore) -> None:
    alice = create_user(core)
    create_policy(core, "PassEcsRole", policy_text(allow("ram:PassRole", "acs:ram:*:*:role/EcsRole")))
    attach_to_user(core, "alice", "PassEcsRole", "Custom")
    assert decide(core, alice, "ram:PassRole", f"acs:ram:*:{ACCOUNT}:role/EcsRole").allowed
    assert not decide(core, alice, "ram:PassRole", f"acs:ram:*:{ACCOUNT}:role/AdminRole").allowed
    assert not decide(core, alice, "ram:PassRole", f"acs:ram:*:{ACCOUNT}:role/EcsRole2").allowed


def test_a_role_session_uses_the_role_policies(core: RamCore) -> None:
    create_role(core)
    session = role_session(core)
    assert not decide(core, session, "oss:GetObject", OSS_OBJECT).allowed
    attach_to_role(core, "EcsRole", "AliyunOSSReadOnlyAccess")
    assert decide(core, session, "oss:GetObject", OSS_OBJECT).allowed
    assert not decide(core, session, "oss:PutObject", OSS_OBJECT).allowed
    ask(core, m.DetachPolicyFromRole(policy_type="System", policy_name="AliyunOSSReadOnlyAccess", role_name="EcsRole", caller=root()))
    assert not decide(core, session, "oss:GetObject", OSS_OBJECT).allowed


def test_a_session_policy_narrows_the_role_policies(core: RamCore) -> None:
    create_role(core)
    attach_to_role(core, "EcsRole", "AliyunOSSFullAccess")
    session_policy = policy_text(allow("oss:GetObject", "acs:oss:*:*:public/*"), allow("ecs:*"))
    session = role_session(core, session_policy=session_policy)
    assert decide(core, session, "oss:GetObject", "acs:oss:*:1:public/a").allowed
    narrowed = decide(core, session, "oss:GetObject", "acs:oss:*:1:private/a")
    assert not narrowed.allowed and narrowed.reason.startswith("session policy: ")
    assert not decide(core, session, "oss:PutObject", "acs:oss:*:1:public/a").allowed
    # the session policy never widens: ecs:* is not granted by the role
    assert not decide(core, session, "ecs:RunInstances").allowed


def test_a_deny_in_the_session_policy_wins(core: RamCore) -> None:
    create_role(core)
    attach_to_role(core, "EcsRole", "AdministratorAccess")
    session = role_session(core, session_policy=policy_text(allow("*"), deny("oss:DeleteObject")))
    assert decide(core, session, "oss:GetObject", OSS_OBJECT).allowed
    denied = decide(core, session, "oss:DeleteObject", OSS_OBJECT)
    assert (denied.allowed, denied.decision) == (False, "ExplicitDeny")


def test_a_session_of_an_unknown_role_has_no_permissions(core: RamCore) -> None:
    create_role(core)
    attach_to_role(core, "EcsRole", "AdministratorAccess")
    other = Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:assumed-role/Gone/s",
                      principal_id="1:s", role_name="Gone")
    assert not decide(core, other, "ecs:DescribeInstances").allowed


def test_a_session_in_another_account_is_refused(core: RamCore) -> None:
    create_role(core)
    attach_to_role(core, "EcsRole", "AdministratorAccess")
    session = role_session(core)
    foreign = Principal(identity_type="AssumedRoleUser", account_id="1111111111111111", arn=session.arn,
                        principal_id=session.principal_id, role_name="EcsRole")
    decision = decide(core, foreign, "ecs:DescribeInstances")
    assert not decision.allowed and decision.reason == "the principal belongs to another account"


def test_a_service_principal_is_trusted_only_in_its_account(core: RamCore) -> None:
    sts = Principal(identity_type="Service", account_id=ACCOUNT, arn="sts.aliyuncs.com", principal_id="sts.aliyuncs.com")
    assert decide(core, sts, "ram:GetRole").allowed
    foreign = Principal(identity_type="Service", account_id="1111111111111111", arn="sts.aliyuncs.com", principal_id="sts.aliyuncs.com")
    assert not decide(core, foreign, "ram:GetRole").allowed


# -- enforcement of the RAM API itself --------------------------------------------------------
def test_a_user_without_ram_permissions_gets_no_permission(core: RamCore) -> None:
    alice = create_user(core)
    attach_to_user(core, "alice", "AliyunECSFullAccess")
    effects = run(core, m.CreateRole(role_name="Sneaky", assume_role_policy_document=ECS_TRUST_POLICY, caller=alice))
    error = assert_error(reply(effects), "NoPermission", 403)
    assert error.message.startswith("You are not authorized to do this action.")
    assert f"ram:CreateRole on acs:ram:*:{ACCOUNT}:role/Sneaky" in error.message
    detail = error.access_denied_detail
    assert detail is not None
    assert (detail.auth_action, detail.auth_principal_type, detail.auth_principal_display_name, detail.auth_principal_owner_id,
            detail.no_permission_type) == ("ram:CreateRole", "SubUser", "alice", ACCOUNT, "ImplicitDeny")
    assert "Sneaky" not in core.dir.roles and events(effects) == []
    logs = [(e.event, e.fields["principal"], e.fields["action"]) for e in effects if isinstance(e, Log)]
    assert logs == [("access_denied", f"acs:ram::{ACCOUNT}:user/alice", "ram:CreateRole")]


@pytest.mark.parametrize(
    "body",
    [
        m.GetRole(role_name="EcsRole"),
        m.CreatePolicy(policy_name="P", policy_document=policy_text(allow("*"))),
        m.AttachPolicyToRole(policy_type="System", policy_name="AdministratorAccess", role_name="EcsRole"),
        m.DetachPolicyFromRole(policy_type="System", policy_name="AdministratorAccess", role_name="EcsRole"),
        m.ListPoliciesForRole(role_name="EcsRole"),
        m.CreateUser(user_name="mallory"),
        m.CreateAccessKey(user_name="alice"),
        m.CreateAccessKey(),
        m.AttachPolicyToUser(policy_type="System", policy_name="AdministratorAccess", user_name="alice"),
    ],
    ids=lambda b: type(b).__name__,
)
def test_every_ram_api_is_enforced_for_users(core: RamCore, body: object) -> None:
    create_role(core)
    alice = create_user(core)
    effects = run(core, as_caller(body, alice))
    assert_error(reply(effects), "NoPermission", 403)
    assert events(effects) == []
    assert attached(core, "User", "alice") == [] and attached(core, "Role", "EcsRole") == []
    assert set(core.dir.users) == {"alice"} and list(core.dir.keys) == [ROOT_AK]
    assert not any(t == "Custom" for t, _ in core.dir.policies)


@pytest.mark.parametrize("body", [
    m.GetRole(role_name="EcsRole"),
    m.CreateRole(role_name="R", assume_role_policy_document=ECS_TRUST_POLICY),
    m.CreateUser(user_name="u"),
], ids=lambda b: type(b).__name__)
def test_an_unauthenticated_call_gets_no_permission(core: RamCore, body: object) -> None:
    create_role(core)
    error = assert_error(ask(core, body), "NoPermission", 403)
    assert error.message.endswith("The request is not authenticated.")
    assert set(core.dir.roles) == {"EcsRole"} and core.dir.users == {}


def test_a_user_with_ram_permissions_may_call_the_api(core: RamCore) -> None:
    alice = create_user(core)
    attach_to_user(core, "alice", "AliyunRAMFullAccess")
    answer = ask(core, m.CreateRole(role_name="ByAlice", assume_role_policy_document=ECS_TRUST_POLICY, caller=alice))
    assert isinstance(answer, m.CreateRoleOk)
    # UserName omitted: the key is created for the caller
    answer = ask(core, m.CreateAccessKey(caller=alice))
    assert isinstance(answer, m.CreateAccessKeyOk)
    assert core.dir.keys[answer.access_key.access_key_id].user_name == "alice"


def test_api_permissions_are_checked_against_the_resource_arn(core: RamCore) -> None:
    create_role(core, "Mine")
    create_role(core, "Theirs")
    alice = create_user(core)
    create_policy(core, "ReadMine", policy_text(allow("ram:GetRole", f"acs:ram:*:{ACCOUNT}:role/Mine")))
    attach_to_user(core, "alice", "ReadMine", "Custom")
    assert isinstance(ask(core, m.GetRole(role_name="Mine", caller=alice)), m.GetRoleOk)
    assert_error(ask(core, m.GetRole(role_name="Theirs", caller=alice)), "NoPermission", 403)


def test_a_deny_on_one_ram_action_blocks_only_that_action(core: RamCore) -> None:
    create_role(core)
    alice = create_user(core)
    create_policy(core, "NoAttach", policy_text(deny("ram:Attach*")))
    attach_to_user(core, "alice", "AliyunRAMFullAccess")
    attach_to_user(core, "alice", "NoAttach", "Custom")
    assert isinstance(ask(core, m.GetRole(role_name="EcsRole", caller=alice)), m.GetRoleOk)
    answer = ask(core, m.AttachPolicyToRole(policy_type="System", policy_name="AdministratorAccess", role_name="EcsRole", caller=alice))
    error = assert_error(answer, "NoPermission", 403)
    assert error.access_denied_detail is not None and error.access_denied_detail.no_permission_type == "ExplicitDeny"


def test_a_role_session_is_enforced_by_the_role_policies(core: RamCore) -> None:
    create_role(core)
    session = role_session(core)
    assert_error(ask(core, m.GetRole(role_name="EcsRole", caller=session)), "NoPermission", 403)
    attach_to_role(core, "EcsRole", "AliyunRAMFullAccess")
    assert isinstance(ask(core, m.GetRole(role_name="EcsRole", caller=session)), m.GetRoleOk)


# -- the Core protocol ---------------------------------------------------------------------
def test_core_protocol_surface(core: RamCore) -> None:
    assert core.node_id == "ram"
    assert core.subscriptions() == []
    assert core.next_deadline() is None
    assert core.on_timer(T0 + 10_000) == []


def test_an_unknown_request_gets_invalid_api(core: RamCore) -> None:
    assert_error(ask(core, common.Ping()), "InvalidApi.NotFound", 404)


def test_system_policies_exist_from_the_start(core: RamCore) -> None:
    assert ("System", "AdministratorAccess") in core.dir.policies
    assert core.dir.policies[("System", "AliyunECSFullAccess")].policy.create_date == T0_ISO
    assert list(core.dir.keys) == [ROOT_AK]


def test_without_a_root_key_nothing_authenticates() -> None:
    core = RamCore(account_id=ACCOUNT, root_access_key_id="", root_access_key_secret="", entropy=entropy(), now=T0)
    assert core.dir.keys == {}
    assert_error(authenticate(core, "", ROOT_SECRET), "InvalidAccessKeyId.NotFound", 404)


# -- watchers: a change is answered once every watcher applied its event -------------------------
def watch(core: RamCore, node: str = "oss", now: float = T0) -> object:
    return reply(core.handle(envelope(m.WatchDecisions(), src=node, dest="ram"), now))


def applied(core: RamCore, generation: int, node: str = "oss", now: float = T0) -> list:
    return core.handle(envelope(m.EventApplied(generation=generation), src=node, dest="ram"), now)


def attach_readonly(core: RamCore, now: float = T0) -> list:
    run(core, m.CreateRole(role_name="r", assume_role_policy_document=ECS_TRUST_POLICY, caller=root()), now)
    return run(core, m.AttachPolicyToRole(policy_type="System", policy_name="AliyunOSSReadOnlyAccess", role_name="r", caller=root()), now)


def test_only_known_enforcement_points_may_watch(core: RamCore) -> None:
    refused = watch(core, "metadata-host-1")
    assert isinstance(refused, Error) and refused.code == "NoPermission"
    assert core.watchers == {}


def test_a_change_is_answered_after_the_watcher_applied_it(core: RamCore) -> None:
    ok = watch(core)
    assert isinstance(ok, m.WatchDecisionsOk) and core.watchers == {"oss": ok.generation}
    effects = attach_readonly(core)
    [(_, event)] = events(effects)
    assert [e for e in effects if isinstance(e, Reply)] == []  # held: the event went out, the reply waits
    assert core.next_deadline() == T0 + core.ack_timeout
    assert applied(core, event.generation - 1) == []  # an older acknowledgement releases nothing
    [released] = [e.body for e in applied(core, event.generation) if isinstance(e, Reply)]
    assert isinstance(released, m.AttachPolicyToRoleOk)
    assert core.next_deadline() is None


def test_changes_that_alter_no_decision_are_answered_at_once(core: RamCore) -> None:
    watch(core)
    assert isinstance(ask(core, m.CreateUser(user_name="u", caller=root())), m.CreateUserOk)


def test_a_watcher_that_does_not_acknowledge_in_time_is_dropped_and_told(core: RamCore) -> None:
    watch(core)
    attach_readonly(core)
    assert core.on_timer(T0 + core.ack_timeout / 2) == []
    effects = core.on_timer(T0 + core.ack_timeout)
    [dropped] = [e for e in effects if getattr(e, "dest", None) == "oss"]
    assert isinstance(dropped.body, m.WatchDropped)
    assert isinstance(reply(effects), m.AttachPolicyToRoleOk)
    assert core.watchers == {}
    assert any(isinstance(e, Reply) for e in attach_readonly_again(core))  # no watcher: answered at once


def attach_readonly_again(core: RamCore) -> list:
    return run(core, m.DetachPolicyFromRole(policy_type="System", policy_name="AliyunOSSReadOnlyAccess", role_name="r", caller=root()))


def test_watchers_survive_a_restart(core: RamCore) -> None:
    watch(core)
    again = RamCore(account_id=ACCOUNT, root_access_key_id=ROOT_AK, root_access_key_secret=ROOT_SECRET, entropy=entropy(), now=T0)
    again.load(core.dump(), T0)
    assert again.watchers == core.watchers
