"""alibabacloud-credentials' ECS RAM role provider against the metadata agents: role discovery,
hardened mode (tokens), IMDSv1 disabled, HttpTokens=required, and refresh across a rotation."""

from __future__ import annotations

import asyncio
import json
from typing import Iterator

import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_credentials.models import Config as CredConfig
from alibabacloud_credentials.provider.ecs_ram_role import EcsRamRoleCredentialsProvider
from alibabacloud_credentials.utils import auth_util

from services.cli import api, cluster
from services.cli.instances import instances, read_metadata
from tests.compat.conftest import ECS_TRUST
from tests.e2e.conftest import ramsim_up, wait_until

CREDENTIALS = "/latest/meta-data/ram/security-credentials/"


def launch(target: cluster.ClusterFile, role: str, **params: str) -> tuple[str, str]:
    root = api.Credential(target.access_key_id, target.access_key_secret)
    api.call(target.gateway_url, "ram", "CreateRole", {"RoleName": role, "AssumeRolePolicyDocument": ECS_TRUST}, root)
    answer = api.call(target.gateway_url, "ecs", "RunInstances", {"RegionId": target.region_id, "RamRoleName": role, **params}, root)
    instance_id = answer["InstanceIdSets"]["InstanceIdSet"][0]
    url = wait_until(lambda: next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == instance_id), ""),
                     what="metadata url")
    wait_until(lambda: read_metadata(url, CREDENTIALS)[0] in (200, 401), what="role served")
    return instance_id, url


def test_role_discovery_and_hardened_mode(target, imds_allowed) -> None:  # noqa: ANN001
    _, url = launch(target, "Discovered", HttpTokens="required")  # token-less reads are refused: hardened mode or nothing
    assert read_metadata(url, CREDENTIALS)[0] == 401
    credential = CredClient(CredConfig(type="ecs_ram_role", proxy=url))  # no role name: discovered from metadata
    got = credential.get_credential()
    assert got.access_key_id.startswith("STS.") and got.provider_name == "ecs_ram_role"
    doc = json.loads(read_metadata_with_token(url, CREDENTIALS + "Discovered"))
    assert (doc["AccessKeyId"], doc["SecurityToken"]) == (got.access_key_id, got.security_token)


def test_imdsv1_disabled_uses_tokens_only(target, imds_allowed) -> None:  # noqa: ANN001
    _, url = launch(target, "TokensOnly")
    provider = EcsRamRoleCredentialsProvider(role_name="TokensOnly", disable_imds_v1=True, async_update_enabled=False,
                                             http_options=_http(url))
    assert provider.get_credentials().get_access_key_id().startswith("STS.")


def test_http_tokens_required_refuses_token_less_clients(target, imds_allowed) -> None:  # noqa: ANN001
    _, url = launch(target, "Hardened", HttpTokens="required")
    assert read_metadata(url, CREDENTIALS)[0] == 401  # IMDSv1 refused
    provider = EcsRamRoleCredentialsProvider(role_name="Hardened", async_update_enabled=False, http_options=_http(url))
    assert provider.get_credentials().get_access_key_id().startswith("STS.")  # the SDK fetched a token first


def test_a_disabled_ecs_provider_never_builds(target, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(auth_util, "environment_ecs_metadata_disabled", "true")
    with pytest.raises(ValueError, match="IMDS credentials is disabled"):
        EcsRamRoleCredentialsProvider(role_name="Any", async_update_enabled=False)


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.ClusterFile]:
    # 900 s credentials (the STS minimum) refreshed 897 s early: ECS rotates every 3 s of real
    # time, and the SDK treats a 900 s credential as stale at once, so it re-reads every call.
    with ramsim_up(tmp_path_factory.mktemp("rotating"), "--instances", "0", "--credential-lifetime", "900",
                   "--refresh-before", "897") as (_, path):
        yield cluster.load(path)


def test_refresh_across_a_rotation(rotating, imds_allowed) -> None:  # noqa: ANN001
    instance_id, url = launch(rotating, "Rotating")
    provider = EcsRamRoleCredentialsProvider(role_name="Rotating", async_update_enabled=False, http_options=_http(url))
    first = provider.get_credentials()
    second = wait_until(lambda: (c := provider.get_credentials()).get_access_key_id() != first.get_access_key_id() and c,
                        timeout=20, what="a rotated credential")
    assert second.get_expiration() > first.get_expiration()
    for c in (first, second):  # both valid during the overlap
        who = api.call(rotating.gateway_url, "sts", "GetCallerIdentity", {},
                       api.Credential(c.get_access_key_id(), c.get_access_key_secret(), c.get_security_token()))
        assert who["Arn"].endswith(f"assumed-role/Rotating/{instance_id}")
    doc = json.loads(read_metadata(url, CREDENTIALS + "Rotating")[1])
    assert doc["Code"] == "Success"


def read_metadata_with_token(url: str, path: str) -> str:
    """A hardened-mode read, as the SDK does it: PUT a token, GET with it."""
    import urllib.request
    put = urllib.request.Request(url + "/latest/api/token", method="PUT", data=b"",
                                 headers={"X-aliyun-ecs-metadata-token-ttl-seconds": "60"})
    with api.opener.open(put, timeout=5) as answer:
        token = answer.read().decode()
    get = urllib.request.Request(url + path, headers={"X-aliyun-ecs-metadata-token": token})
    with api.opener.open(get, timeout=5) as answer:
        return answer.read().decode()


def _http(proxy: str):  # noqa: ANN202
    from alibabacloud_credentials.http import HttpOptions
    return HttpOptions(proxy=proxy)


def test_credential_exception_on_a_missing_role(target, imds_allowed) -> None:  # noqa: ANN001
    _, url = launch(target, "Present")
    provider = EcsRamRoleCredentialsProvider(role_name="Absent", async_update_enabled=False, http_options=_http(url))
    with pytest.raises(CredentialException, match="HttpCode=404"):
        provider.get_credentials()


async def test_an_expired_credential_makes_the_provider_raise_not_sign(imds_allowed) -> None:  # noqa: ANN001
    """A view whose newest credential expired (STS away past its life) answers 503 with a Code
    that is not Success: the official provider raises a clear error instead of using it, and
    takes the fresh credential as soon as one arrives."""
    import time

    from protocol.messages import ecs as m
    from tests.services.metadata.test_core import CREDENTIALS, IID, ROLE, view
    from tests.services.metadata.test_http import Agent

    agent = Agent()  # a real listener on loopback, on wall time: CREDENTIALS expired in 2023
    try:
        agent.push(view(role=ROLE, credentials=CREDENTIALS))
        await agent.listeners.reconcile()
        url = agent.listeners.urls[IID]
        provider = EcsRamRoleCredentialsProvider(role_name=ROLE, async_update_enabled=False, http_options=_http(url))
        with pytest.raises(CredentialException, match="HttpCode=503"):
            await asyncio.to_thread(provider.get_credentials)
        assert agent.core.refused >= 1
        fresh = m.InstanceCredentials(access_key_id="STS.fresh", access_key_secret="s", security_token="t",
                                      expiration=time.time() + 3600, last_updated=time.time())
        agent.push(view(generation=3, role=ROLE, credentials=fresh))
        got = await asyncio.to_thread(provider.get_credentials)
        assert got.get_access_key_id() == "STS.fresh"
    finally:
        await agent.listeners.close()
