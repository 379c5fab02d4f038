"""protocol.trace.describe: the key fields of a message, never a secret."""

from __future__ import annotations

import msgspec
import pytest

from protocol.envelope import Envelope
from protocol.errors import AccessDeniedDetail, Error
from protocol.messages import ecs, ram, sts
from protocol.messages.common import Authenticate, AuthenticateOk, Principal
from protocol.trace import DOCUMENT_CHARS, MAX_FIELDS, TraceEvent, describe, is_secret

SECRET = "S3cr3tValueNobodyMaySee"
TOKEN = "CAIS-token-NobodyMaySee"


def env(body: object, **kw: object) -> Envelope:
    return Envelope(src="sts", dest="ecs", msg_id=7, body=body, in_reply_to=3, trace_id="abc", sent_at=12.5, **kw)  # type: ignore[arg-type]


def test_an_assume_role_answer_names_its_key_but_not_its_secret_or_token() -> None:
    body = sts.AssumeRoleOk(credentials=sts.Credentials(access_key_id="STS.abc", access_key_secret=SECRET, security_token=TOKEN,
                                                        expiration="2026-12-03T13:00:00Z"),
                            assumed_role_user=sts.AssumedRoleUser(arn="acs:ram::1:assumed-role/R/i-1", assumed_role_id="3:i-1"))
    event = describe(env(body), "ramsim/v1/node/ecs/from/sts")
    assert event == TraceEvent(time=12.5, src="sts", dest="ecs", type="AssumeRoleOk", msg_id=7, in_reply_to=3, trace_id="abc",
                               fields=event.fields, topic="ramsim/v1/node/ecs/from/sts")
    assert event.fields["Credentials.AccessKeyId"] == "STS.abc"
    assert event.fields["Credentials.Expiration"] == "2026-12-03T13:00:00Z"
    text = msgspec.json.encode(event).decode()
    assert SECRET not in text and TOKEN not in text


def test_a_pushed_instance_view_and_an_authentication_keep_their_secrets() -> None:
    creds = ecs.InstanceCredentials(access_key_id="STS.k", access_key_secret=SECRET, security_token=TOKEN, expiration=99.0,
                                    last_updated=1.0)
    net = ecs.NetworkInterface(mac="m", private_ip="10.0.0.2", network_interface_id="eni-1", vpc_id="vpc-1", vswitch_id="vsw-1",
                               vpc_cidr_block="10.0.0.0/16", vswitch_cidr_block="10.0.0.0/24", gateway="10.0.0.1", netmask="255.255.255.0")
    view = ecs.InstanceView(instance_id="i-1", host_id="host-1", generation=2, account_id="1", region_id="cn-hangzhou",
                            zone_id="cn-hangzhou-h", host_name="h", instance_type="ecs.g7.large", image_id="img", serial_number="sn",
                            network=net, ram_role_name="R", credentials=creds, user_data=SECRET)
    for body in (ecs.InstanceChanged(view=view),
                 Authenticate(access_key_id="LTAI1", signature=SECRET, string_to_sign=SECRET, security_token=TOKEN),
                 AuthenticateOk(principal=Principal(identity_type="RAMUser", account_id="1", arn="acs:ram::1:user/u",
                                                    principal_id="2", session_policy=SECRET), signing_key=SECRET),
                 ram.CreateAccessKeyOk(access_key=ram.AccessKey(access_key_id="LTAI2", status="Active", create_date="d",
                                                               access_key_secret=SECRET))):
        text = msgspec.json.encode(describe(env(body))).decode()
        assert SECRET not in text and TOKEN not in text, (type(body).__name__, text)
    assert describe(env(ecs.InstanceChanged(view=view))).fields["View.InstanceId"] == "i-1"
    assert describe(env(ecs.InstanceChanged(view=view))).fields["View.Credentials.AccessKeyId"] == "STS.k"


def test_policy_documents_are_trimmed_and_the_caller_is_its_arn() -> None:
    document = '{"Version": "1", "Statement": [' + ", ".join(['{"Effect": "Allow", "Action": "oss:*", "Resource": "*"}'] * 20) + "]}"
    caller = Principal(identity_type="Account", account_id="1", arn="acs:ram::1:root", principal_id="1")
    event = describe(env(ram.CreatePolicy(policy_name="P", policy_document=document, caller=caller)))
    assert event.fields["PolicyName"] == "P" and event.fields["Caller"] == "acs:ram::1:root"
    assert len(event.fields["PolicyDocument"]) == DOCUMENT_CHARS and event.fields["PolicyDocument"].endswith("…")


def test_an_error_shows_its_code_and_its_deciding_detail() -> None:
    detail = AccessDeniedDetail(auth_action="ram:PassRole", auth_principal_type="SubUser", auth_principal_display_name="u",
                                auth_principal_owner_id="1", no_permission_type="ImplicitDeny")
    event = describe(env(Error(code="NoPermission", message="no", http_status=403, access_denied_detail=detail)))
    assert event.type == "Error" and event.fields["Code"] == "NoPermission"
    assert event.fields["AccessDeniedDetail.NoPermissionType"] == "ImplicitDeny"
    assert len(event.fields) <= MAX_FIELDS


@pytest.mark.parametrize("name", ["AccessKeySecret", "SecurityToken", "Signature", "SigningKey", "StringToSign", "Password",
                                  "NewPassword", "ClientSecret", "MetadataToken", "Token"])
def test_secret_names(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize("name", ["AccessKeyId", "NextToken", "HttpTokens", "RoleName", "Expiration"])
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret(name)
