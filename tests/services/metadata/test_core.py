"""Tests for the pure metadata agent core (:class:`services.metadata.core.MetadataCore`).

Covers registration with ECS, applying pushed instance views (newest generation wins), and
``read()``: Alibaba's item paths and formats, the credential document (checked against the
seed's sample), and hardened mode (metadata tokens). Time is explicit and advanced by hand.

``http://100.100.100.200/...`` appears here only as a request path string handed to the pure
core, as a forward proxy receives it; nothing dials it (tests/conftest.py refuses such sockets).
"""

from __future__ import annotations

import json
import re

import pytest

from protocol import topics
from protocol.errors import error, timeout
from protocol.messages import ecs as m
from protocol.times import iso
from services.metadata.core import MAX_TOKEN_TTL, TOKEN_HEADER, TOKEN_TTL_HEADER, Answer, MetadataCore
from services.runtime.effects import Log, Request
from tests.helpers import ACCOUNT, T0, envelope

HOST = "h1"
IID = "i-bp13znx0m0me8cquu8a1"
OTHER = "i-bp1otherinstance0001"
ROLE = "MyApplicationRole"
TICK = 1.0
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# Step 8 of the seed (ram-role-for-ecs.md): the sample credential document.
SEED_SAMPLE = {
    "AccessKeyId": "STS.J8XXXXXXXXXX4",
    "AccessKeySecret": "9PjfXXXXXXXXXBf2XAW",
    "Expiration": "2017-06-09T09:17:19Z",
    "SecurityToken": "CAIXXXXXXXXXXXwmBkleCTkyI+",
    "LastUpdated": "2017-06-09T03:17:18Z",
    "Code": "Success",
}

CREDENTIALS = m.InstanceCredentials(access_key_id="STS.NUgYrLnoC37mZZCNnAbez2Uv", access_key_secret="8Ah1c9Vb6Qy2mKqkLrVX3zPpBd0WuE",
                                    security_token="CAISxwJ1q6Ft5B2yfSjIr5bzIvHkla5", expiration=T0 + 3600, last_updated=T0)


def view(instance_id: str = IID, *, generation: int = 2, host_id: str = HOST, role: str = "",
         credentials: m.InstanceCredentials | None = None, http_tokens: str = "optional",
         http_endpoint: str = "enabled", user_data: str = "", deleted: bool = False, endpoint_url: str = "") -> m.InstanceView:
    network = m.NetworkInterface(mac="00:16:3e:0f:a1:b2", private_ip="172.16.3.17", network_interface_id="eni-bp1abc",
                                 vpc_id="vpc-bp1vpc", vswitch_id="vsw-bp1vsw", vpc_cidr_block="172.16.0.0/12",
                                 vswitch_cidr_block="172.16.0.0/16", gateway="172.16.255.253", netmask="255.255.0.0")
    return m.InstanceView(instance_id=instance_id, host_id=host_id, generation=generation, account_id=ACCOUNT,
                          region_id="cn-hangzhou", zone_id="cn-hangzhou-i", host_name="iZ" + instance_id[2:] + "Z",
                          instance_type="ecs.g7.large", image_id="aliyun_3_x64_20G_alibase_20240819.vhd",
                          serial_number="4acd2b47-b328-4762-852f-998ee9dc4d11", network=network,
                          http_tokens=http_tokens, http_endpoint=http_endpoint, user_data=user_data,
                          ram_role_name=role, credentials=credentials, deleted=deleted, endpoint_url=endpoint_url)


def push(core: MetadataCore, v: m.InstanceView, now: float = T0) -> list:
    return core.handle(envelope(m.InstanceChanged(view=v), src="ecs", dest="*"), now)


def serving(*views: m.InstanceView) -> MetadataCore:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    for v in views:
        push(core, v)
    return core


def get(core: MetadataCore, path: str, *, instance_id: str = IID, now: float = T0, **headers: str) -> Answer:
    return core.read(instance_id, "GET", path, headers, now)


def put_token(core: MetadataCore, ttl: str | None = "21600", *, instance_id: str = IID, now: float = T0,
              extra: dict[str, str] | None = None) -> Answer:
    headers = {} if ttl is None else {TOKEN_TTL_HEADER: ttl}
    return core.read(instance_id, "PUT", "/latest/api/token", {**headers, **(extra or {})}, now)


