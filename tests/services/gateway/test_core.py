"""The gateway core: signed HTTP calls in, typed commands plus a credential out; replies rendered
as Alibaba JSON.

Calls are built the way the ``ramsim`` CLI sends them (``services.cli.api.signed_query``), so
what the gateway computes is checked against what a real client signed. ``now`` is taken from
the request's own Timestamp, so no test depends on the wall clock.
"""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl

import msgspec
import pytest

from protocol.errors import Error, error
from protocol.messages import ecs, ram, sts
from protocol.messages.common import Authenticate
from protocol.times import parse_iso
from services.cli.api import Credential, signed_query
from services.gateway import core
from services.gateway.core import Call, Gateway, HttpCall, render, repeated, verifier
from services.runtime import signing
from tests.helpers import ACCOUNT, root

KEY = Credential("LTAIgatewaytestkey000000", "gatewaytestsecretgatewaytestse")
STS_KEY = Credential("STS.NUgYrLnoC37mZZCNnAbez2Ab", "stssecretstssecretstssecretsts", "CAIStoken")


def signed(product: str, action: str, params: dict[str, str], credential: Credential = KEY,
           method: str = "POST") -> list[tuple[str, str]]:
    return parse_qsl(signed_query(product, action, params, credential, method=method), keep_blank_values=True)


def http(pairs: list[tuple[str, str]], method: str = "POST", form: list[tuple[str, str]] | None = None) -> HttpCall:
    return HttpCall(method=method, path="/", query=pairs, headers={"host": "127.0.0.1"}, form=form or [])


def stamp(pairs: list[tuple[str, str]]) -> float:
    return parse_iso(dict(pairs)["Timestamp"])


def parse(pairs: list[tuple[str, str]], *, method: str = "POST", now: float | None = None,
          gateway: Gateway | None = None, form: list[tuple[str, str]] | None = None) -> Call | Error:
    when = stamp(pairs + (form or [])) if now is None else now
    return (gateway or Gateway()).parse(http(pairs, method, form), when)


def command(result: Call | Error) -> object:
    """The command of a parsed call (an Error when the parameters were wrong)."""
    assert isinstance(result, Call), result
    return result.command


def assert_error(body: object, code: str, status: int = 400) -> Error:
    assert isinstance(body, Error), body
    assert (body.code, body.http_status) == (code, status), body
    return body


def without(pairs: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in pairs if k != name]


def replace(pairs: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in pairs]


# -- a signed call becomes a command -------------------------------------------------------
def test_a_ram_call_becomes_a_ram_command() -> None:
    result = parse(signed("ram", "GetRole", {"RoleName": "EcsRole"}))
    assert isinstance(result, Call)
    assert result.product == "ram"
    assert result.command == ram.GetRole(role_name="EcsRole")


