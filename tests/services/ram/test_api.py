"""RAM's API beyond the skeleton: users, groups, AccessKeys, roles, policy versions,
attachments for every kind of principal, delete conflicts, limits, paging, events ordered
before replies, effective policies and explanations. Explicit time; no I/O."""

from __future__ import annotations

import msgspec

import json

import pytest

from protocol import errors
from protocol.base import Message
from protocol.errors import Error
from protocol.messages import common, ram as m
from services.ram import directory
from services.ram.core import RamCore
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime.effects import Publish, Reply
from tests.helpers import ACCOUNT, T0, entropy, envelope, root

ALLOW_PASS = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ram:PassRole", "Resource": "acs:ram:*:*:role/App"}]})
DENY_PASS = json.dumps({"Version": "1", "Statement": [{"Effect": "Deny", "Action": "ram:PassRole", "Resource": "*", "Sid": "NoPass"}]})


@pytest.fixture
def core() -> RamCore:
    return RamCore(account_id=ACCOUNT, root_access_key_id="LTAIroot", root_access_key_secret="s", entropy=entropy(), now=T0)


def call(core: RamCore, body: Message, caller: common.Principal | None = None, now: float = T0) -> Message:
    body = type(body)(**{**{f: getattr(body, f) for f in body.__struct_fields__}, "caller": caller or root()})
    effects = core.handle(envelope(body, dest="ram"), now)
    found = [e.body for e in effects if isinstance(e, Reply)]
    assert len(found) == 1, effects
    return found[0]


def ok(core: RamCore, body: Message, caller: common.Principal | None = None) -> Message:
    answer = call(core, body, caller)
    assert not isinstance(answer, Error), answer
    return answer


def code(core: RamCore, body: Message, caller: common.Principal | None = None) -> str:
    answer = call(core, body, caller)
    assert isinstance(answer, Error), answer
    return answer.code


def user_principal(core: RamCore, name: str) -> common.Principal:
    return core.user_principal(core.dir.users[name])


def test_user_lifecycle_and_delete_conflicts(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="alice", display_name="Alice"))
    assert ok(core, m.GetUser(user_name="alice")).user.display_name == "Alice"
    key = ok(core, m.CreateAccessKey(user_name="alice")).access_key
    ok(core, m.AttachPolicyToUser(policy_type="System", policy_name="ReadOnlyAccess", user_name="alice"))
    ok(core, m.CreateGroup(group_name="ops"))
    ok(core, m.AddUserToGroup(user_name="alice", group_name="ops"))
    assert code(core, m.DeleteUser(user_name="alice")) == "DeleteConflict.User.AccessKey"
    ok(core, m.DeleteAccessKey(user_access_key_id=key.access_key_id, user_name="alice"))
    assert code(core, m.DeleteUser(user_name="alice")) == "DeleteConflict.User.Policy"
    ok(core, m.DetachPolicyFromUser(policy_type="System", policy_name="ReadOnlyAccess", user_name="alice"))
    assert code(core, m.DeleteUser(user_name="alice")) == "DeleteConflict.User.Group"
    ok(core, m.RemoveUserFromGroup(user_name="alice", group_name="ops"))
    ok(core, m.DeleteUser(user_name="alice"))
    assert code(core, m.GetUser(user_name="alice")) == "EntityNotExist.User"


def test_update_user_renames_everywhere(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="bob"))
    ok(core, m.CreateGroup(group_name="devs"))
    ok(core, m.AddUserToGroup(user_name="bob", group_name="devs"))
    ok(core, m.AttachPolicyToUser(policy_type="System", policy_name="ReadOnlyAccess", user_name="bob"))
    key = ok(core, m.CreateAccessKey(user_name="bob")).access_key
    ok(core, m.UpdateUser(user_name="bob", new_user_name="robert"))
    assert [g.group_name for g in ok(core, m.ListGroupsForUser(user_name="robert")).groups.group] == ["devs"]
    assert [p.policy_name for p in ok(core, m.ListPoliciesForUser(user_name="robert")).policies.policy] == ["ReadOnlyAccess"]
    assert [k.access_key_id for k in ok(core, m.ListAccessKeys(user_name="robert")).access_keys.access_key] == [key.access_key_id]
    assert code(core, m.GetUser(user_name="bob")) == "EntityNotExist.User"