# -- registering with ECS -----------------------------------------------------------------------
def test_first_timer_registers_once_while_in_flight() -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    assert core.node_id == "metadata-h1"
    assert core.subscriptions() == [topics.host_instances(HOST)]
    assert core.next_deadline() is None

    [ask] = core.on_timer(T0)
    assert isinstance(ask, Request)
    assert ask.dest == "ecs" and ask.body == m.RegisterHost(host_id=HOST)
    assert core.on_timer(T0 + TICK) == []  # in flight: not asked twice


@pytest.mark.parametrize("failure", [timeout("ecs"), error("InternalError", "boom", 500)])
def test_a_failed_registration_asks_again(failure) -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    [ask] = core.on_timer(T0)
    effects = core.on_reply(ask.context, failure, T0 + 5)

    [again] = [e for e in effects if isinstance(e, Request)]
    assert again.dest == "ecs" and again.body == m.RegisterHost(host_id=HOST)
    assert [e.event for e in effects if isinstance(e, Log)] == ["register_failed"]
    assert core.registered == 0
    assert core.on_timer(T0 + 6) == []  # the new attempt is in flight


def test_registration_applies_every_view_and_stops_asking() -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    [ask] = core.on_timer(T0)
    core.on_reply(ask.context, m.RegisterHostOk(instances=[view(IID), view(OTHER, role=ROLE, credentials=CREDENTIALS)]), T0)

    assert core.registered == 1
    assert core.serving() == {IID, OTHER}
    assert get(core, "/latest/meta-data/ram/security-credentials/", instance_id=OTHER).body == ROLE
    assert core.on_timer(T0 + 100) == []


def test_a_reconnect_resyncs_from_ecs_and_keeps_serving_meanwhile() -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    [ask] = core.on_timer(T0)
    core.on_reply(ask.context, m.RegisterHostOk(instances=[view(generation=2, role=ROLE, credentials=CREDENTIALS)]), T0)

    [again] = [e for e in core.on_reconnect(T0 + 1) if isinstance(e, Request)]
    assert again.body == m.RegisterHost(host_id=HOST)
    assert core.on_reconnect(T0 + 2) == []  # one resync in flight at a time
    assert get(core, "/latest/meta-data/ram/security-credentials/").body == ROLE  # still serving
    core.on_reply(again.context, m.RegisterHostOk(instances=[view(generation=4)]), T0 + 3)  # detached while away
    assert core.registered == 2
    assert get(core, "/latest/meta-data/ram/security-credentials/").status == 404


def test_registration_does_not_roll_back_a_newer_pushed_view() -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
    [ask] = core.on_timer(T0)
    push(core, view(generation=5, role=ROLE, credentials=CREDENTIALS))
    core.on_reply(ask.context, m.RegisterHostOk(instances=[view(generation=3)]), T0)
    assert core.views[IID].generation == 5
    assert core.views[IID].ram_role_name == ROLE


# -- pushed views -------------------------------------------------------------------------------
def test_newer_generation_replaces_the_view_and_older_or_equal_is_ignored() -> None:
    core = serving(view(generation=3))
    push(core, view(generation=4, role=ROLE, credentials=CREDENTIALS))
    assert core.views[IID].generation == 4

    for stale in (view(generation=4), view(generation=2)):
        effects = push(core, stale)
        assert [e.event for e in effects if isinstance(e, Log)] == ["instance_view_stale"]
    assert core.views[IID].ram_role_name == ROLE
    assert get(core, "/latest/meta-data/ram/security-credentials/").body == ROLE


def test_a_view_for_another_host_is_ignored() -> None:
    core = serving()
    effects = push(core, view(host_id="h2"))
    assert core.views == {}
    assert [e.event for e in effects if isinstance(e, Log)] == ["view_for_other_host"]
    assert get(core, "/latest/meta-data/instance-id").status == 404


def test_a_view_from_anyone_but_ecs_is_ignored() -> None:
    core = serving()
    for src, dest in (("operator", "metadata-host-1"), ("gateway", "*"), ("oss", "metadata-host-1")):
        # a direct message's src is vouched for by its topic: another identity may write to the agent's inbox
        effects = core.handle(envelope(m.InstanceChanged(view=view(credentials=CREDENTIALS, role=ROLE)), src=src, dest=dest), T0)
        assert [e.event for e in effects if isinstance(e, Log)] == ["view_not_from_ecs"]
    assert core.views == {}
    assert get(core, "/latest/meta-data/ram/security-credentials/").status == 404