@pytest.mark.parametrize(
    ("product", "action", "params", "expected"),
    [
        ("sts", "AssumeRole", {"RoleArn": f"acs:ram::{ACCOUNT}:role/R", "RoleSessionName": "alice", "DurationSeconds": "900"},
         sts.AssumeRole(role_arn=f"acs:ram::{ACCOUNT}:role/R", role_session_name="alice", duration_seconds=900)),
        ("sts", "GetCallerIdentity", {}, sts.GetCallerIdentity()),
        ("ram", "CreateRole", {"RoleName": "R", "AssumeRolePolicyDocument": '{"Version": "1"}', "MaxSessionDuration": "7200"},
         ram.CreateRole(role_name="R", assume_role_policy_document='{"Version": "1"}', max_session_duration=7200)),
        ("ecs", "RunInstances", {"RegionId": "cn-hangzhou", "Amount": "2", "RamRoleName": "EcsRole"},
         ecs.RunInstances(region_id="cn-hangzhou", amount=2, ram_role_name="EcsRole")),
        ("ecs", "AttachInstanceRamRole", {"RegionId": "cn-hangzhou", "RamRoleName": "R", "InstanceIds": '["i-1","i-2"]'},
         ecs.AttachInstanceRamRole(region_id="cn-hangzhou", ram_role_name="R", instance_ids='["i-1","i-2"]')),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_product_by_version_and_typed_fields(product: str, action: str, params: dict[str, str], expected: object) -> None:
    result = parse(signed(product, action, params))
    assert isinstance(result, Call) and result.product == product
    assert result.command == expected


def test_numbers_are_converted() -> None:
    run = command(parse(signed("ecs", "RunInstances", {"RegionId": "cn-hangzhou", "Amount": "2"})))
    assert isinstance(run, ecs.RunInstances) and run.amount == 2 and isinstance(run.amount, int)


def test_flattened_lists_are_lists_again() -> None:
    run = command(parse(signed("ecs", "RunInstances", {"RegionId": "cn-hangzhou", "Tag.2.Key": "team", "Tag.2.Value": "b",
                                                       "Tag.1.Key": "env", "Tag.10.Key": "last"})))
    assert isinstance(run, ecs.RunInstances)
    assert [(t.key, t.value) for t in run.tag] == [("env", ""), ("team", "b"), ("last", "")]
    assert repeated({"Name.2": "y", "Name.1": "x", "Plain": "p", "Odd.0": "kept"}) == {"Plain": "p", "Odd.0": "kept", "Name": ["x", "y"]}
    bad = parse(signed("ecs", "RunInstances", {"RegionId": "cn-hangzhou", "Tag.1": "not-an-object"}))
    assert isinstance(bad, Call) and isinstance(bad.command, Error) and bad.command.code == "InvalidParameter"


def test_region_id_is_kept_only_for_commands_that_have_one() -> None:
    role = command(parse(signed("ram", "GetRole", {"RoleName": "R", "RegionId": "cn-hangzhou"})))
    assert role == ram.GetRole(role_name="R")


def test_unknown_parameters_are_ignored() -> None:
    role = command(parse(signed("ram", "GetRole", {"RoleName": "R", "ResourceGroupId": "rg-1", "OwnerId": "1"})))
    assert role == ram.GetRole(role_name="R")


@pytest.mark.parametrize("name", ["Caller", "caller", "type"])
def test_a_client_supplied_caller_is_ignored(name: str) -> None:
    forged = msgspec.json.encode(root()).decode()
    result = parse(signed("ram", "CreateUser", {"UserName": "mallory", name: forged}))
    created = command(result)
    assert isinstance(created, ram.CreateUser)
    assert created.caller is None and created.user_name == "mallory"


def test_a_client_supplied_request_context_is_ignored() -> None:
    forged = '{"acs:SourceIp": "10.0.0.1", "acs:SecureTransport": "true"}'
    created = command(parse(signed("ram", "CreateUser", {"UserName": "mallory", "RequestContext": forged})))
    assert isinstance(created, ram.CreateUser)
    assert created.request_context == {} and created.caller is None


def test_the_string_to_sign_is_what_the_client_signed() -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "EcsRole", "Odd": "a b*c/~é"})
    result = parse(pairs)
    assert isinstance(result, Call)
    credential = result.credential
    assert credential.access_key_id == KEY.access_key_id
    assert credential.signature_method == "HMAC-SHA1" and credential.security_token == ""
    assert credential.string_to_sign == signing.rpc_string_to_sign("POST", pairs)
    assert signing.hmac_sha1(KEY.access_key_secret, credential.string_to_sign) == credential.signature
    assert signing.verify(KEY.access_key_secret, credential.string_to_sign, credential.signature)
    assert not signing.verify("another secret", credential.string_to_sign, credential.signature)


