"""What Alibaba refuses, refused with Alibaba's code: tampered signatures, replayed nonces,
skewed timestamps, unknown and disabled keys, expired and forged tokens (both schemes)."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from alibabacloud_ram20150501 import models as ram_models
from alibabacloud_ram20150501.client import Client as Ram
from Tea.exceptions import TeaException

from services.cli import api, cluster
from services.gateway import core as gateway
from services.runtime import signing
from tests.compat.conftest import api_config, root_config

NOW = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731


def stamp(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def send(url: str, headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method, headers=headers or {})
    try:
        with api.opener.open(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def v1(target: cluster.ClusterFile, secret: str | None = None, *, when: dt.datetime | None = None, nonce: str | None = None,
       **params: str) -> str:
    query = {"Action": "GetCallerIdentity", "Version": "2015-04-01", "Format": "JSON", "AccessKeyId": target.access_key_id,
             "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": nonce or uuid.uuid4().hex,
             "Timestamp": stamp(when or NOW()), **params}
    query["Signature"] = signing.hmac_sha1(secret or target.access_key_secret, signing.rpc_string_to_sign("POST", query))
    return f"{target.gateway_url}/?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def v3(target: cluster.ClusterFile, *, secret: str | None = None, nonce: str | None = None, when: dt.datetime | None = None,
       token: str = "", access_key_id: str | None = None) -> tuple[str, dict[str, str]]:
    host = target.gateway_url.split("//", 1)[1]
    headers = {"host": host, "x-acs-action": "GetCallerIdentity", "x-acs-version": "2015-04-01",
               "x-acs-date": stamp(when or NOW()), "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
               "x-acs-content-sha256": signing.EMPTY_SHA256}
    if token:
        headers["x-acs-security-token"] = token
    canonical = signing.acs3_canonical_request("POST", "/", [], headers, headers, signing.EMPTY_SHA256)
    signature = signing.hmac_sha256_hex(secret or target.access_key_secret, signing.acs3_string_to_sign(canonical))
    headers["Authorization"] = signing.acs3_authorization(access_key_id or target.access_key_id, headers, signature)
    return f"{target.gateway_url}/", headers


def test_good_requests_pass_in_both_schemes(target) -> None:  # noqa: ANN001
    assert send(v1(target))[0] == 200
    url, headers = v3(target)
    status, body = send(url, headers)
    assert status == 200 and body["Arn"] == f"acs:ram::{target.account_id}:root"


def test_tampered_signatures(target) -> None:  # noqa: ANN001
    status, body = send(v1(target, secret="not-the-secret"))
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    url = v1(target).replace("Format=JSON", "Format=XML")  # a parameter changed after signing
    assert send(url)[1]["Code"] == "SignatureDoesNotMatch"
    url, headers = v3(target)
    headers["x-acs-action"] = "AssumeRole"  # a signed header changed after signing
    assert send(url, headers)[1]["Code"] == "SignatureDoesNotMatch"
    url, headers = v3(target)
    headers["Authorization"] = headers["Authorization"][:-4] + "0000"
    assert send(url, headers)[1]["Code"] == "SignatureDoesNotMatch"
    url, headers = v3(target)
    headers["Authorization"] = headers["Authorization"].replace("x-acs-date;", "")  # a header left unsigned
    assert send(url, headers)[1]["Code"] == "IncompleteSignature"


def test_a_mismatch_names_the_servers_string_to_sign(target) -> None:  # noqa: ANN001
    url = v1(target, secret="not-the-secret")
    query = urllib.parse.parse_qsl(url.split("?", 1)[1], keep_blank_values=True)
    status, body = send(url)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    assert body["Message"] == gateway.SIGNATURE_MISMATCH + signing.rpc_string_to_sign("POST", query)
    url, headers = v3(target, secret="not-the-secret")
    canonical = signing.acs3_canonical_request("POST", "/", [], {k.lower(): v for k, v in headers.items()},
                                               [h for h in headers if h != "Authorization"], signing.EMPTY_SHA256)
    assert send(url, headers)[1]["Message"] == gateway.SIGNATURE_MISMATCH + signing.acs3_string_to_sign(canonical)


def test_a_wrong_secret_is_named_by_each_sdk(target) -> None:  # noqa: ANN001
    from aliyunsdkcore.acs_exception.exceptions import ServerException
    from aliyunsdkcore.client import AcsClient
    from aliyunsdkcore.request import RpcRequest
    # A product SDK's request (aliyun-python-sdk-sts's GetCallerIdentityRequest is this RpcRequest);
    # a CommonRequest keeps no string to sign of its own, so the SDK cannot compare it.
    request = RpcRequest("Sts", "2015-04-01", "GetCallerIdentity")
    request.set_endpoint(target.gateway_url.split("//", 1)[1])
    request.set_protocol_type("http")
    with pytest.raises(ServerException) as legacy:  # it compares the server's string to sign with its own
        AcsClient(target.access_key_id, "not-the-secret", target.region_id).do_action_with_exception(request)
    assert legacy.value.get_error_code() == "InvalidAccessKeySecret" and legacy.value.get_http_status() == 400
    for signature, string_to_sign in ((None, "ACS3-HMAC-SHA256\n"), ("v2", "POST&%2F&AccessKeyId%3D")):
        config = api_config(target, signature=signature, access_key_id=target.access_key_id, access_key_secret="not-the-secret")
        with pytest.raises(TeaException) as tea:
            Ram(config).get_role(ram_models.GetRoleRequest(role_name="Any"))
        assert tea.value.code == "SignatureDoesNotMatch" and tea.value.statusCode == 400
        assert (gateway.SIGNATURE_MISMATCH + string_to_sign) in tea.value.message


def test_replayed_nonces(target) -> None:  # noqa: ANN001
    nonce = uuid.uuid4().hex
    assert send(v1(target, nonce=nonce))[0] == 200
    status, body = send(v1(target, nonce=nonce))
    assert body["Code"] == "SignatureNonceUsed" and status == 400
    url, headers = v3(target)
    assert send(url, headers)[0] == 200
    assert send(url, headers)[1]["Code"] == "SignatureNonceUsed"  # the same request, replayed byte for byte


def test_skewed_timestamps(target) -> None:  # noqa: ANN001
    for when in (NOW() - dt.timedelta(minutes=16), NOW() + dt.timedelta(minutes=16)):
        assert send(v1(target, when=when))[1]["Code"] == "InvalidTimeStamp.Expired"
        url, headers = v3(target, when=when)
        assert send(url, headers)[1]["Code"] == "InvalidTimeStamp.Expired"
    url = v1(target).replace("Timestamp=", "Timestamp=yesterday")
    assert send(url)[1]["Code"] == "InvalidTimeStamp.Format"


def test_unknown_and_disabled_keys(target) -> None:  # noqa: ANN001
    unknown = Ram(api_config(target, access_key_id="LTAInobodyhasthiskey", access_key_secret="x"))
    with pytest.raises(TeaException) as caught:
        unknown.get_role(ram_models.GetRoleRequest(role_name="Any"))
    assert caught.value.code == "InvalidAccessKeyId.NotFound"
    root = Ram(root_config(target))
    root.create_user(ram_models.CreateUserRequest(user_name="disabled-user"))
    key = root.create_access_key(ram_models.CreateAccessKeyRequest(user_name="disabled-user")).body.access_key
    user = Ram(api_config(target, access_key_id=key.access_key_id, access_key_secret=key.access_key_secret))
    with pytest.raises(TeaException) as caught:  # authenticated, but no ram:GetRole permission
        user.get_role(ram_models.GetRoleRequest(role_name="Any"))
    assert caught.value.code == "NoPermission"
    root.update_access_key(ram_models.UpdateAccessKeyRequest(user_access_key_id=key.access_key_id, status="Inactive",
                                                             user_name="disabled-user"))
    with pytest.raises(TeaException) as caught:
        user.get_role(ram_models.GetRoleRequest(role_name="Any"))
    assert caught.value.code == "InvalidAccessKeyId.Inactive"


def test_forged_and_mismatched_security_tokens(target) -> None:  # noqa: ANN001
    url, headers = v3(target, access_key_id="STS.forged", secret="x", token="CAISforged")
    assert send(url, headers)[1]["Code"] == "InvalidSecurityToken.Malformed"
    url, headers = v3(target, access_key_id="STS.forged", secret="x")
    assert send(url, headers)[1]["Code"] == "MissingSecurityToken"
