"""Address mode (compose.yaml's agent): one listener on an address the agent holds, each request
answered for the instance whose private IP it came from. Here on loopback, where every 127/8
address is this machine's, so three source addresses stand in for three instance containers."""

from __future__ import annotations

from typing import AsyncIterator

import aiohttp
import msgspec
import pytest

from protocol.messages import ecs as m
from services.cli.up import free_port
from services.metadata.core import MetadataCore
from services.metadata.netns import ADDRESS_PREFIX, AddressListener, NamespaceError
from services.runtime.clock import ScaledClock
from tests.helpers import envelope
from tests.services.metadata.test_core import HOST, IID, OTHER, view


def at(instance_id: str, ip: str) -> m.InstanceView:
    v = view(instance_id)
    return msgspec.structs.replace(v, network=msgspec.structs.replace(v.network, private_ip=ip))


class Agent:
    def __init__(self) -> None:
        self.core = MetadataCore(host_id=HOST, token_key=b"k" * 32)
        self.announced: list[tuple[str, str]] = []
        self.port = free_port()
        self.listener = AddressListener(self.core, ScaledClock(1.0), self._announce, address="127.0.0.1", port=self.port)

    async def _announce(self, instance_id: str, url: str) -> None:
        self.announced.append((instance_id, url))

    def push(self, v: m.InstanceView) -> None:
        self.core.handle(envelope(m.InstanceChanged(view=v), src="ecs", dest="*"), 0.0)

    async def get(self, source: str, path: str = "/latest/meta-data/instance-id") -> tuple[int, str]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as answer:
                return answer.status, await answer.text()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    a = Agent()
    await a.listener.start()
    yield a
    await a.listener.close()


async def test_each_source_address_gets_its_own_instance(agent: Agent) -> None:
    agent.push(at(IID, "127.0.0.2"))
    agent.push(at(OTHER, "127.0.0.3"))
    await agent.listener.reconcile()
    assert sorted(agent.announced) == sorted([(IID, ADDRESS_PREFIX + "127.0.0.2"), (OTHER, ADDRESS_PREFIX + "127.0.0.3")])
    assert await agent.get("127.0.0.2") == (200, IID)
    assert await agent.get("127.0.0.3") == (200, OTHER)
    status, text = await agent.get("127.0.0.4")  # no instance has this address
    assert status == 403 and "no instance" in text


async def test_an_instance_whose_ip_another_holds_gets_no_way_in(agent: Agent) -> None:
    agent.push(at(IID, "127.0.0.2"))
    await agent.listener.reconcile()
    agent.push(at(OTHER, "127.0.0.2"))
    await agent.listener.reconcile()
    assert agent.announced == [(IID, ADDRESS_PREFIX + "127.0.0.2")]
    assert await agent.get("127.0.0.2") == (200, IID)


async def test_a_deleted_instance_is_no_longer_answered(agent: Agent) -> None:
    agent.push(at(IID, "127.0.0.2"))
    await agent.listener.reconcile()
    agent.push(msgspec.structs.replace(at(IID, "127.0.0.2"), generation=3, deleted=True))
    await agent.listener.reconcile()
    assert (await agent.get("127.0.0.2"))[0] == 403


async def test_an_address_the_agent_does_not_hold_is_a_clear_error() -> None:
    core = MetadataCore(host_id=HOST, token_key=b"k" * 32)

    async def announce(instance_id: str, url: str) -> None:
        raise AssertionError("nothing to announce")

    with pytest.raises(NamespaceError, match="must hold 192.0.2.200"):
        await AddressListener(core, ScaledClock(1.0), announce, address="192.0.2.200", port=free_port()).start()
