"""Fuzz the HTTP surfaces of a running cluster (real processes, real sockets): the gateway and a
metadata listener. Whatever arrives, the answer is a well-formed client error or success,
never a 5xx and never a crash, and the services keep serving.

Bounded: a fixed number of examples per surface (hypothesis), all to 127.0.0.1. CI runs 150 per
surface; a longer run is the same tests with more examples:

    RAMSIM_FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz -q
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from services.cli import api, cluster
from services.cli.instances import read_metadata
from services.ram.policy import ECS_TRUST_POLICY
from tests.e2e.conftest import metadata_url, ramsim_up, wait_until

EXAMPLES = int(os.environ.get("RAMSIM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=40)
names = st.sampled_from(["Action", "Version", "AccessKeyId", "Signature", "SignatureMethod", "SignatureNonce", "Timestamp",
                         "SignatureVersion", "RoleName", "InstanceIds", "RegionId", "Amount", "Caller", "RequestContext",
                         "SecurityToken", "Format", "PolicyDocument"])
values = st.one_of(text, st.sampled_from(["2015-05-01", "2015-04-01", "2014-05-26", "CreateRole", "RunInstances",
                                          "HMAC-SHA1", "1.0", "2030-01-01T00:00:00Z", '["i-1"]', "-1", "1e309", "\x00"]))
headers = st.dictionaries(st.sampled_from(["Authorization", "x-acs-action", "x-acs-version", "x-acs-date",
                                           "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-security-token",
                                           "Content-Type", "X-Forwarded-For", "x-aliyun-ecs-metadata-token",
                                           "X-aliyun-ecs-metadata-token-ttl-seconds"]),
                          st.one_of(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-=;,/ :", max_size=60),
                                    st.just("ACS3-HMAC-SHA256 Credential=LTAIx,SignedHeaders=host,Signature=00")), max_size=5)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cluster.ClusterFile, str]]:
    with ramsim_up(tmp_path_factory.mktemp("fuzz"), "--instances", "0") as (_, path):
        target = cluster.load(path)
        root = api.Credential(target.access_key_id, target.access_key_secret)
        api.call(target.gateway_url, "ram", "CreateRole", {"RoleName": "Fuzz", "AssumeRolePolicyDocument": ECS_TRUST_POLICY}, root)
        answer = api.call(target.gateway_url, "ecs", "RunInstances", {"RegionId": target.region_id, "RamRoleName": "Fuzz"}, root)
        instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]

        class Running:  # metadata_url wants something with .file
            file = target

        url = metadata_url(Running, instance_id)  # type: ignore[arg-type]
        wait_until(lambda: read_metadata(url, "/latest/meta-data/ram/security-credentials/Fuzz")[0] == 200, what="credential")
        yield target, url


def send(url: str, method: str, hdrs: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, data=body if method in ("POST", "PUT") else None, method=method)
    for k, v in hdrs.items():
        request.add_header(k, v)
    try:
        with api.opener.open(request, timeout=10) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), params=st.lists(st.tuples(names, values), max_size=12),
       hdrs=headers, body=st.binary(max_size=200))
def test_gateway_answers_every_request_with_an_alibaba_shaped_client_error(target, method, params, hdrs, body) -> None:  # noqa: ANN001
    gateway, _ = target
    status, raw, kind = send(f"{gateway.gateway_url}/?{urllib.parse.urlencode(params)}", method, hdrs, body)
    assert status < 500, (status, raw[:200])
    if status >= 400:  # every method: another one is an Alibaba error too (UnsupportedHTTPMethod)
        shaped = json.loads(raw)
        assert {"RequestId", "HostId", "Code", "Message"} <= shaped.keys()
        assert gateway.access_key_secret not in raw.decode(errors="replace")


@FUZZ
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE"]),
       path=st.one_of(st.sampled_from(["/latest/meta-data/ram/security-credentials/", "/latest/api/token",
                                       "/latest/meta-data/Ram/security-credentials/Fuzz", "/latest/dynamic/instance-identity/document",
                                       "/latest/meta-data/network/interfaces/macs/", "/", "/latest/", "//", "/latest/user-data"]),
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_/.%0123456789", max_size=60).map(lambda p: "/" + p)),
       hdrs=headers)
def test_metadata_listener_never_fails_on_any_request(target, method, path, hdrs) -> None:  # noqa: ANN001
    _, url = target
    status, _, _ = send(url + path, method, hdrs, b"")
    assert status in (200, 400, 401, 403, 404, 405), (status, method, path)


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=300))
def test_raw_bytes_on_the_sockets_never_break_either_server(target, raw) -> None:  # noqa: ANN001
    gateway, url = target
    for where in (gateway.gateway_url, url):
        host, port = where.split("//", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(raw + b"\r\n\r\n")
            s.settimeout(5)
            try:
                answer = s.recv(64)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 5"), (where, raw[:40], answer)


def test_both_servers_still_serve_after_the_fuzzing(target) -> None:  # noqa: ANN001
    gateway, url = target
    root = api.Credential(gateway.access_key_id, gateway.access_key_secret)
    assert api.call(gateway.gateway_url, "ram", "GetRole", {"RoleName": "Fuzz"}, root)["Role"]["RoleName"] == "Fuzz"
    assert read_metadata(url, "/latest/meta-data/ram/security-credentials/")[1] == "Fuzz"