def test_access_keys_secret_once_at_most_two_and_disable(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="carol"))
    first = ok(core, m.CreateAccessKey(user_name="carol")).access_key
    assert first.access_key_secret and first.status == "Active"
    ok(core, m.CreateAccessKey(user_name="carol"))
    assert code(core, m.CreateAccessKey(user_name="carol")) == "LimitExceeded.User.AccessKey"
    listed = ok(core, m.ListAccessKeys(user_name="carol")).access_keys.access_key
    assert len(listed) == 2 and all(not k.access_key_secret for k in listed)  # never shown again
    ok(core, m.UpdateAccessKey(user_access_key_id=first.access_key_id, status="Inactive", user_name="carol"))
    auth = core.handle(envelope(common.Authenticate(access_key_id=first.access_key_id, signature="x", string_to_sign="y"), dest="ram"), T0)
    assert auth[0].body.code == "InvalidAccessKeyId.Inactive"
    assert code(core, m.UpdateAccessKey(user_access_key_id=first.access_key_id, status="Paused", user_name="carol")) == "InvalidParameter.Status"
    assert code(core, m.DeleteAccessKey(user_access_key_id="LTAInope", user_name="carol")) == "EntityNotExist.User.AccessKey"


def test_groups_give_their_policies_to_members(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="dave"))
    ok(core, m.CreateGroup(group_name="deployers", comments="may pass the app role"))
    ok(core, m.CreatePolicy(policy_name="PassApp", policy_document=ALLOW_PASS))
    ok(core, m.AttachPolicyToGroup(policy_type="Custom", policy_name="PassApp", group_name="deployers"))
    check = m.Check(action="ram:PassRole", resource=f"acs:ram:*:{ACCOUNT}:role/App")
    assert not core.decide(user_principal(core, "dave"), check, T0).allowed
    ok(core, m.AddUserToGroup(user_name="dave", group_name="deployers"))
    decision = core.decide(user_principal(core, "dave"), check, T0)
    assert decision.allowed and decision.matches[0].policy == "Custom:PassApp"
    assert code(core, m.AddUserToGroup(user_name="dave", group_name="deployers")) == "EntityAlreadyExists.User.Group"
    assert code(core, m.DeleteGroup(group_name="deployers")) == "DeleteConflict.Group.User"
    users = ok(core, m.ListUsersForGroup(group_name="deployers")).users.user
    assert [u.user_name for u in users] == ["dave"] and users[0].join_date


def test_policy_versions_default_limit_rotation_and_conflicts(core: RamCore) -> None:
    ok(core, m.CreatePolicy(policy_name="Versions", policy_document=ALLOW_PASS))
    for _ in range(4):
        ok(core, m.CreatePolicyVersion(policy_name="Versions", policy_document=ALLOW_PASS))
    assert code(core, m.CreatePolicyVersion(policy_name="Versions", policy_document=ALLOW_PASS)) == "LimitExceeded.Policy.Version"
    rotated = ok(core, m.CreatePolicyVersion(policy_name="Versions", policy_document=DENY_PASS, set_as_default=True,
                                             rotate_strategy="DeleteOldestNonDefaultVersionWhenLimitExceeded"))
    assert rotated.policy_version.version_id == "v6" and rotated.policy_version.is_default_version
    versions = [v.version_id for v in ok(core, m.ListPolicyVersions(policy_name="Versions")).policy_versions.policy_version]
    assert versions == ["v1", "v3", "v4", "v5", "v6"]
    got = ok(core, m.GetPolicy(policy_name="Versions"))
    assert got.policy.default_version == "v6" and json.loads(got.default_policy_version.policy_document)["Statement"][0]["Effect"] == "Deny"
    assert code(core, m.DeletePolicyVersion(policy_name="Versions", version_id="v6")) == "DeleteConflict.Policy.Version.Default"
    assert code(core, m.GetPolicyVersion(policy_name="Versions", version_id="6")) == "InvalidParameter.VersionId.Format"
    assert code(core, m.DeletePolicy(policy_name="Versions")) == "DeleteConflict.Policy.Version"
    for v in ("v1", "v3", "v4", "v5"):
        ok(core, m.DeletePolicyVersion(policy_name="Versions", version_id=v))
    ok(core, m.DeletePolicy(policy_name="Versions"))


