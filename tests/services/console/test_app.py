"""The console's HTTP shell in this process, against a fake gateway (a real aiohttp server that
answers signed calls and remembers what it was asked): the sign-in guard, what a write must be,
the Host check, server-side paging, a denial explained, the feed ending with its session."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from services.console import app as console_app
from services.console import core
from services.runtime.settings import Settings

ROOT_ID, ROOT_SECRET = "LTAIconsoletest", "the-root-secret"
PROBES = ("ListUsers", "GetCallerIdentity", "DescribeInstances")  # the health panel's, every 2 s


class FakeGateway:
    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.asked.append(query)
        assert query["AccessKeyId"] == ROOT_ID and query["Signature"] and query["SignatureMethod"] == "HMAC-SHA1"
        action = query["Action"]
        if action == "DescribeInstances":
            number, size = int(query.get("PageNumber", "1")), int(query["PageSize"])
            listed = [{"InstanceId": f"i-{n}", "Status": "Running"} for n in range((number - 1) * size, min(10_000, number * size))]
            return web.json_response({"RequestId": "R-1", "Instances": {"Instance": listed}, "TotalCount": 10_000,
                                      "PageNumber": number, "PageSize": size})
        if action == "DescribeInstanceRamRole":
            return web.json_response({"RequestId": "R-2", "InstanceRamRoleSets": {"InstanceRamRoleSet": [
                {"InstanceId": json.loads(query["InstanceIds"])[0], "RamRoleName": "R"}]}})
        if action == "DescribeInstanceMetadataEndpoints":
            ids = json.loads(query["InstanceIds"])
            return web.json_response({"RequestId": "R-3", "Endpoints": [{"InstanceId": i, "HostId": "host-1", "Url": ""} for i in ids]})
        if action == "AttachPolicyToRole":
            return web.json_response({"RequestId": "R-4", "Code": "NoPermission", "Message": "denied (no statement allowed it)",
                                      "AccessDeniedDetail": {"AuthAction": "ram:AttachPolicyToRole", "AuthPrincipalType": "SubUser",
                                                             "AuthPrincipalDisplayName": "x", "NoPermissionType": "ImplicitDeny",
                                                             "EncodedDiagnosticMessage": "no statement allowed ram:AttachPolicyToRole"}},
                                     status=403)
        return web.json_response({"RequestId": "R-0"})


@pytest.fixture
async def console() -> AsyncIterator[tuple[str, FakeGateway]]:
    fake = FakeGateway()
    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("POST", "/", fake.handle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = Settings(gateway_url=f"http://127.0.0.1:{port}", root_access_key_id=ROOT_ID, root_access_key_secret=ROOT_SECRET,
                        http_port=0, time_scale=60)
    async with console_app.running(settings, None) as (running, console_port):
        running.keepalive = 0.2
        yield f"http://127.0.0.1:{console_port}", fake
    await runner.cleanup()


async def _login(session: aiohttp.ClientSession, url: str, secret: str = ROOT_SECRET) -> int:
    async with session.post(f"{url}/api/login", json={"AccessKeyId": ROOT_ID, "AccessKeySecret": secret}) as answer:
        return answer.status


async def test_everything_behind_the_sign_in_and_writes_are_json(console) -> None:  # noqa: ANN001
    url, fake = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # cookies for an IP
        for path in ("/api/instances", "/api/health", "/api/feed", "/api/roles", "/api/faults"):
            async with session.get(url + path) as answer:
                assert answer.status == 401, path
        async with session.post(f"{url}/api/login", data="AccessKeyId=x", headers={"Content-Type": "application/x-www-form-urlencoded"}) as answer:
            assert answer.status == 415  # what a cross-site form could send
        assert await _login(session, url, "wrong") == 403
        async with session.get(url + "/api/instances") as answer:
            assert answer.status == 401
        assert await _login(session, url) == 200
        async with session.get(url + "/api/whoami") as answer:
            assert answer.status == 200
        async with session.get(url + "/", headers={"Host": "rebound.example"}) as answer:
            assert answer.status == 421
        async with session.get(url + "/") as answer:
            assert answer.status == 200 and "ramsim console" in await answer.text()
    assert not [q for q in fake.asked if q["Action"] not in PROBES]  # none of that reached the gateway (only the health probes)


async def test_instances_are_paged_by_the_gateway_at_ten_thousand(console) -> None:  # noqa: ANN001
    url, fake = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # cookies for an IP
        await _login(session, url)
        async with session.get(url + "/api/instances?page=500&size=20") as answer:
            page = await answer.json()
        async with session.get(url + "/api/instances?page=2&size=5000") as answer:
            clamped = await answer.json()
    assert page["TotalCount"] == 10_000 and page["Pages"] == 500 and page["Instances"][0]["InstanceId"] == "i-9980"
    assert page["Instances"][0]["HostId"] == "host-1"
    described = [q for q in fake.asked if q["Action"] == "DescribeInstances" and "PageNumber" in q]  # not the probes
    assert [(q["PageNumber"], q["PageSize"]) for q in described] == [("500", "20"), ("2", "100")]  # only the page, at most 100
    assert len(clamped["Instances"]) == 100
    endpoints = [json.loads(q["InstanceIds"]) for q in fake.asked if q["Action"] == "DescribeInstanceMetadataEndpoints"]
    assert endpoints[0] == [f"i-{n}" for n in range(9980, 10000)]  # the page's own, never all 10,000


async def test_a_denied_call_comes_back_with_rams_decision(console) -> None:  # noqa: ANN001
    url, _ = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # cookies for an IP
        await _login(session, url)
        async with session.post(url + "/api/roles/R/policies", json={"PolicyName": "P", "PolicyType": "System"}) as answer:
            assert answer.status == 403
            shown: dict[str, Any] = await answer.json()
    assert shown["Code"] == "NoPermission" and shown["Denied"]["Kind"] == "ImplicitDeny"
    assert shown["Denied"]["DecidedBy"].startswith("none: no statement allows it (ImplicitDeny")


async def test_the_feed_streams_and_ends_with_its_session(console) -> None:  # noqa: ANN001
    url, _ = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # cookies for an IP
        await _login(session, url)
        async with session.get(url + "/api/feed") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            async with session.post(url + "/api/logout", json={}) as answer:
                assert answer.status == 200
            async with session.get(url + "/api/instances") as answer:
                assert answer.status == 401  # signed out
            ended = await asyncio.wait_for(stream.content.read(), 5)  # the keep-alive check sees the session gone
            assert isinstance(ended, bytes)
    assert core.COOKIE == "ramsim_console"