def test_the_method_is_part_of_what_was_signed() -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "EcsRole"}, method="GET")
    good = parse(pairs, method="GET")
    assert isinstance(good, Call) and signing.verify(KEY.access_key_secret, good.credential.string_to_sign, good.credential.signature)
    bad = parse(pairs, method="POST")
    assert isinstance(bad, Call) and not signing.verify(KEY.access_key_secret, bad.credential.string_to_sign, bad.credential.signature)


def test_form_parameters_are_read_and_signed() -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "EcsRole"})
    query = [(k, v) for k, v in pairs if k != "RoleName"]
    result = parse(query, form=[("RoleName", "EcsRole")])
    assert isinstance(result, Call) and result.command == ram.GetRole(role_name="EcsRole")
    assert signing.verify(KEY.access_key_secret, result.credential.string_to_sign, result.credential.signature)


def test_blank_parameters_are_signed() -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "EcsRole", "SignatureType": ""})
    result = parse(pairs)
    assert isinstance(result, Call)
    assert "SignatureType%3D%26" in result.credential.string_to_sign
    assert signing.verify(KEY.access_key_secret, result.credential.string_to_sign, result.credential.signature)


def test_sts_credentials_carry_their_token() -> None:
    result = parse(signed("ecs", "DescribeInstances", {"RegionId": "cn-hangzhou"}, credential=STS_KEY))
    assert isinstance(result, Call)
    assert result.credential == Authenticate(access_key_id=STS_KEY.access_key_id, signature=result.credential.signature,
                                             string_to_sign=result.credential.string_to_sign, security_token="CAIStoken")
    assert signing.verify(STS_KEY.access_key_secret, result.credential.string_to_sign, result.credential.signature)


# -- what is wrong with a call -------------------------------------------------------------
@pytest.mark.parametrize("name", ["Action", "Version", "AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion",
                                  "SignatureNonce", "Timestamp"])
def test_missing_protocol_parameters(name: str) -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    now = stamp(pairs)
    for broken in (without(pairs, name), replace(pairs, name, "")):
        result = parse(broken, now=now)
        error_body = assert_error(result, "MissingParameter")
        assert error_body.message == f'The input parameter "{name}" that is mandatory for processing this request is not supplied.'


@pytest.mark.parametrize(("product", "action", "params", "field"), [
    ("ram", "GetRole", {}, "RoleName"),
    ("ram", "CreateRole", {"RoleName": "R"}, "AssumeRolePolicyDocument"),
    ("sts", "AssumeRole", {"RoleArn": "acs:ram::1:role/R"}, "RoleSessionName"),
    ("ecs", "RunInstances", {"Amount": "1"}, "RegionId"),
])
def test_missing_command_fields_are_named(product: str, action: str, params: dict[str, str], field: str) -> None:
    result = parse(signed(product, action, params))
    assert isinstance(result, Call) and result.product == product
    error_body = assert_error(result.command, "MissingParameter")
    assert f'"{field}"' in error_body.message
    # the credential is still there: the caller is authenticated before hearing what was wrong
    assert result.credential.access_key_id == KEY.access_key_id


@pytest.mark.parametrize(("product", "action", "params", "field"), [
    ("ecs", "RunInstances", {"RegionId": "cn-hangzhou", "Amount": "two"}, "Amount"),
    ("sts", "AssumeRole", {"RoleArn": "a", "RoleSessionName": "s", "DurationSeconds": "1h"}, "DurationSeconds"),
    ("ram", "CreateRole", {"RoleName": "R", "AssumeRolePolicyDocument": "{}", "MaxSessionDuration": "3600.5"}, "MaxSessionDuration"),
])
def test_wrongly_typed_fields_are_invalid(product: str, action: str, params: dict[str, str], field: str) -> None:
    result = parse(signed(product, action, params))
    error_body = assert_error(command(result), "InvalidParameter")
    assert error_body.message.startswith(f'The parameter "{field}" is invalid.')
    assert "int" in error_body.message