def test_set_default_version_changes_decisions_at_once(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="erin"))
    ok(core, m.CreatePolicy(policy_name="Switch", policy_document=ALLOW_PASS))
    ok(core, m.AttachPolicyToUser(policy_type="Custom", policy_name="Switch", user_name="erin"))
    ok(core, m.CreatePolicyVersion(policy_name="Switch", policy_document=DENY_PASS))
    check = m.Check(action="ram:PassRole", resource=f"acs:ram:*:{ACCOUNT}:role/App")
    assert core.decide(user_principal(core, "erin"), check, T0).allowed
    ok(core, m.SetDefaultPolicyVersion(policy_name="Switch", version_id="v2"))
    decision = core.decide(user_principal(core, "erin"), check, T0)
    assert decision.decision == "ExplicitDeny" and decision.matches[0].sid == "NoPass" and decision.matches[0].version == "v2"


def test_roles_update_delete_conflict_and_list(core: RamCore) -> None:
    ok(core, m.CreateRole(role_name="App", assume_role_policy_document=ECS_TRUST_POLICY, description="app"))
    ok(core, m.AttachPolicyToRole(policy_type="System", policy_name="ReadOnlyAccess", role_name="App"))
    assert code(core, m.DeleteRole(role_name="App")) == "DeleteConflict.Role.Policy"
    updated = ok(core, m.UpdateRole(role_name="App", new_max_session_duration=7200, new_description="v2")).role
    assert (updated.max_session_duration, updated.description) == (7200, "v2")
    assert code(core, m.UpdateRole(role_name="App", new_max_session_duration=60)) == "InvalidParameter.MaxSessionDuration"
    assert code(core, m.UpdateRole(role_name="App", new_assume_role_policy_document="{")) == "MalformedPolicyDocument"
    entities = ok(core, m.ListEntitiesForPolicy(policy_type="System", policy_name="ReadOnlyAccess"))
    assert [r.role_name for r in entities.roles.role] == ["App"]
    ok(core, m.DetachPolicyFromRole(policy_type="System", policy_name="ReadOnlyAccess", role_name="App"))
    ok(core, m.DeleteRole(role_name="App"))
    assert ok(core, m.ListRoles()).roles.role == []


def test_deleting_an_attached_policy_is_refused(core: RamCore) -> None:
    ok(core, m.CreateRole(role_name="App", assume_role_policy_document=ECS_TRUST_POLICY))
    ok(core, m.CreatePolicy(policy_name="Attached", policy_document=ALLOW_PASS))
    ok(core, m.AttachPolicyToRole(policy_type="Custom", policy_name="Attached", role_name="App"))
    assert code(core, m.DeletePolicy(policy_name="Attached")) == "DeleteConflict.Policy.Role"


def test_listing_pages_with_marker(core: RamCore) -> None:
    for i in range(5):
        ok(core, m.CreateUser(user_name=f"u{i}"))
    first = ok(core, m.ListUsers(max_items=2))
    assert [u.user_name for u in first.users.user] == ["u0", "u1"] and first.is_truncated
    rest = ok(core, m.ListUsers(marker=first.marker, max_items=10))
    assert [u.user_name for u in rest.users.user] == ["u2", "u3", "u4"] and not rest.is_truncated and not rest.marker
    assert b'"IsTruncated":false' in msgspec.json.encode(rest)  # answered even when false: SDK loops test it
    second = ok(core, m.ListUsers(marker=first.marker, max_items=2))
    ok(core, m.DeleteUser(user_name="u0"))  # the list changes between pages: nothing still there is skipped
    assert [u.user_name for u in ok(core, m.ListUsers(marker=second.marker)).users.user] == ["u4"]
    assert code(core, m.ListUsers(marker="3")) == "InvalidParameter.Marker"  # opaque: not an index to guess
    assert code(core, m.ListUsers(max_items=1001)) == code(core, m.ListUsers(max_items=0)) == "InvalidParameter.MaxItems"
    assert len(ok(core, m.ListUsers(max_items=1000)).users.user) == 4
    system = ok(core, m.ListPolicies(policy_type="System")).policies.policy
    assert {"AdministratorAccess", "ReadOnlyAccess", "AliyunECSFullAccess", "AliyunOSSFullAccess", "AliyunOSSReadOnlyAccess",
            "AliyunSTSAssumeRoleAccess", "AliyunRAMFullAccess"} <= {p.policy_name for p in system}


