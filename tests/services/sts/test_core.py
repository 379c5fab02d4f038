"""The STS core and its SecurityTokens.

AssumeRole for the ECS service principal and for RAM principals (with the requests to RAM
answered by hand through ``on_reply``), verification of STS-signed requests,
GetCallerIdentity, session expiry; and the token format (round trip, tamper evidence).
"""

from __future__ import annotations

import base64
import json
import re

import msgspec
import pytest

from protocol import topics
from protocol.errors import Error, error
from protocol.messages import common, ram, sts as m
from protocol.messages.common import Principal
from protocol.times import iso
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime import signing
from services.runtime.effects import Log, Publish, Reply, Request
from services.sts import tokens
from services.sts.core import StsCore
from tests.helpers import ACCOUNT, T0, entropy, envelope, published, reply, requests, root

KEY = bytes(range(32))
ROLE_ID = "30004467717606123"
TEXT = "POST&%2F&Action%3DDescribeInstances"
ECS = Principal(identity_type="Service", account_id=ACCOUNT, arn="ecs.aliyuncs.com", principal_id="ecs.aliyuncs.com")
ALICE = Principal(identity_type="RAMUser", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:user/alice",
                  principal_id="2000000000000001", user_name="alice", access_key_id="LTAIalice")
ROOT_TRUST = json.dumps({"Version": "1", "Statement": [
    {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:root"]}}]})
T0_PLUS_HOUR = "2023-11-14T23:13:20Z"


def trust(*statements: dict) -> str:
    return json.dumps({"Version": "1", "Statement": list(statements)})


def make_role(name: str = "EcsRole", trust_text: str = ECS_TRUST_POLICY, max_session_duration: int = 3600) -> ram.Role:
    return ram.Role(role_id=ROLE_ID, role_name=name, arn=f"acs:ram::{ACCOUNT}:role/{name}",
                    assume_role_policy_document=trust_text, create_date=iso(T0 - 86400),
                    max_session_duration=max_session_duration)


@pytest.fixture
def core() -> StsCore:
    return StsCore(account_id=ACCOUNT, signing_key=KEY, entropy=entropy())


def assume(core: StsCore, *, caller: Principal | None = ECS, src: str = "ecs", role: str = "EcsRole",
           session: str = "i-bp13znx0m0me8cquu8a1", now: float = T0, role_arn: str | None = None, **kw: object) -> list:
    body = m.AssumeRole(role_arn=role_arn if role_arn is not None else f"acs:ram::{ACCOUNT}:role/{role}",
                        role_session_name=session, caller=caller, **kw)  # type: ignore[arg-type]
    return core.handle(envelope(body, src=src, dest="sts"), now)


def the_request(effects: list) -> Request:
    assert not [e for e in effects if isinstance(e, Reply)], effects
    found = requests(effects)
    assert len(found) == 1, effects
    return found[0]


def assume_ok(core: StsCore, role: ram.Role | None = None, *, now: float = T0, **kw: object) -> tuple[m.AssumeRoleOk, list]:
    """AssumeRole from ECS, RAM answering GetRole with ``role``: the reply and all effects."""
    request = the_request(assume(core, now=now, **kw))  # type: ignore[arg-type]
    effects = core.on_reply(request.context, ram.GetRoleOk(role=role or make_role()), now)
    answer = reply(effects)
    assert isinstance(answer, m.AssumeRoleOk), answer
    return answer, effects


def assert_error(body: object, code: str, status: int = 400) -> Error:
    assert isinstance(body, Error), body
    assert (body.code, body.http_status) == (code, status), body
    return body


def authenticate(core: StsCore, credentials: m.Credentials, *, now: float = T0, text: str = TEXT,
                 secret: str | None = None, token: str | None = None, access_key_id: str | None = None) -> object:
    signature = signing.hmac_sha1(credentials.access_key_secret if secret is None else secret, text)
    body = common.Authenticate(access_key_id=credentials.access_key_id if access_key_id is None else access_key_id,
                               signature=signature, string_to_sign=text,
                               security_token=credentials.security_token if token is None else token)
    return reply(core.handle(envelope(body, src="gateway", dest="sts"), now))


# -- AssumeRole for ECS --------------------------------------------------------------------
def test_assume_role_from_ecs_asks_ram_for_the_role(core: StsCore) -> None:
    effects = assume(core)
    request = the_request(effects)
    assert request.dest == "ram"
    assert request.trace_id == "t"
    assert isinstance(request.body, ram.GetRole) and request.body.role_name == "EcsRole"
    assert request.body.caller == Principal(identity_type="Service", account_id=ACCOUNT, arn="sts.aliyuncs.com",
                                            principal_id="sts.aliyuncs.com")


def test_assume_role_from_ecs_mints_credentials(core: StsCore) -> None:
    answer, effects = assume_ok(core)
    credentials = answer.credentials
    assert re.fullmatch(r"STS\.[A-Za-z0-9]{24}", credentials.access_key_id)
    assert re.fullmatch(r"[A-Za-z0-9]{30}", credentials.access_key_secret)
    assert credentials.security_token.startswith("CAIS")
    assert credentials.expiration == T0_PLUS_HOUR
    assert answer.assumed_role_user == m.AssumedRoleUser(arn=f"acs:ram::{ACCOUNT}:role/EcsRole/i-bp13znx0m0me8cquu8a1",
                                                         assumed_role_id=f"{ROLE_ID}:i-bp13znx0m0me8cquu8a1")
    claims = tokens.open_token(core.keys, credentials.security_token, T0)
    assert claims == tokens.Claims(access_key_id=credentials.access_key_id, access_key_secret=credentials.access_key_secret,
                                   account_id=ACCOUNT, role_arn=f"acs:ram::{ACCOUNT}:role/EcsRole", role_name="EcsRole",
                                   role_id=ROLE_ID, session_name="i-bp13znx0m0me8cquu8a1", expires_at=T0 + 3600)
    assert credentials.access_key_secret not in credentials.security_token  # sealed, not merely signed


def test_assume_role_publishes_role_assumed_without_secrets(core: StsCore) -> None:
    answer, effects = assume_ok(core)
    credentials = answer.credentials
    assert [e.topic for e in effects if isinstance(e, Publish)] == [topics.event("sts", "RoleAssumed")]
    assert published(effects, m.RoleAssumed) == [m.RoleAssumed(access_key_id=credentials.access_key_id,
                                                               role_arn=f"acs:ram::{ACCOUNT}:role/EcsRole",
                                                               session_name="i-bp13znx0m0me8cquu8a1", expires_at=T0 + 3600)]
    others = repr([e for e in effects if not isinstance(e, Reply)])
    assert credentials.access_key_secret not in others and credentials.security_token not in others


@pytest.mark.parametrize(("seconds", "expiration"), [(900, "2023-11-14T22:28:20Z"), (21600, "2023-11-15T04:13:20Z"),
                                                     (43200, "2023-11-15T10:13:20Z")])
def test_ecs_may_ask_for_up_to_twelve_hours(core: StsCore, seconds: int, expiration: str) -> None:
    answer, _ = assume_ok(core, duration_seconds=seconds)
    assert answer.credentials.expiration == expiration


def test_ecs_may_not_exceed_twelve_hours(core: StsCore) -> None:
    request = the_request(assume(core, duration_seconds=43201))
    effects = core.on_reply(request.context, ram.GetRoleOk(role=make_role()), T0)
    error_body = assert_error(reply(effects), "InvalidParameter.DurationSeconds")
    assert error_body.message == "The Min/Max value of DurationSeconds is 900/43200 seconds."
    assert published(effects, m.RoleAssumed) == []


def test_expiration_follows_now(core: StsCore) -> None:
    answer, _ = assume_ok(core, now=T0 + 59.5)
    assert answer.credentials.expiration == "2023-11-14T23:14:19Z"


def test_each_assumption_is_a_new_session(core: StsCore) -> None:
    first, _ = assume_ok(core)
    second, _ = assume_ok(core)
    assert first.credentials.access_key_id != second.credentials.access_key_id
    assert first.credentials.access_key_secret != second.credentials.access_key_secret
    assert first.credentials.security_token != second.credentials.security_token


@pytest.mark.parametrize("src", ["gateway", "ecs-2", "metadata-h1", "oss"])
def test_only_the_ecs_node_may_act_as_the_ecs_service(core: StsCore, src: str) -> None:
    effects = assume(core, src=src)
    error_body = assert_error(reply(effects), "NoPermission", 403)
    assert f"{src} may not act as service principal ecs.aliyuncs.com" in error_body.message
    assert requests(effects) == []


def test_the_ecs_node_may_not_act_as_another_service(core: StsCore) -> None:
    fc = Principal(identity_type="Service", account_id=ACCOUNT, arn="fc.aliyuncs.com", principal_id="fc.aliyuncs.com")
    effects = assume(core, caller=fc)
    assert_error(reply(effects), "NoPermission", 403)
    assert requests(effects) == []


def test_a_role_that_does_not_trust_ecs_is_refused(core: StsCore) -> None:
    request = the_request(assume(core))
    effects = core.on_reply(request.context, ram.GetRoleOk(role=make_role(trust_text=ROOT_TRUST)), T0)
    error_body = assert_error(reply(effects), "NoPermission", 403)
    assert "The role does not trust ecs.aliyuncs.com." in error_body.message
    assert requests(effects) == []


def test_a_trust_deny_for_ecs_is_refused(core: StsCore) -> None:
    text = trust({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ecs.aliyuncs.com"}},
                 {"Effect": "Deny", "Action": "sts:*", "Principal": {"Service": "*.aliyuncs.com"}})
    request = the_request(assume(core))
    assert_error(reply(core.on_reply(request.context, ram.GetRoleOk(role=make_role(trust_text=text)), T0)), "NoPermission", 403)


def test_errors_from_ram_are_passed_on(core: StsCore) -> None:
    request = the_request(assume(core, role="Gone"))
    missing = error("EntityNotExist.Role", "The specified Role not exists.", 404)
    effects = core.on_reply(request.context, missing, T0)
    assert reply(effects) == missing


def test_an_unexpected_reply_from_ram_is_an_internal_error(core: StsCore) -> None:
    request = the_request(assume(core))
    effects = core.on_reply(request.context, common.PingOk(node="ram", started_at=T0), T0)
    assert_error(reply(effects), "InternalError", 500)
    assert [(e.event, e.fields) for e in effects if isinstance(e, Log)] == [("unexpected_reply", {"type": "PingOk"})]


def test_the_reply_goes_to_the_original_request(core: StsCore) -> None:
    effects = assume(core)
    request = the_request(effects)
    done = core.on_reply(request.context, ram.GetRoleOk(role=make_role()), T0)
    [answer] = [e for e in done if isinstance(e, Reply)]
    assert answer.request.src == "ecs" and isinstance(answer.request.body, m.AssumeRole)


# -- AssumeRole for RAM principals ----------------------------------------------------------
def alice_asks(core: StsCore, trust_text: str = ROOT_TRUST, **kw: object) -> tuple[Request, list]:
    """Alice assumes a role; RAM answers GetRole. Returns the first request and what followed."""
    max_session = int(kw.pop("max_session_duration", 3600))  # type: ignore[call-overload]
    request = the_request(assume(core, caller=ALICE, src="gateway", role="Admin", session="alice", **kw))  # type: ignore[arg-type]
    assert isinstance(request.body, ram.GetRole) and request.body.role_name == "Admin"
    role = make_role("Admin", trust_text, max_session)
    return request, core.on_reply(request.context, ram.GetRoleOk(role=role), T0)


@pytest.mark.parametrize("principals", [[f"acs:ram::{ACCOUNT}:root"], [f"acs:ram::{ACCOUNT}:user/alice"],
                                        [f"acs:ram::{ACCOUNT}:user/*"]])
def test_a_trusted_ram_user_is_checked_with_ram(core: StsCore, principals: list[str]) -> None:
    first, effects = alice_asks(core, trust({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": principals}}))
    authorize = the_request(effects)
    assert authorize.dest == "ram" and authorize.context.request.body.role_session_name == "alice"  # the same request, on
    assert authorize.body == ram.Authorize(principal=ALICE, checks=[ram.Check(action="sts:AssumeRole",
                                                                              resource=f"acs:ram::{ACCOUNT}:role/Admin")])


def test_the_request_context_travels_to_the_authorize_check(core: StsCore) -> None:
    observed = {"acs:SourceIp": "10.0.0.1", "acs:SecureTransport": "true"}
    _, effects = alice_asks(core, request_context=observed)
    authorize = the_request(effects)
    assert isinstance(authorize.body, ram.Authorize)
    assert authorize.body.checks[0].context == observed


def test_a_ram_user_allowed_by_ram_gets_credentials(core: StsCore) -> None:
    _, effects = alice_asks(core)
    authorize = the_request(effects)
    done = core.on_reply(authorize.context, ram.AuthorizeOk(decisions=[ram.Decision(allowed=True, reason="ok")]), T0)
    answer = reply(done)
    assert isinstance(answer, m.AssumeRoleOk)
    assert answer.assumed_role_user.arn == f"acs:ram::{ACCOUNT}:role/Admin/alice"
    assert answer.credentials.expiration == T0_PLUS_HOUR
    assert len(published(done, m.RoleAssumed)) == 1


def test_a_ram_user_denied_by_ram_is_refused(core: StsCore) -> None:
    _, effects = alice_asks(core)
    authorize = the_request(effects)
    done = core.on_reply(authorize.context, ram.AuthorizeOk(decisions=[ram.Decision(allowed=False, reason="no statement allowed it")]), T0)
    error_body = assert_error(reply(done), "NoPermission", 403)
    assert "no statement allowed it" in error_body.message
    detail = error_body.access_denied_detail  # Alibaba's shape, with RAM's explanation
    assert detail is not None and (detail.auth_action, detail.no_permission_type) == ("sts:AssumeRole", "ImplicitDeny")
    assert detail.auth_principal_type == "SubUser" and detail.encoded_diagnostic_message == "no statement allowed it"
    assert published(done, m.RoleAssumed) == []


@pytest.mark.parametrize("trust_text", [
    ECS_TRUST_POLICY,  # RAM users cannot assume service roles
    trust({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:user/bob"]}}),
    trust({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": ["acs:ram::9999999999999999:root"]}}),
    trust({"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:root"]}}),
], ids=["service-role", "other-user", "other-account", "other-action"])
def test_a_ram_user_the_role_does_not_trust_is_refused(core: StsCore, trust_text: str) -> None:
    _, effects = alice_asks(core, trust_text)
    error_body = assert_error(reply(effects), "NoPermission", 403)
    assert f"does not allow acs:ram::{ACCOUNT}:user/alice" in error_body.message
    assert requests(effects) == []


@pytest.mark.parametrize("order", ["deny-first", "allow-first"])
def test_a_trust_deny_for_the_user_beats_an_allow_for_the_account(core: StsCore, order: str) -> None:
    statements = [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:root"]}},
        {"Effect": "Deny", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:user/alice"]}},
    ]
    if order == "deny-first":
        statements.reverse()
    _, effects = alice_asks(core, trust(*statements))
    assert_error(reply(effects), "NoPermission", 403)
    assert requests(effects) == []


def test_a_trust_deny_for_the_account_covers_its_users(core: StsCore) -> None:
    text = trust({"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:user/alice"]}},
                 {"Effect": "Deny", "Action": "sts:AssumeRole", "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:root"]}})
    _, effects = alice_asks(core, text)
    assert_error(reply(effects), "NoPermission", 403)


@pytest.mark.parametrize(("max_session", "seconds", "ok"), [(3600, 3600, True), (3600, 3601, False), (7200, 7200, True),
                                                            (7200, 7201, False), (43200, 43200, True)])
def test_ram_callers_are_bounded_by_the_role_max_session_duration(core: StsCore, max_session: int, seconds: int, ok: bool) -> None:
    _, effects = alice_asks(core, duration_seconds=seconds, max_session_duration=max_session)
    done = core.on_reply(the_request(effects).context, ram.AuthorizeOk(decisions=[ram.Decision(allowed=True, reason="ok")]), T0)
    if ok:
        assert reply(done).credentials.expiration == iso(T0 + seconds)  # type: ignore[attr-defined]
    else:
        error_body = assert_error(reply(done), "InvalidParameter.DurationSeconds")
        assert error_body.message == f"The Min/Max value of DurationSeconds is 900/{max_session} seconds."


def test_a_session_policy_travels_with_the_session(core: StsCore) -> None:
    session_policy = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss:GetObject", "Resource": "*"}]})
    _, effects = alice_asks(core, policy=session_policy)
    done = core.on_reply(the_request(effects).context, ram.AuthorizeOk(decisions=[ram.Decision(allowed=True, reason="ok")]), T0)
    credentials = reply(done).credentials  # type: ignore[attr-defined]
    ok = authenticate(core, credentials)
    assert isinstance(ok, common.AuthenticateOk) and ok.principal.session_policy == session_policy
    assert tokens.open_token(core.keys, credentials.security_token, T0).policy_digest == tokens.policy_digest(session_policy)  # type: ignore[union-attr]


def test_the_account_root_may_not_assume_roles(core: StsCore) -> None:
    effects = assume(core, caller=root(), src="gateway")
    error_body = assert_error(reply(effects), "NoPermission", 403)
    assert "use a RAM user" in error_body.message
    assert requests(effects) == []


def test_an_unauthenticated_assume_role_is_refused(core: StsCore) -> None:
    effects = assume(core, caller=None, src="gateway")
    error_body = assert_error(reply(effects), "NoPermission", 403)
    assert error_body.message.endswith("The request is not authenticated.")
    assert requests(effects) == []


# -- AssumeRole validation -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "code", "status"),
    [
        ({"role_arn": "EcsRole"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram::{ACCOUNT}:role/"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram::{ACCOUNT}:user/alice"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram:cn-hangzhou:{ACCOUNT}:role/EcsRole"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram::{ACCOUNT}:role/Ecs_Role"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram::{ACCOUNT}:role/EcsRole\n"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": f"acs:ram::{ACCOUNT}:role/{'x' * 65}"}, "InvalidParameter.RoleArn", 400),
        ({"role_arn": "acs:ram::9999999999999999:role/EcsRole"}, "EntityNotExist.Role", 404),
        ({"session": "a"}, "InvalidParameter.RoleSessionName", 400),
        ({"session": "x" * 65}, "InvalidParameter.RoleSessionName", 400),
        ({"session": "has space"}, "InvalidParameter.RoleSessionName", 400),
        ({"session": "a/b"}, "InvalidParameter.RoleSessionName", 400),
        ({"session": "alice\n"}, "InvalidParameter.RoleSessionName", 400),
        ({"duration_seconds": 899}, "InvalidParameter.DurationSeconds", 400),
        ({"duration_seconds": 0}, "InvalidParameter.DurationSeconds", 400),
        ({"policy": "x" * 2049}, "InvalidParameter.PolicySize", 400),
        ({"policy": "{"}, "InvalidParameter.PolicyGrammar", 400),
        ({"policy": json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss", "Resource": "*"}]})},
         "InvalidParameter.PolicyGrammar", 400),
    ],
)
def test_assume_role_validation(core: StsCore, kw: dict, code: str, status: int) -> None:
    effects = assume(core, **kw)
    assert_error(reply(effects), code, status)
    assert requests(effects) == []


def test_policy_grammar_errors_say_why(core: StsCore) -> None:
    text = json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss", "Resource": "*"}]})
    error_body = assert_error(reply(assume(core, policy=text)), "InvalidParameter.PolicyGrammar")
    assert error_body.message == ('The parameter Policy has not passed grammar check: '
                                  'Statement[0].Action "oss" must look like "service:Action" or "*"')


@pytest.mark.parametrize("kw", [{"session": "ab"}, {"session": "a.b@c-d_e" + "x" * 55}, {"duration_seconds": 900},
                                {"policy": json.dumps({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "oss:*", "Resource": "*"}]})}])
def test_assume_role_accepts_values_at_the_limits(core: StsCore, kw: dict) -> None:
    assume_ok(core, **kw)


# -- Authenticate with STS credentials -----------------------------------------------------
def test_authenticate_a_session(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    result = authenticate(core, answer.credentials, now=T0 + 10)
    assert isinstance(result, common.AuthenticateOk)
    principal = result.principal
    assert principal == Principal(identity_type="AssumedRoleUser", account_id=ACCOUNT,
                                  arn=f"acs:ram::{ACCOUNT}:assumed-role/EcsRole/i-bp13znx0m0me8cquu8a1",
                                  principal_id=f"{ROLE_ID}:i-bp13znx0m0me8cquu8a1", role_name="EcsRole", role_id=ROLE_ID,
                                  session_name="i-bp13znx0m0me8cquu8a1", access_key_id=answer.credentials.access_key_id)


def test_authenticate_with_the_v3_scheme(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    credentials = answer.credentials
    text = "ACS3-HMAC-SHA256\n0123"
    body = common.Authenticate(access_key_id=credentials.access_key_id, string_to_sign=text, signature_method=signing.ACS3,
                               signature=signing.hmac_sha256_hex(credentials.access_key_secret, text),
                               security_token=credentials.security_token)
    assert isinstance(reply(core.handle(envelope(body), T0)), common.AuthenticateOk)


def test_authenticate_without_a_token(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    assert_error(authenticate(core, answer.credentials, token=""), "MissingSecurityToken")


def test_authenticate_with_any_altered_token_character(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    token = answer.credentials.security_token
    for i, ch in enumerate(token):
        altered = token[:i] + ("B" if ch == "A" else "A") + token[i + 1:]
        result = authenticate(core, answer.credentials, token=altered)
        # refused; a change to the key-epoch header that names a long-gone epoch reads as expired
        assert isinstance(result, Error) and result.code in {"InvalidSecurityToken.Malformed", "InvalidSecurityToken.Expired",
                                                             "InvalidSecurityToken.MismatchWithAccessKey"}, (i, result)


def test_authenticate_with_a_truncated_or_extended_token(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    token = answer.credentials.security_token
    for altered in (token[:-1], token[:4], token[1:], token + "A", "CAIS", "garbage"):
        assert_error(authenticate(core, answer.credentials, token=altered), "InvalidSecurityToken.Malformed")


def test_authenticate_with_the_token_of_another_session(core: StsCore) -> None:
    first, _ = assume_ok(core)
    second, _ = assume_ok(core)
    result = authenticate(core, first.credentials, token=second.credentials.security_token)
    assert_error(result, "InvalidSecurityToken.MismatchWithAccessKey")
    # nor does a key that STS never issued pass with someone's token
    result = authenticate(core, first.credentials, access_key_id="STS.forged", secret=first.credentials.access_key_secret)
    assert_error(result, "InvalidSecurityToken.MismatchWithAccessKey")


def test_authenticate_with_a_token_from_another_sts(core: StsCore) -> None:
    other = StsCore(account_id=ACCOUNT, signing_key=b"another master key, 32 bytes...", entropy=entropy(7))
    theirs, _ = assume_ok(other)
    assert_error(authenticate(core, theirs.credentials), "InvalidSecurityToken.Malformed")


@pytest.mark.parametrize("after", [3600, 3601, 86400])
def test_authenticate_after_expiry(core: StsCore, after: float) -> None:
    answer, _ = assume_ok(core)
    assert isinstance(authenticate(core, answer.credentials, now=T0 + 3599.9), common.AuthenticateOk)
    result = authenticate(core, answer.credentials, now=T0 + after)
    error_body = assert_error(result, "InvalidSecurityToken.Expired")
    assert error_body.message == "The security token you provided has expired."


def test_authenticate_with_a_wrong_signature(core: StsCore) -> None:
    first, _ = assume_ok(core)
    second, _ = assume_ok(core)
    assert_error(authenticate(core, first.credentials, secret=second.credentials.access_key_secret), "SignatureDoesNotMatch")
    body = common.Authenticate(access_key_id=first.credentials.access_key_id, string_to_sign=TEXT + "&x",
                               signature=signing.hmac_sha1(first.credentials.access_key_secret, TEXT),
                               security_token=first.credentials.security_token)
    assert_error(reply(core.handle(envelope(body), T0)), "SignatureDoesNotMatch")


# -- GetCallerIdentity ---------------------------------------------------------------------
def test_get_caller_identity_of_a_session(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    principal = core.principal(tokens.open_token(core.keys, answer.credentials.security_token, T0))  # type: ignore[arg-type]
    result = reply(core.handle(envelope(m.GetCallerIdentity(caller=principal)), T0))
    assert result == m.GetCallerIdentityOk(account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:assumed-role/EcsRole/i-bp13znx0m0me8cquu8a1",
                                           identity_type="AssumedRoleUser", principal_id=f"{ROLE_ID}:i-bp13znx0m0me8cquu8a1",
                                           user_id="", role_id=ROLE_ID)


def test_get_caller_identity_of_a_user_and_of_root(core: StsCore) -> None:
    result = reply(core.handle(envelope(m.GetCallerIdentity(caller=ALICE)), T0))
    assert result == m.GetCallerIdentityOk(account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:user/alice", identity_type="RAMUser",
                                           principal_id="2000000000000001", user_id="2000000000000001", role_id="")
    result = reply(core.handle(envelope(m.GetCallerIdentity(caller=root())), T0))
    assert result == m.GetCallerIdentityOk(account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:root", identity_type="Account",
                                           principal_id=ACCOUNT, user_id=ACCOUNT)


def test_get_caller_identity_unauthenticated(core: StsCore) -> None:
    assert_error(reply(core.handle(envelope(m.GetCallerIdentity()), T0)), "NoPermission", 403)


def test_an_unknown_request_gets_invalid_api(core: StsCore) -> None:
    assert_error(reply(core.handle(envelope(ram.GetRole(role_name="x")), T0)), "InvalidApi.NotFound", 404)


# -- keys, restarts and rotation -------------------------------------------------------------
def test_sts_keeps_no_state_and_no_deadline(core: StsCore) -> None:
    assert core.node_id == "sts" and core.subscriptions() == []
    assume_ok(core)
    assert core.next_deadline() is None and core.on_timer(T0) == []
    assert not hasattr(core, "sessions")


def test_a_restarted_sts_with_the_same_master_key_still_verifies(core: StsCore) -> None:
    answer, _ = assume_ok(core)
    restarted = StsCore(account_id=ACCOUNT, signing_key=KEY, entropy=entropy(99))
    ok = authenticate(restarted, answer.credentials, now=T0 + 60)
    assert isinstance(ok, common.AuthenticateOk) and ok.principal.session_name == "i-bp13znx0m0me8cquu8a1"


def test_keys_rotate_and_old_keys_verify_until_their_tokens_expire() -> None:
    core = StsCore(account_id=ACCOUNT, signing_key=KEY, entropy=entropy(), key_rotation=600)
    early, _ = assume_ok(core, duration_seconds=3600)
    later, _ = assume_ok(core, now=T0 + 1200, duration_seconds=3600)
    header = lambda token: base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4))[1:5]  # noqa: E731
    assert header(early.credentials.security_token) != header(later.credentials.security_token)  # another key
    for now in (T0 + 1200, T0 + 3599):
        assert isinstance(authenticate(core, early.credentials, now=now), common.AuthenticateOk)
    assert_error(authenticate(core, early.credentials, now=T0 + 3600), "InvalidSecurityToken.Expired")
    assert isinstance(authenticate(core, later.credentials, now=T0 + 4000), common.AuthenticateOk)


# -- tokens --------------------------------------------------------------------------------
RING = tokens.KeyRing(KEY, 21600)
CLAIMS = tokens.Claims(access_key_id="STS.NUgYrLnoC37mZZCNnAbez2Ab", access_key_secret="s" * 30, account_id=ACCOUNT,
                       role_arn=f"acs:ram::{ACCOUNT}:role/EcsRole", role_name="EcsRole", role_id=ROLE_ID,
                       session_name="i-bp13znx0m0me8cquu8a1", expires_at=T0 + 3600, session_policy='{"Version":"1"}',
                       policy_digest=tokens.policy_digest('{"Version":"1"}'))
NONCE = bytes(range(12))
URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_token_round_trip() -> None:
    token = tokens.seal(RING, CLAIMS, T0, NONCE)
    assert token.startswith("CAIS") and "=" not in token
    assert set(token[4:]) <= set(URLSAFE)
    assert tokens.open_token(RING, token, T0) == CLAIMS
    assert CLAIMS.access_key_secret not in token and CLAIMS.session_name not in token


def test_fresh_nonces_give_different_tokens_for_the_same_session() -> None:
    first, second = tokens.seal(RING, CLAIMS, T0, NONCE), tokens.seal(RING, CLAIMS, T0, bytes(12))
    assert first != second
    assert tokens.open_token(RING, first, T0) == tokens.open_token(RING, second, T0) == CLAIMS


def test_wrong_keys_and_short_master_keys_are_refused() -> None:
    token = tokens.seal(RING, CLAIMS, T0, NONCE)
    assert tokens.open_token(tokens.KeyRing(b"x" * 32, 21600), token, T0) is None
    with pytest.raises(ValueError):
        tokens.KeyRing(b"short", 21600)


def test_a_token_from_an_epoch_beyond_any_session_is_refused() -> None:
    token = tokens.seal(RING, CLAIMS, T0, NONCE)
    later = T0 + tokens.MAX_SESSION + 2 * RING.rotation
    assert tokens.open_token(RING, token, later) is None and tokens.outlived(RING, token, later)
    assert tokens.open_token(RING, token, T0 - 3 * RING.rotation) is None  # from the future
    assert not tokens.outlived(RING, token, T0) and not tokens.outlived(RING, "CAIS!!", T0)


def test_any_single_character_change_is_refused() -> None:
    token = tokens.seal(RING, CLAIMS, T0, NONCE)
    accepted = [(i, c) for i in range(len(token)) for c in URLSAFE + "+/=!"
                if c != token[i] and tokens.open_token(RING, token[:i] + c + token[i + 1:], T0) is not None]
    assert accepted == []


def test_any_single_byte_change_in_the_sealed_bytes_is_refused() -> None:
    text = tokens.seal(RING, CLAIMS, T0, NONCE)[4:]
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    for i in range(len(raw)):
        for flip in (0x01, 0x80, 0xFF):
            altered = bytearray(raw)
            altered[i] ^= flip
            token = "CAIS" + base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("=")
            assert tokens.open_token(RING, token, T0) is None, (i, flip)


def test_truncation_and_extension_are_refused() -> None:
    token = tokens.seal(RING, CLAIMS, T0, NONCE)
    for n in range(len(token)):
        assert tokens.open_token(RING, token[:n], T0) is None, n
    for extra in ("A", "AA", "AAAA", "=", "==", " ", "\n"):
        assert tokens.open_token(RING, token + extra, T0) is None, extra
    assert tokens.open_token(RING, token[1:], T0) is None


def test_re_sealing_altered_claims_without_the_master_key_is_refused() -> None:
    forged_ring = tokens.KeyRing(b"attacker's own 32-byte master key", 21600)
    admin = msgspec.structs.replace(CLAIMS, role_name="Admin", role_arn=f"acs:ram::{ACCOUNT}:role/Admin")
    assert tokens.open_token(RING, tokens.seal(forged_ring, admin, T0, NONCE), T0) is None


# -- AssumeRoles: ECS's batch ----------------------------------------------------------------
def batch(core: StsCore, *sessions_and_roles: tuple[str, str], src: str = "ecs", caller: Principal = ECS) -> list:
    body = m.AssumeRoles(requests=[m.AssumeRole(role_arn=f"acs:ram::{ACCOUNT}:role/{role}", role_session_name=session, caller=caller)
                                   for session, role in sessions_and_roles])
    return core.handle(envelope(body, src=src, dest="sts"), T0)


def test_a_batch_asks_ram_once_per_role_and_answers_once_in_order(core: StsCore) -> None:
    effects = batch(core, ("i-one", "EcsRole"), ("i-two", "Other"), ("i-three", "EcsRole"), ("x", "EcsRole"))
    asked = requests(effects)
    assert sorted(r.body.role_name for r in asked) == ["EcsRole", "Other"]  # type: ignore[union-attr]
    assert not [e for e in effects if isinstance(e, Reply)]
    first = core.on_reply(asked[0].context, ram.GetRoleOk(role=make_role(asked[0].body.role_name)), T0)  # type: ignore[union-attr]
    assert not [e for e in first if isinstance(e, Reply)]  # the other role is still out
    last = core.on_reply(asked[1].context, ram.GetRoleOk(role=make_role(asked[1].body.role_name)), T0)  # type: ignore[union-attr]
    answer = reply(last)
    assert isinstance(answer, m.AssumeRolesOk) and len(answer.results) == 4
    ok = [r.ok for r in answer.results[:3]]
    assert all(o is not None for o in ok)
    assert [o.assumed_role_user.arn.rsplit("/", 1)[1] for o in ok] == ["i-one", "i-two", "i-three"]  # type: ignore[union-attr]
    assert len({o.credentials.access_key_id for o in ok}) == 3  # type: ignore[union-attr]
    assert_error(answer.results[3].error, "InvalidParameter.RoleSessionName")  # "x" is too short: that one only
    assert len(published(first + last, m.RoleAssumed)) == 3
    # each credential verifies as one AssumeRole's would
    for o in ok:
        assert o is not None and o.credentials.expiration == T0_PLUS_HOUR


def test_a_batch_whose_role_is_missing_or_not_trusting_ecs_fails_each_of_its_requests(core: StsCore) -> None:
    asked = requests(batch(core, ("i-one", "Gone"), ("i-two", "Gone")))
    [missing] = asked
    answer = reply(core.on_reply(missing.context, error("EntityNotExist.Role", "The specified Role not exists.", 404), T0))
    assert isinstance(answer, m.AssumeRolesOk)
    assert [r.error.code for r in answer.results if r.error] == ["EntityNotExist.Role"] * 2
    [untrusting] = requests(batch(core, ("i-one", "R"), ("i-two", "R")))
    answer = reply(core.on_reply(untrusting.context, ram.GetRoleOk(role=make_role("R", ROOT_TRUST)), T0))
    assert isinstance(answer, m.AssumeRolesOk) and all(r.ok is None and r.error is not None for r in answer.results)


def test_only_ecs_may_send_a_batch_and_only_as_itself(core: StsCore) -> None:
    assert_error(reply(batch(core, ("i-one", "EcsRole"), src="gateway")), "NoPermission", 403)
    answer = reply(batch(core, ("i-one", "EcsRole"), caller=ALICE))  # from ECS, but not as the ECS service principal
    assert isinstance(answer, m.AssumeRolesOk) and answer.results[0].error is not None and answer.results[0].ok is None


def test_requests_for_one_role_at_one_moment_share_one_get_role(core: StsCore) -> None:
    """A fleet's refreshes due together ask RAM for their role once; every one gets its own
    credential from that answer, and an error answer reaches them all."""
    asked = [assume(core, session=f"i-{n}") for n in range(50)]
    lookups = [e for effects in asked for e in effects if isinstance(e, Request)]
    assert len(lookups) == 1 and isinstance(lookups[0].body, ram.GetRole)
    done = core.on_reply(lookups[0].context, ram.GetRoleOk(role=make_role()), T0)
    answers = [e.body for e in done if isinstance(e, Reply)]
    assert len(answers) == 50 and all(isinstance(a, m.AssumeRoleOk) for a in answers)
    assert len({a.credentials.access_key_id for a in answers}) == 50
    again = [e for n in range(3) for e in assume(core, session=f"j-{n}") if isinstance(e, Request)]
    assert len(again) == 1  # the lookup is over: the next moment asks again (a role can change)
    failed = core.on_reply(again[0].context, error("ServiceUnavailable.Timeout", "timed out", 503), T0)
    assert [type(e.body) for e in failed if isinstance(e, Reply)] == [Error] * 3