def test_unknown_action() -> None:
    result = parse(signed("ram", "DeleteEverything", {}))
    assert isinstance(result, Call) and result.product == "ram"
    error_body = assert_error(result.command, "InvalidApi.NotFound", 404)
    assert "(ram DeleteEverything)" in error_body.message


def test_an_action_of_another_product_is_unknown() -> None:
    pairs = signed("sts", "AssumeRole", {"RoleArn": "a", "RoleSessionName": "s"})
    pairs = replace(pairs, "Version", "2015-05-01")  # RAM has no AssumeRole
    assert_error(command(parse(pairs)), "InvalidApi.NotFound", 404)


def test_unknown_version() -> None:
    pairs = replace(signed("ram", "GetRole", {"RoleName": "R"}), "Version", "2099-01-01")
    result = parse(pairs)
    error_body = assert_error(command(result), "InvalidVersion")
    assert "2099-01-01" in error_body.message


def test_only_hmac_sha1_is_accepted_in_v1() -> None:
    pairs = replace(signed("ram", "GetRole", {"RoleName": "R"}), "SignatureMethod", "HMAC-SHA256")
    assert_error(parse(pairs), "InvalidParameter.SignatureMethod")


# -- freshness and replay ------------------------------------------------------------------
def test_a_timestamp_within_fifteen_minutes_passes() -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    assert isinstance(parse(pairs, now=stamp(pairs) + 900), Call)
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    assert isinstance(parse(pairs, now=stamp(pairs) - 900), Call)


@pytest.mark.parametrize("offset", [901, -901, 86400])
def test_a_stale_timestamp_is_refused(offset: float) -> None:
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    error_body = assert_error(parse(pairs, now=stamp(pairs) + offset), "InvalidTimeStamp.Expired")
    assert "15 minutes" in error_body.message


@pytest.mark.parametrize("value", ["2024-01-01 00:00:00", "2024-01-01T00:00:00.123Z", "1700000000", "yesterday"])
def test_a_malformed_timestamp_is_refused(value: str) -> None:
    pairs = replace(signed("ram", "GetRole", {"RoleName": "R"}), "Timestamp", value)
    assert_error(parse(pairs, now=1_700_000_000.0), "InvalidTimeStamp.Format")


def test_a_reused_nonce_is_refused() -> None:
    gateway = Gateway()
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    assert isinstance(parse(pairs, gateway=gateway), Call)
    error_body = assert_error(parse(pairs, gateway=gateway, now=stamp(pairs) + 1), "SignatureNonceUsed")
    assert error_body.message == "Specified signature nonce was used already."
    # another nonce passes
    assert isinstance(parse(signed("ram", "GetRole", {"RoleName": "R"}), gateway=gateway, now=stamp(pairs) + 1), Call)


def test_a_nonce_is_remembered_as_long_as_its_timestamp_can_pass() -> None:
    """A client whose clock runs 15 minutes ahead: its request may be replayed until 15 minutes
    after its own timestamp, so the nonce must be remembered until then."""
    gateway = Gateway(max_skew=900)
    pairs = signed("ram", "GetRole", {"RoleName": "R"})
    sent = stamp(pairs)
    assert isinstance(parse(pairs, gateway=gateway, now=sent - 900), Call)
    for later in (sent, sent + 600, sent + 900):
        assert_error(parse(pairs, gateway=gateway, now=later), "SignatureNonceUsed")
    assert_error(parse(pairs, gateway=gateway, now=sent + 901), "InvalidTimeStamp.Expired")


def test_old_nonces_are_forgotten() -> None:
    """Once a nonce's timestamp can no longer pass, the gateway forgets it (memory stays bounded):
    the same nonce on a much later request is accepted."""
    gateway = Gateway(max_skew=900)
    first = signed("ram", "GetRole", {"RoleName": "R"})
    assert isinstance(parse(first, gateway=gateway), Call)
    later = replace(first, "Timestamp", "2099-01-01T00:00:00Z")
    assert isinstance(gateway.parse(http(later), parse_iso("2099-01-01T00:00:00Z")), Call)