@pytest.mark.parametrize(("body", "expected"), [
    (m.CreateUser(user_name="bad name"), "InvalidParameter.UserName.InvalidChars"),
    (m.CreateUser(user_name="x" * 65), "InvalidParameter.UserName.Length"),
    (m.CreateUser(user_name="ok", comments="c" * 129), "InvalidParameter.Comments.Length"),
    (m.CreateGroup(group_name="a/b"), "InvalidParameter.GroupName.InvalidChars"),
    (m.CreateRole(role_name="r_1", assume_role_policy_document=ECS_TRUST_POLICY), "InvalidParameter.RoleName.InvalidChars"),
    (m.CreateRole(role_name="r", assume_role_policy_document="{}"), "MalformedPolicyDocument"),
    (m.CreateRole(role_name="r", assume_role_policy_document=ECS_TRUST_POLICY, description="d" * 1025), "InvalidParameter.Description.Length"),
    (m.CreatePolicy(policy_name="has_underscore", policy_document=ALLOW_PASS), "InvalidParameter.PolicyName.InvalidChars"),
    (m.CreatePolicy(policy_name="P", policy_document='{"Version":"1","Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}'),
     "MalformedPolicyDocument"),
    (m.AttachPolicyToUser(policy_type="Managed", policy_name="ReadOnlyAccess", user_name="nobody"), "EntityNotExist.User"),
    (m.AttachPolicyToRole(policy_type="System", policy_name="NoSuchPolicy", role_name="nobody"), "EntityNotExist.Role"),
    (m.GetPolicy(policy_name="NoSuch", policy_type="Custom"), "EntityNotExist.Policy"),
    (m.GetPolicy(policy_name="ReadOnlyAccess", policy_type="Managed"), "InvalidParameter.PolicyType"),
])
def test_invalid_input_gets_alibaba_codes_and_stores_nothing(core: RamCore, body: Message, expected: str) -> None:
    before = (len(core.dir.users), len(core.dir.groups), len(core.dir.roles), len(core.dir.policies), core.dir.generation)
    assert code(core, body) == expected
    assert (len(core.dir.users), len(core.dir.groups), len(core.dir.roles), len(core.dir.policies), core.dir.generation) == before


def test_changes_publish_their_event_before_the_reply_with_a_new_generation(core: RamCore) -> None:
    ok(core, m.CreateRole(role_name="App", assume_role_policy_document=ECS_TRUST_POLICY))
    before = core.dir.generation
    effects = core.handle(envelope(m.AttachPolicyToRole(policy_type="System", policy_name="ReadOnlyAccess", role_name="App",
                                                        caller=root()), dest="ram"), T0)
    kinds = [type(e) for e in effects]
    assert kinds.index(Publish) < kinds.index(Reply)
    event = next(e.body for e in effects if isinstance(e, Publish))
    assert isinstance(event, m.PolicyAttachedToRole) and event.generation == core.dir.generation > before


def test_ram_users_need_ram_permissions_and_get_an_explained_denial(core: RamCore) -> None:
    ok(core, m.CreateUser(user_name="frank"))
    frank = user_principal(core, "frank")
    denied = call(core, m.CreateRole(role_name="X", assume_role_policy_document=ECS_TRUST_POLICY), frank)
    assert isinstance(denied, Error) and denied.code == "NoPermission" and denied.http_status == 403
    detail = denied.access_denied_detail
    assert detail is not None and detail.auth_action == "ram:CreateRole" and detail.no_permission_type == "ImplicitDeny"
    assert detail.auth_principal_display_name == "frank" and "no statement allowed" in detail.encoded_diagnostic_message
    ok(core, m.AttachPolicyToUser(policy_type="System", policy_name="AliyunRAMFullAccess", user_name="frank"))
    ok(core, m.CreateRole(role_name="X", assume_role_policy_document=ECS_TRUST_POLICY), frank)


