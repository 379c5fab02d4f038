"""Tests for the metadata agent's HTTP shell (:class:`services.metadata.http.Listeners`).

Real aiohttp listeners on 127.0.0.1, one per instance the core serves. Nothing here connects to
100.100.100.200: absolute-form requests naming it are sent to the loopback listener, as an SDK
using the listener as its HTTP proxy would.
"""

from __future__ import annotations

import asyncio
import base64
from typing import AsyncIterator, Sequence

import aiohttp
import pytest
from yarl import URL

from protocol.messages import ecs as m
from services.metadata.core import TOKEN_HEADER, TOKEN_TTL_HEADER, MetadataCore
from services.metadata.http import Listeners, SharedListener
from services.runtime.clock import ScaledClock
from tests.helpers import envelope
from tests.services.metadata.test_core import HOST, IID, OTHER, ROLE, CREDENTIALS, view


class Agent:
    """A core, its listeners and a record of every announce call."""

    def __init__(self) -> None:
        self.core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
        self.announced: list[tuple[str, str]] = []
        self.listeners = Listeners(self.core, ScaledClock(1.0), "127.0.0.1", self._announce)

    async def _announce(self, instance_id: str, url: str) -> None:
        self.announced.append((instance_id, url))

    def push(self, v: m.InstanceView) -> None:
        self.core.handle(envelope(m.InstanceChanged(view=v), src="ecs", dest="*"), 0.0)


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    a = Agent()
    yield a
    await a.listeners.close()


async def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers=headers) as response:
            return response.status, await response.text()