# -- V3 (ACS3-HMAC-SHA256) -----------------------------------------------------------------
EMPTY = hashlib.sha256(b"").hexdigest()


def v3_call(secret: str = "testsecret", *, sign: list[str] | None = None, body: bytes = b"",
            headers: dict[str, str] | None = None) -> HttpCall:
    query = [("DurationSeconds", "3600"), ("RoleArn", "acs:ram::1234567890123456:role/EcsRamRoleTest"), ("RoleSessionName", "alice")]
    base = {"accept": "application/json", "host": "sts.aliyuncs.com", "x-acs-accesskey-id": "STS.testid",
            "x-acs-action": "AssumeRole", "x-acs-content-sha256": EMPTY, "x-acs-date": "2024-01-01T00:00:00Z",
            "x-acs-security-token": "CAIStoken", "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef",
            "x-acs-version": "2015-04-01", **(headers or {})}
    names = sign if sign is not None else sorted(base)
    canonical = signing.acs3_canonical_request("POST", "/", query, base, names, signing.sha256_hex(body))
    signature = signing.hmac_sha256_hex(secret, signing.acs3_string_to_sign(canonical))
    base["authorization"] = signing.acs3_authorization("STS.testid", names, signature)
    return HttpCall(method="POST", path="/", query=query, headers=base, body=body)


V3_NOW = parse_iso("2024-01-01T00:00:00Z")


def test_v3_call_matches_the_published_vector() -> None:
    result = Gateway().parse(v3_call(), V3_NOW)
    assert isinstance(result, Call) and result.product == "sts"
    assert result.command == sts.AssumeRole(role_arn="acs:ram::1234567890123456:role/EcsRamRoleTest", role_session_name="alice",
                                            duration_seconds=3600)
    credential = result.credential
    assert (credential.access_key_id, credential.signature_method, credential.security_token) == ("STS.testid", signing.ACS3, "CAIStoken")
    assert credential.signature == "1898f85d19aa02c98bda0e423022e6a35e5f9c0c9f2579a64578afc21ea055b5"
    assert signing.verify("testsecret", credential.string_to_sign, credential.signature, signing.ACS3)


def test_v3_unsigned_acs_headers_are_refused() -> None:
    call = v3_call(sign=["host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce", "x-acs-version"])
    error_body = assert_error(Gateway().parse(call, V3_NOW), "IncompleteSignature")
    assert "x-acs-accesskey-id, x-acs-security-token" in error_body.message


def test_v3_body_hash_must_match() -> None:
    call = v3_call(body=b"x", headers={"x-acs-content-sha256": EMPTY})
    assert_error(Gateway().parse(call, V3_NOW), "SignatureDoesNotMatch")


def test_v3_bad_authorization_header() -> None:
    call = v3_call()
    broken = HttpCall(method="POST", path="/", query=call.query, headers={**call.headers, "authorization": "ACS3-HMAC-SHA256 junk"})
    assert_error(Gateway().parse(broken, V3_NOW), "IncompleteSignature")


def test_v3_stale_date_is_refused() -> None:
    assert_error(Gateway().parse(v3_call(), V3_NOW + 3600), "InvalidTimeStamp.Expired")


# -- routing and rendering -----------------------------------------------------------------
@pytest.mark.parametrize(("key", "node"), [("STS.abc", "sts"), ("LTAIabc", "ram"), ("sts.abc", "ram"), ("", "ram")])
def test_verifier(key: str, node: str) -> None:
    assert verifier(key) == node


def test_versions_name_every_product() -> None:
    assert core.VERSIONS == {"ram": "2015-05-01", "sts": "2015-04-01", "ecs": "2014-05-26"}


