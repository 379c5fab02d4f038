"""OpenAPI request signing: the published test vectors, percent-encoding and verification.

Vectors: ``/work/shared/reference/alibaba.md`` section 8.5.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from services.runtime import signing

EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

V1_RAM_CREATE_USER = {
    "AccessKeyId": "testid", "Action": "CreateUser", "Format": "JSON", "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "6a6e0ca6-4557-11e5-86a2-b8e8563dc8d2", "SignatureVersion": "1.0",
    "Timestamp": "2015-08-18T03:15:45Z", "UserName": "test", "Version": "2015-05-01",
}
V1_STS_ASSUME_ROLE = {
    "AccessKeyId": "testid", "Action": "AssumeRole", "DurationSeconds": "3600", "Format": "json",
    "RoleArn": "acs:ram::1234567890123456:role/EcsRamRoleTest", "RoleSessionName": "alice",
    "SignatureMethod": "HMAC-SHA1", "SignatureNonce": "0123456789abcdef0123456789abcdef", "SignatureVersion": "1.0",
    "Timestamp": "2024-01-01T00:00:00Z", "Version": "2015-04-01",
}


# -- V1 (RPC, HMAC-SHA1) -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("GET", V1_RAM_CREATE_USER, "kRA2cnpJVacIhDMzXnoNZG9tDCI="),
        ("POST", V1_STS_ASSUME_ROLE, "Y1X9VC1oEhbVXkirdSAQPONplms="),
    ],
    ids=["ram-CreateUser", "sts-AssumeRole"],
)
def test_v1_vectors(method: str, params: dict[str, str], expected: str) -> None:
    string_to_sign = signing.rpc_string_to_sign(method, params)
    assert signing.hmac_sha1("testsecret", string_to_sign) == expected
    assert signing.verify("testsecret", string_to_sign, expected)
    assert signing.verify("testsecret", string_to_sign, expected, "HMAC-SHA1")


def test_v1_string_to_sign_shape() -> None:
    text = signing.rpc_string_to_sign("get", {"b": "2 3", "a": "x/y", "Signature": "ignored"})
    assert text == "GET&%2F&a%3Dx%252Fy%26b%3D2%25203"


def test_v1_signature_is_excluded_and_order_does_not_matter() -> None:
    pairs = list(V1_RAM_CREATE_USER.items())
    shuffled = list(reversed(pairs)) + [("Signature", "kRA2cnpJVacIhDMzXnoNZG9tDCI=")]
    assert signing.rpc_string_to_sign("GET", shuffled) == signing.rpc_string_to_sign("GET", V1_RAM_CREATE_USER)


def test_v1_blank_values_are_signed() -> None:
    with_blank = {**V1_RAM_CREATE_USER, "SignatureType": ""}
    text = signing.rpc_string_to_sign("GET", with_blank)
    assert "SignatureType%3D%26" in text
    assert text != signing.rpc_string_to_sign("GET", V1_RAM_CREATE_USER)


@pytest.mark.parametrize("change", ["method", "param", "secret"])
def test_v1_any_change_breaks_the_vector(change: str) -> None:
    params = dict(V1_RAM_CREATE_USER)
    method, secret = "GET", "testsecret"
    if change == "method":
        method = "POST"
    elif change == "param":
        params["UserName"] = "tess"
    else:
        secret = "testsecreT"
    assert signing.hmac_sha1(secret, signing.rpc_string_to_sign(method, params)) != "kRA2cnpJVacIhDMzXnoNZG9tDCI="


# -- V3 (ACS3-HMAC-SHA256) -----------------------------------------------------------------
def _acs3(method: str, query: list[tuple[str, str]], headers: dict[str, str], secret: str) -> str:
    canonical = signing.acs3_canonical_request(method, "/", query, headers, list(headers), EMPTY)
    return signing.hmac_sha256_hex(secret, signing.acs3_string_to_sign(canonical))


@pytest.mark.parametrize(
    ("date", "nonce", "expected"),
    [
        ("2023-10-26T10:22:32Z", "3156853299f313e23d1673dc12e1703d", "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"),
        ("2023-10-26T09:01:01Z", "d410180a5abf7fe235dd9b74aca91fc0", "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"),
    ],
)
def test_v3_official_vectors(date: str, nonce: str, expected: str) -> None:
    query = [("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"), ("RegionId", "cn-shanghai")]
    headers = {"host": "ecs.cn-shanghai.aliyuncs.com", "x-acs-action": "RunInstances", "x-acs-content-sha256": EMPTY,
               "x-acs-date": date, "x-acs-signature-nonce": nonce, "x-acs-version": "2014-05-26"}
    assert _acs3("POST", query, headers, "YourAccessKeySecret") == expected


def test_v3_sts_credentials_vector() -> None:
    query = [("DurationSeconds", "3600"), ("RoleArn", "acs:ram::1234567890123456:role/EcsRamRoleTest"), ("RoleSessionName", "alice")]
    headers = {"accept": "application/json", "host": "sts.aliyuncs.com", "x-acs-accesskey-id": "STS.testid",
               "x-acs-action": "AssumeRole", "x-acs-content-sha256": EMPTY, "x-acs-date": "2024-01-01T00:00:00Z",
               "x-acs-security-token": "CAIStoken", "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef",
               "x-acs-version": "2015-04-01"}
    expected = "1898f85d19aa02c98bda0e423022e6a35e5f9c0c9f2579a64578afc21ea055b5"
    assert _acs3("POST", query, headers, "testsecret") == expected
    canonical = signing.acs3_canonical_request("POST", "/", query, headers, list(headers), EMPTY)
    assert signing.verify("testsecret", signing.acs3_string_to_sign(canonical), expected, signing.ACS3)
    assert not signing.verify("testsecret", signing.acs3_string_to_sign(canonical), expected)  # not an HMAC-SHA1 signature


def test_v3_only_signed_headers_take_part() -> None:
    headers = {"host": "h", "x-acs-date": "d", "user-agent": "ua"}
    signed = signing.acs3_canonical_request("POST", "", [], headers, ["x-acs-date", "host"], EMPTY)
    assert signed == f"POST\n/\n\nhost:h\nx-acs-date:d\n\nhost;x-acs-date\n{EMPTY}"


def test_v3_authorization_round_trip() -> None:
    value = signing.acs3_authorization("AK", ["x-acs-date", "host"], "abc")
    assert value == "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host;x-acs-date,Signature=abc"
    assert signing.parse_acs3_authorization(value) == ("AK", ["host", "x-acs-date"], "abc")


@pytest.mark.parametrize("value", [
    "HMAC-SHA1 Credential=AK,SignedHeaders=host,Signature=abc",
    "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host",
    "ACS3-HMAC-SHA256 SignedHeaders=host,Signature=abc",
    "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=,Signature=abc",
    "",
])
def test_v3_bad_authorization_headers(value: str) -> None:
    assert signing.parse_acs3_authorization(value) is None


# -- pct -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (" ", "%20"),
        ("*", "%2A"),
        ("/", "%2F"),
        ("~", "~"),
        ("+", "%2B"),
        ("=", "%3D"),
        ("&", "%26"),
        (":", "%3A"),
        ("%", "%25"),
        ("AZaz09-_.~", "AZaz09-_.~"),
        ("a b*c/d~e", "a%20b%2Ac%2Fd~e"),
        ("\u00e9", "%C3%A9"),  # UTF-8, upper-case hex
        ("", ""),
    ],
)
def test_pct(raw: str, encoded: str) -> None:
    assert signing.pct(raw) == encoded


# -- verify --------------------------------------------------------------------------------
def test_verify_accepts_only_the_right_signature() -> None:
    good = signing.hmac_sha1("s3cret", "text")
    assert signing.verify("s3cret", "text", good)
    assert not signing.verify("s3cret", "text", good[:-2] + ("A=" if good[-2:] != "A=" else "B="))
    assert not signing.verify("s3cret", "text ", good)
    assert not signing.verify("s3cret ", "text", good)
    assert not signing.verify("s3cret", "text", "")


@pytest.mark.parametrize("method", ["HMAC-MD5", "hmac-sha1", "", "ACS3-HMAC-SM3"])
def test_verify_refuses_unknown_methods(method: str) -> None:
    good = signing.hmac_sha1("s3cret", "text")
    assert signing.verify("s3cret", "text", good, method) is False


def test_v1_key_is_the_secret_plus_ampersand() -> None:
    expected = base64.b64encode(hmac.new(b"abc&", b"text", hashlib.sha1).digest()).decode()
    assert signing.hmac_sha1("abc", "text") == expected
    assert signing.hmac_sha256_hex("abc", "text") == hmac.new(b"abc", b"text", hashlib.sha256).hexdigest()