async def raw(url: str, request: bytes) -> bytes:
    """Send ``request`` as-is to the listener at ``url`` and read the whole answer."""
    target = URL(url)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_reconcile_opens_a_loopback_listener_and_announces_it(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()

    url = agent.listeners.urls[IID]
    assert URL(url).host == "127.0.0.1" and URL(url).port
    assert agent.announced == [(IID, url)]
    assert await fetch(url + "/latest/meta-data/instance-id") == (200, IID)

    await agent.listeners.reconcile()  # nothing changed: no new listener, no new announce
    assert agent.listeners.urls == {IID: url} and agent.announced == [(IID, url)]


async def test_a_restarted_agent_listens_where_the_view_was_served_before(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()
    url = agent.listeners.urls[IID]
    await agent.listeners.close()

    restarted = Agent()  # ECS hands it the view with the URL it last learnt
    restarted.push(view(endpoint_url=url))
    try:
        await restarted.listeners.reconcile()
        assert restarted.listeners.urls == {IID: url}
        assert await fetch(url + "/latest/meta-data/instance-id") == (200, IID)
    finally:
        await restarted.listeners.close()


async def test_a_previous_port_taken_since_falls_back_to_any_free_port(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()
    taken = agent.listeners.urls[IID]  # still open: the other agent cannot have it
    other = Agent()
    other.push(view(endpoint_url=taken))
    try:
        await other.listeners.reconcile()
        assert other.listeners.urls[IID] != taken and other.announced == [(IID, other.listeners.urls[IID])]
    finally:
        await other.listeners.close()


async def test_each_instance_gets_its_own_listener(agent: Agent) -> None:
    agent.push(view(IID))
    agent.push(view(OTHER, role=ROLE, credentials=CREDENTIALS))
    await agent.listeners.reconcile()

    urls = agent.listeners.urls
    assert set(urls) == {IID, OTHER} and urls[IID] != urls[OTHER]
    assert sorted(agent.announced) == sorted(urls.items())
    assert await fetch(urls[OTHER] + "/latest/meta-data/instance-id") == (200, OTHER)
    assert await fetch(urls[OTHER] + "/latest/meta-data/ram/security-credentials/") == (200, ROLE)
    assert (await fetch(urls[IID] + "/latest/meta-data/ram/security-credentials/"))[0] == 404


async def test_absolute_form_request_for_the_metadata_address_is_answered(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()

    answer = await raw(agent.listeners.urls[IID], b"GET http://100.100.100.200/latest/meta-data/instance-id HTTP/1.1\r\n"
                                                  b"Host: 100.100.100.200\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == IID.encode()


async def test_absolute_form_request_for_another_host_without_a_gateway_is_502(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()

    answer = await raw(agent.listeners.urls[IID], b"GET http://ecs.aliyuncs.com/?Action=DescribeInstances HTTP/1.1\r\n"
                                                  b"Host: ecs.aliyuncs.com\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 ")
    assert IID.encode() not in answer


async def test_hardened_mode_over_http(agent: Agent) -> None:
    agent.push(view(http_tokens="required"))
    await agent.listeners.reconcile()
    url = agent.listeners.urls[IID]

    assert (await fetch(url + "/latest/meta-data/instance-id"))[0] == 401
    status, token = await fetch(url + "/latest/api/token", method="PUT", headers={TOKEN_TTL_HEADER.title(): "60"})
    assert status == 200 and token
    assert await fetch(url + "/latest/meta-data/instance-id", headers={"X-aliyun-ecs-metadata-token": token}) == (200, IID)
    assert (await fetch(url + "/latest/meta-data/instance-id", headers={TOKEN_HEADER: "garbage"}))[0] == 401


async def test_reconcile_closes_the_listener_of_a_deleted_instance(agent: Agent) -> None:
    agent.push(view(IID))
    agent.push(view(OTHER))
    await agent.listeners.reconcile()
    gone, kept = agent.listeners.urls[IID], agent.listeners.urls[OTHER]

    agent.push(view(IID, generation=3, deleted=True))
    await agent.listeners.reconcile()

    assert agent.listeners.urls == {OTHER: kept}
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(gone + "/latest/meta-data/instance-id")
    assert await fetch(kept + "/latest/meta-data/instance-id") == (200, OTHER)


async def test_registration_makes_reconcile_announce_again(agent: Agent) -> None:
    agent.push(view())
    await agent.listeners.reconcile()
    url = agent.listeners.urls[IID]
    [ask] = agent.core.on_timer(0.0)
    agent.core.on_reply(ask.context, m.RegisterHostOk(instances=[view()]), 0.0)  # ECS (re)learnt this host

    await agent.listeners.reconcile()
    assert agent.announced == [(IID, url), (IID, url)]


async def test_close_closes_every_listener(agent: Agent) -> None:
    agent.push(view(IID))
    agent.push(view(OTHER))
    await agent.listeners.reconcile()
    urls = list(agent.listeners.urls.values())
    assert len(urls) == 2

    await agent.listeners.close()
    for url in urls:
        with pytest.raises(aiohttp.ClientConnectionError):
            await fetch(url + "/latest/meta-data/instance-id")


# -- shared mode: one listener for every instance of the host --------------------------------
class SharedAgent(Agent):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[str, str]]] = []
        self.listeners = SharedListener(self.core, ScaledClock(1.0), "127.0.0.1", self._announce, announce_many=self._many)

    async def _many(self, endpoints: Sequence[tuple[str, str]]) -> None:
        self.batches.append(list(endpoints))


@pytest.fixture
async def shared() -> AsyncIterator[SharedAgent]:
    a = SharedAgent()
    yield a
    await a.listeners.close()


async def test_a_shared_listener_is_one_port_that_answers_each_named_instance_from_its_own_view(shared: SharedAgent) -> None:
    shared.push(view(IID, role=ROLE, credentials=CREDENTIALS))
    shared.push(view(OTHER))
    await shared.listeners.reconcile()
    assert len(shared.batches) == 1 and sorted(i for i, _ in shared.batches[0]) == sorted([IID, OTHER])  # one message
    mine, other = shared.listeners.urls[IID], shared.listeners.urls[OTHER]
    port = URL(mine).port
    assert mine == f"http://{IID}:@127.0.0.1:{port}" and other == f"http://{OTHER}:@127.0.0.1:{port}"
    creds = "/latest/meta-data/ram/security-credentials/"

    assert await fetch(mine + creds) == (200, ROLE)  # aiohttp sends the URL's user as Authorization
    assert await fetch(other + creds) == (404, "Not Found")  # the other instance has no role: nothing of IID's
    assert (await fetch(other + creds + ROLE))[0] == 404
    assert await fetch(f"http://127.0.0.1:{port}/{IID}/latest/meta-data/instance-id") == (200, IID)  # a path prefix
    assert await fetch(f"http://127.0.0.1:{port}/latest/meta-data/instance-id", headers={"Host": f"{OTHER}.metadata"}) == (200, OTHER)
    assert (await fetch(f"http://127.0.0.1:{port}/latest/meta-data/instance-id"))[0] == 404  # names no instance
    assert (await fetch(f"http://127.0.0.1:{port}/i-notonthishost/latest/meta-data/instance-id"))[0] == 404
    # as an HTTP proxy (the SDK's way): the instance arrives as Proxy-Authorization
    proxied = await raw(mine, (f"GET http://100.100.100.200{creds} HTTP/1.1\r\nHost: 100.100.100.200\r\n"
                               f"Proxy-Authorization: Basic {base64.b64encode(f'{OTHER}:'.encode()).decode()}\r\n"
                               "Connection: close\r\n\r\n").encode())
    assert proxied.startswith(b"HTTP/1.1 404")  # OTHER named: OTHER's view, whose port it shares

    shared.push(view(OTHER, generation=3, deleted=True))
    await shared.listeners.reconcile()
    assert set(shared.listeners.urls) == {IID} and (await fetch(other + "/latest/meta-data/instance-id"))[0] == 404
    assert await fetch(mine + "/latest/meta-data/instance-id") == (200, IID)  # the port stays for the rest


async def test_a_restarted_shared_agent_listens_on_its_previous_port(shared: SharedAgent) -> None:
    shared.push(view())
    await shared.listeners.reconcile()
    port = URL(shared.listeners.urls[IID]).port
    await shared.listeners.close()
    again = SharedAgent()
    try:
        again.push(view(endpoint_url=f"http://{IID}:@127.0.0.1:{port}"))
        await again.listeners.reconcile()
        assert again.listeners.urls[IID] == f"http://{IID}:@127.0.0.1:{port}"
    finally:
        await again.listeners.close()