def test_render_an_ok_body() -> None:
    body = ram.GetRoleOk(role=ram.Role(role_id="1", role_name="R", arn=f"acs:ram::{ACCOUNT}:role/R",
                                       assume_role_policy_document="{}", create_date="2023-11-14T22:13:20Z"))
    status, data = render(body, "REQ-1", "ram")
    assert status == 200
    assert "type" not in data
    assert data["RequestId"] == "REQ-1"
    assert data["Role"]["Arn"] == f"acs:ram::{ACCOUNT}:role/R"  # type: ignore[index]
    assert data["Role"]["CreateDate"] == "2023-11-14T22:13:20Z"  # type: ignore[index]


def test_render_an_empty_ok_body() -> None:
    assert render(ram.AttachPolicyToRoleOk(), "REQ-2", "ram") == (200, {"RequestId": "REQ-2"})


@pytest.mark.parametrize(("body", "status"), [
    (error("EntityNotExist.Role", "The specified Role not exists.", 404), 404),
    (error("NoPermission", "You are not authorized to do this action.", 403), 403),
    (error("InternalError", "An internal error occurred.", 500), 500),
    (error("InvalidParameter", "bad"), 400),
])
def test_render_an_error(body: Error, status: int) -> None:
    got_status, data = render(body, "REQ-3", "sts")
    assert got_status == status
    assert data["Code"] == body.code and data["Message"] == body.message
    assert data["RequestId"] == "REQ-3"
    assert data["HostId"] == "sts.aliyuncs.com"
    assert data["Recommend"] == f"https://api.aliyun.com/troubleshoot?q={body.code}"
    assert "type" not in data and "HttpStatus" not in data


@pytest.mark.parametrize(("command", "retried"), [
    (Authenticate(access_key_id="LTAI", string_to_sign="s", signature="x"), True),
    (ram.GetRole(role_name="r"), True), (ram.ListUsers(), True), (ecs.DescribeInstances(region_id="cn-hangzhou"), True),
    (ram.CreateUser(user_name="u"), False), (ram.AttachPolicyToRole(policy_type="System", policy_name="p", role_name="r"), False),
    (ecs.AttachInstanceRamRole(region_id="cn-hangzhou", ram_role_name="r", instance_ids="[]"), False), (sts.AssumeRole(role_arn="a", role_session_name="s"), False),
])
def test_only_idempotent_requests_are_asked_again_after_a_timeout(command: object, retried: bool) -> None:
    assert core.idempotent(command) is retried


def test_a_restored_nonce_window_refuses_replays_and_forgets_what_can_no_longer_pass() -> None:
    first = Gateway()
    now = parse_iso("2026-01-01T00:00:00Z")
    stamp = "2026-01-01T00:00:00Z"
    assert first._fresh(stamp, "n-1", now) is None
    assert first.seen == [("n-1", now)]  # for the shell to keep on disk
    restarted = Gateway()
    restarted.restore({"n-1": now, "n-old": now - 3600}, now)
    replay = restarted._fresh(stamp, "n-1", now)
    assert isinstance(replay, Error) and replay.code == "SignatureNonceUsed"
    assert restarted._fresh(stamp, "n-old", now) is None  # too old to be kept: its own request could not pass anyway


def test_answers_show_defaults_but_not_unset_text() -> None:
    listed = ram.ListPoliciesOk(policies=ram.PolicyList(policy=[ram.Policy(policy_name="P", policy_type="Custom")]),
                                is_truncated=False)
    status, data = render(listed, "RID", "ram")
    assert status == 200 and data["IsTruncated"] is False and "Marker" not in data
    [policy] = data["Policies"]["Policy"]  # type: ignore[index]
    assert policy["DefaultVersion"] == "v1" and policy["AttachmentCount"] == 0 and "AttachDate" not in policy
    assert render(ram.ListUsersOk(users=ram.UserList(), is_truncated=False), "RID", "ram")[1]["Users"] == {"User": []}