def test_serving_excludes_deleted_instances() -> None:
    core = serving(view(IID), view(OTHER))
    assert core.serving() == {IID, OTHER}
    push(core, view(OTHER, generation=3, deleted=True))
    assert core.serving() == {IID}
    assert get(core, "/latest/meta-data/instance-id", instance_id=OTHER).status == 404


# -- items --------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, value", [
    ("instance-id", IID),
    ("region-id", "cn-hangzhou"),
    ("zone-id", "cn-hangzhou-i"),
    ("hostname", "iZ" + IID[2:] + "Z"),
    ("private-ipv4", "172.16.3.17"),
    ("mac", "00:16:3e:0f:a1:b2"),
    ("instance/instance-type", "ecs.g7.large"),
    ("image-id", "aliyun_3_x64_20G_alibase_20240819.vhd"),
    ("owner-account-id", ACCOUNT),
    ("vpc-id", "vpc-bp1vpc"),
    ("network/interfaces/macs/00:16:3e:0f:a1:b2/private-ipv4s", '["172.16.3.17"]'),
])
def test_scalar_items_are_bare_values(item: str, value: str) -> None:
    answer = get(serving(view()), f"/latest/meta-data/{item}")
    assert answer == Answer(200, value, "text/plain")


def test_absolute_form_path_is_served() -> None:
    answer = get(serving(view()), "http://100.100.100.200/latest/meta-data/instance-id")
    assert (answer.status, answer.body) == (200, IID)


@pytest.mark.parametrize("target", ["http://100.100.100.200", "http://100.100.100.200/"])
def test_absolute_form_without_an_item_is_404_not_a_crash(target: str) -> None:
    assert get(serving(view()), target).status == 404


def test_meta_data_listing_names_items_and_directories() -> None:
    lines = get(serving(view()), "/latest/meta-data/").body.split("\n")
    assert {"instance-id", "region-id", "hostname", "mac", "image-id", "instance/", "network/"} <= set(lines)
    assert lines == sorted(lines) and len(lines) == len(set(lines))
    assert "ram/" not in lines  # no role attached


def test_listing_shows_ram_when_a_role_serves() -> None:
    lines = get(serving(view(role=ROLE, credentials=CREDENTIALS)), "/latest/meta-data/").body.split("\n")
    assert "ram/" in lines


def test_identity_document_is_compact_json() -> None:
    answer = get(serving(view()), "/latest/dynamic/instance-identity/document")
    assert answer.status == 200 and answer.content_type == "application/json"
    document = json.loads(answer.body)
    assert (document["instance-id"], document["owner-account-id"], document["region-id"]) == (IID, ACCOUNT, "cn-hangzhou")
    assert " " not in answer.body


def test_user_data_is_decoded_from_base64() -> None:
    answer = get(serving(view(user_data="IyEvYmluL3NoCmVjaG8gaGk=")), "/latest/user-data")
    assert (answer.status, answer.body) == (200, "#!/bin/sh\necho hi")


@pytest.mark.parametrize("path", ["/latest/meta-data/no-such-item", "/latest/meta-data/instance-id/x", "/metadata", "/"])
def test_unknown_paths_are_404(path: str) -> None:
    assert get(serving(view()), path).status == 404


def test_unknown_instance_is_404() -> None:
    assert get(serving(view()), "/latest/meta-data/instance-id", instance_id="i-unknown").status == 404


def test_disabled_endpoint_is_403() -> None:
    assert get(serving(view(http_endpoint="disabled")), "/latest/meta-data/instance-id").status == 403


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_only_get_and_head_read_items(method: str) -> None:
    assert serving(view()).read(IID, method, "/latest/meta-data/instance-id", {}, T0).status == 405


# -- the role and its credential ----------------------------------------------------------------
@pytest.mark.parametrize("segment", ["ram", "Ram", "RAM"])
def test_role_listing_is_the_bare_role_name(segment: str) -> None:
    answer = get(serving(view(role=ROLE, credentials=CREDENTIALS)), f"/latest/meta-data/{segment}/security-credentials/")
    assert (answer.status, answer.body) == (200, ROLE)  # no trailing newline


def test_role_listing_without_a_role_is_404() -> None:
    assert get(serving(view()), "/latest/meta-data/ram/security-credentials/").status == 404