def test_simulate_principal_policy_explains(core: RamCore) -> None:
    ok(core, m.CreateRole(role_name="App", assume_role_policy_document=ECS_TRUST_POLICY))
    ok(core, m.AttachPolicyToRole(policy_type="System", policy_name="AliyunECSReadOnlyAccess", role_name="App"))
    allowed = ok(core, m.SimulatePrincipalPolicy(principal_type="Role", principal_name="App", action_name="ecs:DescribeInstances")).decision
    assert allowed.allowed and allowed.matches[0].policy == "System:AliyunECSReadOnlyAccess" and allowed.matches[0].version == "v1"
    refused = ok(core, m.SimulatePrincipalPolicy(principal_type="Role", principal_name="App", action_name="ecs:RunInstances")).decision
    assert not refused.allowed and refused.decision == "ImplicitDeny" and refused.matches == []
    assert code(core, m.SimulatePrincipalPolicy(principal_type="Group", principal_name="x", action_name="a:b")) == "InvalidParameter.PrincipalType"
    assert code(core, m.SimulatePrincipalPolicy(principal_type="User", principal_name="ghost", action_name="a:b")) == "EntityNotExist.User"


def test_effective_policies_for_enforcement_points(core: RamCore) -> None:
    ok(core, m.CreateRole(role_name="App", assume_role_policy_document=ECS_TRUST_POLICY))
    ok(core, m.AttachPolicyToRole(policy_type="System", policy_name="AliyunECSReadOnlyAccess", role_name="App"))
    role = core.dir.roles["App"][0]
    session = common.Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT, arn="arn", principal_id="p",
                               role_name="App", role_id=role.role_id)
    answer = core.handle(envelope(m.GetEffectivePolicies(principal=session), dest="ram"), T0)[0].body
    assert [(p.name, p.version) for p in answer.policies] == [("System:AliyunECSReadOnlyAccess", "v1")]
    assert answer.generation == core.dir.generation and not answer.all_allowed
    ghost = common.Principal(identity_type="RAMUser", account_id=ACCOUNT, arn="arn", principal_id="p", user_name="ghost")
    assert core.handle(envelope(m.GetEffectivePolicies(principal=ghost), dest="ram"), T0)[0].body.policies == []
    assert not core.decide(ghost, m.Check(action="ecs:DescribeInstances", resource="*"), T0).allowed  # a denial, not a crash
    assert core.handle(envelope(m.GetEffectivePolicies(principal=root()), dest="ram"), T0)[0].body.all_allowed


def test_limits_are_configurable(core: RamCore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(directory.LIMITS, "GroupsPerUser", 1)
    ok(core, m.CreateUser(user_name="gina"))
    for g in ("g1", "g2"):
        ok(core, m.CreateGroup(group_name=g))
    ok(core, m.AddUserToGroup(user_name="gina", group_name="g1"))
    assert code(core, m.AddUserToGroup(user_name="gina", group_name="g2")) == "LimitExceeded.User.Group"
    assert errors.no_permission().http_status == 403


def test_a_refused_group_update_renames_nothing(core: RamCore) -> None:
    ok(core, m.CreateGroup(group_name="ops"))
    assert code(core, m.UpdateGroup(group_name="ops", new_group_name="ops2", new_comments="c" * 129)) == "InvalidParameter.NewComments.Length"
    assert ok(core, m.GetGroup(group_name="ops")).group.group_name == "ops"
    assert code(core, m.GetGroup(group_name="ops2")) == "EntityNotExist.Group"


def test_users_keep_their_contact_data(core: RamCore) -> None:
    user = ok(core, m.CreateUser(user_name="carol", mobile_phone="86-18600008888", email="carol@example.com")).user
    assert (user.mobile_phone, user.email) == ("86-18600008888", "carol@example.com")
    updated = ok(core, m.UpdateUser(user_name="carol", new_email="c@example.org")).user
    assert (updated.mobile_phone, updated.email) == ("86-18600008888", "c@example.org")
    assert code(core, m.CreateUser(user_name="dave", mobile_phone="18600008888")) == "InvalidParameter.MobilePhone"
    assert code(core, m.UpdateUser(user_name="carol", new_email="no-at-sign")) == "InvalidParameter.NewEmail"
