"""The Bus contract, run against both implementations: only the fixture differs.

MQTT-only behaviour (persistent sessions, broker restarts, TCP_NODELAY) is tested at the end
against a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import AsyncIterator, Awaitable, Callable

import pytest

from protocol import errors
from protocol.messages.common import Ping, PingOk
from protocol.messages.ram import GetRole, GetRoleOk, Role
from services.runtime.bus import Bus
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.memory_bus import MemoryBroker
from services.runtime.mqtt_bus import MqttBus

_ids = itertools.count()
MakeBus = Callable[[], Awaitable[Bus]]


@pytest.fixture(params=["memory", "mqtt"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    made: list[Bus] = []
    memory = MemoryBroker()

    async def make() -> Bus:
        client_id = f"contract-{next(_ids)}"
        if request.param == "memory":
            bus: Bus = memory.client(client_id)
        else:
            bus = await MqttBus.connect(request.getfixturevalue("broker").url, client_id, persistent=False)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


def unique(name: str) -> str:
    return f"test/{name}/{next(_ids)}"


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_published_message_reaches_subscriber(make_bus: MakeBus) -> None:
    sub, pub = await make_bus(), await make_bus()
    topic = unique("direct")
    got: list[tuple[str, bytes]] = []

    async def handler(t: str, payload: bytes) -> None:
        got.append((t, payload))

    await sub.subscribe(topic, handler)
    await pub.publish(topic, b"\x00hello\xff")
    await wait_for(lambda: len(got) == 1)
    assert got == [(topic, b"\x00hello\xff")]


async def test_wildcards_and_non_matching_topics(make_bus: MakeBus) -> None:
    sub, pub = await make_bus(), await make_bus()
    base = unique("wild")
    got: list[str] = []

    async def handler(t: str, payload: bytes) -> None:
        got.append(payload.decode())

    await sub.subscribe(f"{base}/+/in", handler)
    for name in ("a/in", "b/in", "a/out", "a/b/in", "last/in"):
        await pub.publish(f"{base}/{name}", name.encode())
    await wait_for(lambda: "last/in" in got)
    assert got == ["a/in", "b/in", "last/in"]


async def test_order_is_kept_per_publisher_and_topic(make_bus: MakeBus) -> None:
    sub, pub = await make_bus(), await make_bus()
    topic = unique("order")
    got: list[int] = []

    async def handler(t: str, payload: bytes) -> None:
        got.append(int(payload))

    await sub.subscribe(topic, handler)
    for i in range(200):
        await pub.publish(topic, str(i).encode())
    await wait_for(lambda: len(got) == 200)
    assert got == list(range(200))


async def test_handlers_run_one_message_at_a_time(make_bus: MakeBus) -> None:
    sub, pub = await make_bus(), await make_bus()
    topic = unique("serial")
    active, peak, done = 0, 0, []

    async def handler(t: str, payload: bytes) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)  # a handler that yields must still not overlap the next one
        active -= 1
        done.append(payload)

    await sub.subscribe(topic, handler)
    for i in range(20):
        await pub.publish(topic, b"%d" % i)
    await wait_for(lambda: len(done) == 20)
    assert peak == 1


async def test_a_failing_handler_does_not_stop_delivery(make_bus: MakeBus) -> None:
    sub, pub = await make_bus(), await make_bus()
    topic = unique("failing")
    got: list[bytes] = []

    async def handler(t: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        got.append(payload)

    await sub.subscribe(topic, handler)
    for payload in (b"one", b"boom", b"two"):
        await pub.publish(topic, payload)
    await wait_for(lambda: got == [b"one", b"two"])


async def test_request_response_is_correlated(make_bus: MakeBus) -> None:
    server_bus, client_bus = await make_bus(), await make_bus()
    clock = ScaledClock()
    server_name, client_name = f"server{next(_ids)}", f"client{next(_ids)}"

    def answer(env) -> None:  # noqa: ANN001
        assert isinstance(env.body, GetRole)
        role = Role(role_id="1", role_name=env.body.role_name, arn="arn", assume_role_policy_document="{}", create_date="d")
        asyncio.get_running_loop().create_task(server.reply(env, GetRoleOk(role=role)))

    server = await BusClient(server_bus, server_name, clock, on_message=answer).start()
    client = await BusClient(client_bus, client_name, clock).start()
    replies = await asyncio.gather(*(client.request(server_name, GetRole(role_name=f"r{i}")) for i in range(10)))
    assert [r.role.role_name for r in replies] == [f"r{i}" for i in range(10)]  # type: ignore[attr-defined]
    pong = await client.request(server_name, Ping())
    assert isinstance(pong, PingOk) and pong.node == server_name


async def test_request_without_reply_times_out_as_indefinite(make_bus: MakeBus) -> None:
    client = await BusClient(await make_bus(), f"lonely{next(_ids)}", ScaledClock()).start()
    answer = await client.request("nobody-listens", Ping(), timeout=0.2)
    assert isinstance(answer, errors.Error)
    assert answer.code == "ServiceUnavailable.Timeout" and answer.definite is False


# -- MQTT only -------------------------------------------------------------------------------
async def test_persistent_session_keeps_messages_published_while_away(broker) -> None:  # noqa: ANN001
    topic, client_id = unique("away"), f"persistent-{next(_ids)}"
    got: list[bytes] = []

    async def handler(t: str, payload: bytes) -> None:
        got.append(payload)

    first = await MqttBus.connect(broker.url, client_id)
    await first.subscribe(topic, handler)
    await first.close()
    publisher = await MqttBus.connect(broker.url, f"pub-{next(_ids)}", persistent=False)
    await publisher.publish(topic, b"while you were away")
    await asyncio.sleep(0)  # let the publish leave; delivery is awaited below with a bound
    second = await MqttBus.connect(broker.url, client_id, hold=True)  # nothing delivered before open()
    await second.subscribe(topic, handler)
    second.open()
    try:
        await wait_for(lambda: got == [b"while you were away"])
    finally:
        await second.close()
        await publisher.close()


async def test_reconnects_and_resubscribes_after_broker_restart(broker_factory) -> None:  # noqa: ANN001
    b = broker_factory().start()
    topic = unique("restart")
    got: list[bytes] = []

    async def handler(t: str, payload: bytes) -> None:
        got.append(payload)

    bus = await MqttBus.connect(b.url, f"survivor-{next(_ids)}")
    await bus.subscribe(topic, handler)
    b.stop()
    await wait_for(lambda: not bus.connected)
    b.start()  # same port, empty broker: our session is gone, so we must subscribe again
    await wait_for(lambda: bus.connected and bus.reconnects == 1, timeout=15)
    publisher = await MqttBus.connect(b.url, f"pub-{next(_ids)}", persistent=False)
    try:
        async with asyncio.timeout(10):
            while not got:  # the re-subscription is asynchronous: publish until it is in place
                await publisher.publish(topic, b"after restart")
                await asyncio.sleep(0.05)
        assert set(got) == {b"after restart"}
    finally:
        await publisher.close()
        await bus.close()


async def test_tcp_nodelay_is_set(broker) -> None:  # noqa: ANN001
    bus = await MqttBus.connect(broker.url, f"nodelay-{next(_ids)}", persistent=False)
    try:
        sock = bus._client._connection._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await bus.close()


async def test_unreachable_broker_is_a_clear_error() -> None:
    from services.cli.up import free_port
    from services.runtime.bus import BusError

    with pytest.raises(BusError, match="cannot connect"):
        await MqttBus.connect(f"mqtt://127.0.0.1:{free_port()}", "nobody", timeout=2)


async def test_a_barrier_returns_only_after_what_was_sent_before_it_was_handled(make_bus: MakeBus) -> None:
    from services.runtime.client import BusBarrier

    me, other = await make_bus(), await make_bus()
    topic = unique("barrier")
    seen: list[bytes] = []

    async def slow_handler(t: str, payload: bytes) -> None:
        await asyncio.sleep(0.01)  # the event is still being handled when the barrier is asked for
        seen.append(payload)

    await me.subscribe(topic, slow_handler)
    barrier = BusBarrier(await BusClient(me, f"barrier{next(_ids)}", ScaledClock()).start())
    sender = BusClient(other, f"sender{next(_ids)}", ScaledClock())
    await sender.start()
    for i in range(5):
        await other.publish(topic, b"%d" % i)
    assert await BusBarrier(sender).wait()  # the sender's own round trip: its publishes are at the broker
    results = await asyncio.gather(*(barrier.wait() for _ in range(10)))  # concurrent waiters share pings
    assert all(results)
    assert seen == [b"0", b"1", b"2", b"3", b"4"]