def test_role_listing_before_the_first_credential_is_404() -> None:
    # ECS never sends this combination, but the agent must not serve a role it has no credential for
    assert get(serving(view(role=ROLE, credentials=None)), "/latest/meta-data/ram/security-credentials/").status == 404


def test_credential_document_matches_the_seed_sample() -> None:
    answer = get(serving(view(role=ROLE, credentials=CREDENTIALS)), f"/latest/meta-data/ram/security-credentials/{ROLE}")
    assert answer.status == 200 and answer.content_type == "application/json"
    document = json.loads(answer.body)

    assert set(document) == set(SEED_SAMPLE)
    assert document["Code"] == SEED_SAMPLE["Code"] == "Success"
    for key in ("Expiration", "LastUpdated"):
        assert TIMESTAMP.match(document[key]) and TIMESTAMP.match(SEED_SAMPLE[key])
    assert document["AccessKeyId"].startswith("STS.") and SEED_SAMPLE["AccessKeyId"].startswith("STS.")
    assert document == {
        "AccessKeyId": CREDENTIALS.access_key_id, "AccessKeySecret": CREDENTIALS.access_key_secret,
        "Expiration": iso(T0 + 3600), "SecurityToken": CREDENTIALS.security_token,
        "LastUpdated": iso(T0), "Code": "Success",
    }
    assert document["Expiration"] == "2023-11-14T23:13:20Z" and document["LastUpdated"] == "2023-11-14T22:13:20Z"


def test_credential_follows_the_newest_view() -> None:
    core = serving(view(role=ROLE, credentials=CREDENTIALS))
    fresh = m.InstanceCredentials(access_key_id="STS.second", access_key_secret="s2", security_token="t2",
                                  expiration=T0 + 5400, last_updated=T0 + 1800)
    push(core, view(generation=3, role=ROLE, credentials=fresh))
    document = json.loads(get(core, f"/latest/meta-data/Ram/security-credentials/{ROLE}").body)
    assert (document["AccessKeyId"], document["LastUpdated"]) == ("STS.second", iso(T0 + 1800))

    push(core, view(generation=4))  # detached
    assert get(core, "/latest/meta-data/ram/security-credentials/").status == 404
    assert get(core, f"/latest/meta-data/ram/security-credentials/{ROLE}").status == 404


def test_an_expired_credential_is_never_served_until_a_fresh_one_arrives() -> None:
    core = serving(view(role=ROLE, credentials=CREDENTIALS))  # expires at T0 + 3600
    path = f"/latest/meta-data/ram/security-credentials/{ROLE}"
    assert get(core, path, now=T0 + 3599).status == 200 and core.refused == 0

    first, again = get(core, path, now=T0 + 3600), get(core, "/latest/meta-data/Ram/security-credentials/" + ROLE, now=T0 + 9999)
    for answer in (first, again):
        assert (answer.status, answer.content_type) == (503, "application/json")
        document = json.loads(answer.body)
        assert document["Code"] == "CredentialUnavailable" != "Success" and document["Expiration"] == iso(T0 + 3600)
        assert CREDENTIALS.access_key_secret not in answer.body and CREDENTIALS.security_token not in answer.body
    assert core.refused == 2
    assert first.log is not None and first.log.event == "credential_expired_unserved" and again.log is None  # once per credential
    assert first.log.fields["access_key_id"] == CREDENTIALS.access_key_id and "access_key_secret" not in first.log.fields
    assert get(core, "/latest/meta-data/ram/security-credentials/", now=T0 + 9999).body == ROLE  # the role is still attached

    fresh = m.InstanceCredentials(access_key_id="STS.fresh", access_key_secret="s2", security_token="t2",
                                  expiration=T0 + 20000, last_updated=T0 + 10000)
    effects = push(core, view(generation=3, role=ROLE, credentials=fresh), now=T0 + 10000)
    [back] = [e for e in effects if e.event == "credential_available_again"]
    assert back.fields == {"instance_id": IID, "role": ROLE, "expired": CREDENTIALS.access_key_id, "refused": 2,
                           "access_key_id": "STS.fresh"}
    answer = get(core, path, now=T0 + 10000)
    assert answer.status == 200 and json.loads(answer.body)["AccessKeyId"] == "STS.fresh" and core.refused == 2


def test_a_view_whose_credential_already_expired_is_refused_too() -> None:
    stale = m.InstanceCredentials(access_key_id="STS.stale", access_key_secret="s", security_token="t",
                                  expiration=T0 - 1, last_updated=T0 - 3601)
    core = serving(view(role=ROLE, credentials=stale))
    assert get(core, f"/latest/meta-data/ram/security-credentials/{ROLE}").status == 503
    # a view that is no fresher ends nothing: still refused, no "available again"
    assert not [e for e in push(core, view(generation=3, role=ROLE, credentials=stale)) if e.event == "credential_available_again"]
    assert get(core, f"/latest/meta-data/ram/security-credentials/{ROLE}").status == 503 and core.refused == 2


@pytest.mark.parametrize("name", ["OtherRole", "MyApplicationRol", "myapplicationrole", f"{ROLE}/extra"])
def test_wrong_role_name_is_404(name: str) -> None:
    core = serving(view(role=ROLE, credentials=CREDENTIALS))
    assert get(core, f"/latest/meta-data/ram/security-credentials/{name}").status == 404


# -- hardened mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", ["1", "60", str(MAX_TOKEN_TTL)])
def test_token_is_issued_for_a_valid_ttl(ttl: str) -> None:
    core = serving(view())
    answer = put_token(core, ttl)
    assert answer.status == 200
    assert answer.body and not answer.body.endswith("\n") and answer.body.strip() == answer.body
    assert get(core, "/latest/meta-data/instance-id", **{TOKEN_HEADER: answer.body}) == Answer(200, IID)


@pytest.mark.parametrize("ttl", ["0", str(MAX_TOKEN_TTL + 1), "-5", "abc", "", None])
def test_token_with_a_bad_or_missing_ttl_is_400(ttl: str | None) -> None:
    assert put_token(serving(view()), ttl).status == 400


def test_token_request_with_x_forwarded_for_is_403() -> None:
    answer = put_token(serving(view()), "60", extra={"x-forwarded-for": "10.0.0.1"})
    assert answer.status == 403


def test_token_path_only_takes_put() -> None:
    assert get(serving(view()), "/latest/api/token", **{TOKEN_TTL_HEADER: "60"}).status == 405


def test_token_expires_after_its_ttl() -> None:
    core = serving(view())
    token = put_token(core, "60", now=T0).body
    path = "/latest/meta-data/instance-id"
    assert get(core, path, now=T0 + 60 - TICK, **{TOKEN_HEADER: token}).status == 200
    assert get(core, path, now=T0 + 60, **{TOKEN_HEADER: token}).status == 401
    assert get(core, path, now=T0 + 61, **{TOKEN_HEADER: token}).status == 401


@pytest.mark.parametrize("token", ["garbage", "", "aS1ifDE3MDAwMDAwMDB8eA==", "%%%"])
def test_a_garbage_token_is_401(token: str) -> None:
    assert get(serving(view()), "/latest/meta-data/instance-id", **{TOKEN_HEADER: token}).status == 401


def test_a_token_minted_for_another_instance_is_401() -> None:
    core = serving(view(IID), view(OTHER))
    token = put_token(core, "600", instance_id=OTHER).body
    assert get(core, "/latest/meta-data/instance-id", instance_id=OTHER, **{TOKEN_HEADER: token}).status == 200
    assert get(core, "/latest/meta-data/instance-id", instance_id=IID, **{TOKEN_HEADER: token}).status == 401


def test_a_token_from_another_agent_is_401() -> None:
    other_agent = MetadataCore(host_id=HOST, token_key=b"z" * 32)
    push(other_agent, view())
    token = put_token(other_agent, "600").body
    assert get(serving(view()), "/latest/meta-data/instance-id", **{TOKEN_HEADER: token}).status == 401


def test_http_tokens_required_refuses_token_less_reads() -> None:
    core = serving(view(http_tokens="required", role=ROLE, credentials=CREDENTIALS))
    assert get(core, "/latest/meta-data/instance-id").status == 401
    assert get(core, f"/latest/meta-data/ram/security-credentials/{ROLE}").status == 401
    token = put_token(core, "60").body
    assert get(core, "/latest/meta-data/instance-id", **{TOKEN_HEADER: token}) == Answer(200, IID)
    assert get(core, "/latest/meta-data/ram/security-credentials/", **{TOKEN_HEADER: token}).body == ROLE


def test_put_token_for_an_unknown_instance_is_404() -> None:
    assert put_token(serving(view()), "60", instance_id="i-unknown").status == 404
