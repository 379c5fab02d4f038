"""The driver that owns a core: intake, effects, correlation, timers, and bad input."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import msgpack
import pytest

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.errors import Error
from protocol.messages.common import Ping, PingOk
from protocol.messages.ram import GetRole, GetRoleOk, Role, RoleCreated
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.driver import Driver
from services.runtime.effects import Effect, Log, Publish, Reply, Request
from services.runtime.entropy import SeededEntropy
from services.runtime.memory_bus import MemoryBroker

ROLE = Role(role_id="1", role_name="R", arn="acs:ram::1:role/R", assume_role_policy_document="{}", create_date="d")


class EchoCore:
    """Answers GetRole; 'Boom' raises; 'Ask' asks node 'other' and replies with what came back;
    fires a timer at ``deadline`` that publishes an event."""

    node_id = "echo"

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.fired: list[float] = []
        self.handled: list[str] = []

    def subscriptions(self) -> list[str]:
        return [topics.events("ram")]

    def handle(self, msg: Envelope, now: float) -> list[Effect]:
        body = msg.body
        assert isinstance(body, GetRole)
        self.handled.append(body.role_name)
        if body.role_name == "Boom":
            raise RuntimeError("core bug")
        if body.role_name == "Ask":
            return [Request("other", GetRole(role_name="inner"), context=msg)]
        return [Reply(msg, GetRoleOk(role=ROLE)), Log("answered", "info", {"role": body.role_name})]

    def on_reply(self, context: Any, body: Any, now: float) -> list[Effect]:
        return [Reply(context, body)]

    def on_timer(self, now: float) -> list[Effect]:
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            self.fired.append(now)
            return [Publish(topics.event("echo", "RoleCreated"), RoleCreated(role=ROLE))]
        return []

    def next_deadline(self) -> float | None:
        return self.deadline


@pytest.fixture
async def rig() -> AsyncIterator[tuple[EchoCore, Driver, BusClient, MemoryBroker]]:
    broker = MemoryBroker()
    clock = ScaledClock(100.0)  # 100 simulated seconds per real second
    core = EchoCore()
    driver = Driver(core, broker.client("echo"), clock, SeededEntropy(1), request_timeout=0.3)
    await driver.start()
    task = asyncio.create_task(driver.run())
    client = await BusClient(broker.client("tester"), "tester", clock).start()
    yield core, driver, client, broker
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_requests_are_answered(rig) -> None:  # noqa: ANN001
    core, driver, client, _ = rig
    answer = await client.request("echo", GetRole(role_name="R"))
    assert isinstance(answer, GetRoleOk) and answer.role == ROLE
    pong = await client.request("echo", Ping())
    assert isinstance(pong, PingOk) and pong.node == "echo"


async def test_malformed_bytes_get_an_error_reply_and_the_service_keeps_running(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    raw = broker.client("raw")
    answers: list[Envelope] = []

    async def collect(topic: str, payload: bytes) -> None:
        answers.append(codec.decode(payload))

    await raw.subscribe(topics.inbox_filter("raw"), collect)
    bad = msgpack.packb({"src": "raw", "dest": "echo", "msg_id": 77, "body": {"type": "GetRole", "RoleName": 12}})
    await raw.publish(topics.inbox("echo", "raw"), bad)
    await raw.publish(topics.inbox("echo", "raw"), b"\xc1not msgpack at all")
    async with asyncio.timeout(5):
        while not answers:
            await asyncio.sleep(0.005)
    error = answers[0].body
    assert isinstance(error, Error) and error.code == "InvalidParameter.Malformed"
    assert "$.body.RoleName" in error.message
    assert answers[0].in_reply_to == 77
    assert driver.counters.malformed == 2
    assert core.handled == []  # bad input never reached the core
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)


async def test_a_core_that_raises_answers_internal_error_and_keeps_serving(rig) -> None:  # noqa: ANN001
    core, driver, client, _ = rig
    answer = await client.request("echo", GetRole(role_name="Boom"))
    assert isinstance(answer, Error) and answer.code == "InternalError" and answer.http_status == 500
    assert driver.counters.failed == 1
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)


async def test_core_requests_are_correlated_with_replies(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig

    def other_answers(env: Envelope) -> None:
        asyncio.get_running_loop().create_task(other.reply(env, GetRoleOk(role=ROLE)))

    other = await BusClient(broker.client("other"), "other", ScaledClock(), on_message=other_answers).start()
    answer = await client.request("echo", GetRole(role_name="Ask"))
    assert isinstance(answer, GetRoleOk)


async def test_core_request_without_reply_gets_an_indefinite_timeout(rig) -> None:  # noqa: ANN001
    core, driver, client, _ = rig
    answer = await client.request("echo", GetRole(role_name="Ask"), timeout=3)  # nobody is "other"
    assert isinstance(answer, Error) and answer.code == "ServiceUnavailable.Timeout" and not answer.definite
    assert driver.counters.timeouts == 1


async def test_timer_fires_at_the_core_deadline_in_simulated_time(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    events: list[Envelope] = []

    async def collect(topic: str, payload: bytes) -> None:
        events.append(codec.decode(payload))

    watcher = broker.client("watcher")
    await watcher.subscribe(topics.events("echo"), collect)
    start = driver.clock.now()
    core.deadline = start + 20  # 20 simulated seconds = 0.2 s real at scale 100
    await client.request("echo", GetRole(role_name="R"))  # wakes the driver so it re-arms its timer
    async with asyncio.timeout(5):
        while not events:
            await asyncio.sleep(0.005)
    assert core.fired and core.fired[0] >= start + 20
    assert isinstance(events[0].body, RoleCreated) and events[0].dest == "*"


async def test_after_step_runs_after_every_step(rig) -> None:  # noqa: ANN001
    core, driver, client, _ = rig
    steps: list[int] = []

    async def after() -> None:
        steps.append(len(core.handled))

    driver.after_step = after
    await client.request("echo", GetRole(role_name="R"))
    await client.request("echo", GetRole(role_name="S"))
    assert steps[-2:] == [1, 2]


async def test_a_direct_message_whose_src_is_not_its_topics_sender_is_dropped_unanswered(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    raw = broker.client("raw")
    to_tester: list[Envelope] = []

    async def collect(topic: str, payload: bytes) -> None:
        to_tester.append(codec.decode(payload))

    await raw.subscribe(topics.inbox_filter("tester"), collect)  # where answers to the claimed sender would go
    forged = Envelope(src="tester", dest="echo", msg_id=5, body=GetRole(role_name="Forged"))
    await raw.publish(topics.inbox("echo", "raw"), codec.encode(forged))
    bad = msgpack.packb({"src": "tester", "dest": "echo", "msg_id": 6, "body": {"type": "GetRole", "RoleName": 12}})
    await raw.publish(topics.inbox("echo", "raw"), bad)  # malformed and forged: not answered either
    # a later honest request is answered, so the two before it were handled (dropped) already
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)
    assert (driver.counters.forged, driver.counters.malformed) == (1, 1)
    assert core.handled == ["R"]
    assert [e.in_reply_to for e in to_tester if e.in_reply_to in (5, 6)] == []


async def test_bus_client_drops_a_message_whose_src_is_not_its_topics_sender() -> None:
    broker = MemoryBroker()
    seen: list[Envelope] = []
    watcher = await BusClient(broker.client("watcher"), "watcher", ScaledClock(), on_message=seen.append).start()
    raw = broker.client("raw")
    pongs: list[Envelope] = []

    async def collect(topic: str, payload: bytes) -> None:
        pongs.append(codec.decode(payload))

    await raw.subscribe(topics.inbox_filter("echo"), collect)  # where answers to the claimed sender would go
    await raw.subscribe(topics.inbox_filter("raw"), collect)
    for msg_id, src, body in ((1, "echo", Ping()), (2, "echo", GetRole(role_name="R")), (3, "raw", GetRole(role_name="R")),
                              (4, "raw", Ping())):
        await raw.publish(topics.inbox("watcher", "raw"), codec.encode(Envelope(src=src, dest="watcher", msg_id=msg_id, body=body)))
    async with asyncio.timeout(5):
        while not pongs:  # the honest Ping comes last: once it is answered, every message before it was handled
            await asyncio.sleep(0.005)
    assert [(p.dest, p.in_reply_to) for p in pongs] == [("raw", 4)]
    assert [e.msg_id for e in seen] == [3]
    assert watcher.forged == 2


async def test_only_the_node_asked_may_answer_a_request(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    raw = broker.client("raw")
    asked: list[Envelope] = []

    async def intercept(topic: str, payload: bytes) -> None:  # sees the request on its way to "other"
        asked.append(env := codec.decode(payload))
        await raw.publish(topics.inbox("echo", "raw"), codec.encode(
            Envelope(src="raw", dest="echo", msg_id=1, in_reply_to=env.msg_id, body=GetRoleOk(role=ROLE))))

    def other_answers(env: Envelope) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)  # after the interloper's answer
            await other.reply(env, Error(code="Answered.ByOther", message="the real answer"))
        asyncio.get_running_loop().create_task(later())

    await raw.subscribe(topics.inbox_filter("other"), intercept)
    other = await BusClient(broker.client("other"), "other", ScaledClock(), on_message=other_answers).start()
    answer = await client.request("echo", GetRole(role_name="Ask"))
    assert asked and isinstance(answer, Error) and answer.code == "Answered.ByOther"
    # and a BusClient's own requests: an answer from a node it did not ask is not its answer
    pending = asyncio.create_task(client.request("other", GetRole(role_name="x"), timeout=2))
    async with asyncio.timeout(5):
        while len(asked) < 2:
            await asyncio.sleep(0.005)
    await raw.publish(topics.inbox("tester", "raw"), codec.encode(
        Envelope(src="raw", dest="tester", msg_id=2, in_reply_to=asked[1].msg_id, body=GetRoleOk(role=ROLE))))
    answer = await pending
    assert isinstance(answer, Error) and answer.code == "Answered.ByOther"


async def test_only_the_gateway_may_speak_for_a_caller(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    from protocol.messages.common import Principal

    alice = Principal(identity_type="RAMUser", account_id="1", arn="acs:ram::1:user/alice", principal_id="2", user_name="alice")
    ecs = Principal(identity_type="Service", account_id="1", arn="ecs.aliyuncs.com", principal_id="ecs.aliyuncs.com")
    refused = await client.request("echo", GetRole(role_name="R", caller=alice))  # "tester" is not the gateway
    assert isinstance(refused, Error) and refused.code == "NoPermission" and driver.counters.forged == 1
    assert isinstance(await client.request("echo", GetRole(role_name="R", caller=ecs)), Error)  # nor is it ECS
    assert core.handled == []
    gateway = await BusClient(broker.client("gateway"), "gateway", ScaledClock()).start()
    assert isinstance(await gateway.request("echo", GetRole(role_name="R", caller=alice)), GetRoleOk)
    as_ecs = await BusClient(broker.client("ecs"), "ecs", ScaledClock()).start()
    assert isinstance(await as_ecs.request("echo", GetRole(role_name="S", caller=ecs)), GetRoleOk)  # a service as itself
    assert isinstance(await as_ecs.request("echo", GetRole(role_name="T", caller=alice)), Error)  # but not for alice
    assert core.handled == ["R", "S"]


# -- dead letters ------------------------------------------------------------------------------
async def collect_dead_letters(broker: MemoryBroker) -> list[tuple[str, Envelope]]:
    letters: list[tuple[str, Envelope]] = []

    async def collect(topic: str, payload: bytes) -> None:
        letters.append((topic, codec.decode(payload)))

    await broker.client("observer").subscribe(topics.deadletters(), collect)
    return letters


async def test_every_dropped_message_is_recorded_as_a_dead_letter_without_its_payload(rig) -> None:  # noqa: ANN001
    import hashlib

    from protocol.messages.common import DeadLetter, Principal

    core, driver, client, broker = rig
    letters = await collect_dead_letters(broker)
    raw = broker.client("raw")
    secret = "SECRET-never-in-a-dead-letter"
    malformed = msgpack.packb({"src": "raw", "dest": "echo", "msg_id": 1, "trace_id": "t-1",
                               "body": {"type": "GetRole", "RoleName": 12, "Secret": secret}})
    forged = codec.encode(Envelope(src="tester", dest="echo", msg_id=2, body=GetRole(role_name=secret)))
    unexpected = codec.encode(Envelope(src="raw", dest="echo", msg_id=3, in_reply_to=999, body=GetRoleOk(role=ROLE)))
    sent = [(topics.inbox("echo", "raw"), malformed), (topics.inbox("echo", "raw"), forged), (topics.inbox("echo", "raw"), unexpected),
            (topics.event("ram", "Junk"), b"\xc1" + secret.encode())]
    for topic, payload in sent:
        await raw.publish(topic, payload)
    alice = Principal(identity_type="RAMUser", account_id="1", arn="acs:ram::1:user/alice", principal_id="2", user_name="alice")
    assert isinstance(await client.request("echo", GetRole(role_name=secret, caller=alice)), Error)  # caller refused
    assert isinstance(await client.request("echo", GetRole(role_name="Boom")), Error)  # the core raises
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)  # and it still serves
    async with asyncio.timeout(5):
        while len(letters) < 6:
            await asyncio.sleep(0.005)
    assert {t for t, _ in letters} == {topics.deadletter("echo")}
    assert all(e.src == "echo" and e.dest == "*" for _, e in letters)
    got = [e.body for _, e in letters]
    assert all(isinstance(d, DeadLetter) and d.node == "echo" for d in got)
    assert [d.reason for d in got] == ["malformed", "forged", "unexpected_reply", "malformed", "caller_refused", "core_failed"]
    for (topic, payload), letter in zip(sent, got):
        assert (letter.topic, letter.size, letter.sha256) == (topic, len(payload), hashlib.sha256(payload).hexdigest())
    assert (got[0].field, got[0].src) == ("$.body.RoleName", "raw") and "Expected `str`" in got[0].detail
    assert letters[0][1].trace_id == ""  # a dead letter carries no trace id of a message that did not decode
    assert (got[1].src, got[1].body) == ("tester", "GetRole")
    assert (got[2].body, got[2].detail) == ("GetRoleOk", "in reply to 999")
    assert (got[4].src, got[4].topic, got[4].detail) == ("tester", topics.inbox("echo", "tester"), "caller acs:ram::1:user/alice")
    assert (got[5].src, got[5].body, got[5].topic) == ("tester", "GetRole", topics.inbox("echo", "tester"))
    assert not any(secret.encode() in codec.encode(e) for _, e in letters)  # never the payload
    c = driver.counters
    assert (c.malformed, c.forged, c.unexpected, c.failed, c.dead_letters) == (2, 2, 1, 1, 6)
    assert core.handled == ["Boom", "R"]  # only the honest requests reached the core


async def test_a_dead_letter_that_cannot_be_published_does_not_stop_intake(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    bus = driver.endpoint.bus
    publish = bus.publish

    async def failing(topic: str, payload: bytes) -> None:
        if topics.matches(topics.deadletters(), topic):
            raise ConnectionError("broker away")
        await publish(topic, payload)

    bus.publish = failing  # type: ignore[method-assign]
    raw = broker.client("raw")
    await raw.publish(topics.inbox("echo", "raw"), b"\xc1")
    assert isinstance(await client.request("echo", GetRole(role_name="Boom")), Error)
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)
    assert (driver.counters.malformed, driver.counters.failed, driver.counters.dead_letters) == (1, 1, 0)


async def test_a_timer_that_raises_is_no_dead_letter(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    letters = await collect_dead_letters(broker)

    def boom(now: float) -> list[Effect]:
        raise RuntimeError("timer bug")

    core.on_timer = boom  # type: ignore[method-assign]
    core.deadline = driver.clock.now()
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)  # then the timer fires, and raises
    async with asyncio.timeout(5):
        while driver.counters.failed < 1:
            await asyncio.sleep(0.005)
    core.deadline = None
    assert isinstance(await client.request("echo", Ping()), PingOk)
    assert letters == [] and driver.counters.dead_letters == 0


async def test_an_unaddressable_sender_on_an_event_topic_is_not_answered_and_breaks_nothing(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    raw = broker.client("raw")
    for src in ("", "a/b", "+"):  # a topic the broker does not vouch for: the src is the message's own claim
        await raw.publish(topics.event("ram", "Anything"), codec.encode(Envelope(src=src, dest="echo", msg_id=1, body=Ping())))
        await raw.publish(topics.event("ram", "Anything"), codec.encode(Envelope(src=src, dest="echo", msg_id=2, body=GetRole(role_name="E"))))
    assert isinstance(await client.request("echo", GetRole(role_name="R")), GetRoleOk)
    assert core.handled == ["E", "E", "E", "R"] and driver.counters.failed == 0


async def test_a_bus_client_records_what_it_drops() -> None:
    broker = MemoryBroker()
    letters = await collect_dead_letters(broker)
    watcher = await BusClient(broker.client("watcher"), "watcher", ScaledClock()).start()
    raw = broker.client("raw")
    await raw.publish(topics.inbox("watcher", "raw"), b"\xc1junk")
    await raw.publish(topics.inbox("watcher", "raw"), codec.encode(Envelope(src="echo", dest="watcher", msg_id=1, body=Ping())))
    async with asyncio.timeout(5):
        while len(letters) < 2:
            await asyncio.sleep(0.005)
    assert [(t, e.body.reason) for t, e in letters] == [(topics.deadletter("watcher"), "malformed"),  # type: ignore[attr-defined]
                                                         (topics.deadletter("watcher"), "forged")]
    assert (watcher.malformed, watcher.forged) == (1, 1)


async def test_an_unreadable_reply_is_not_answered_and_two_nodes_never_trade_errors(rig) -> None:  # noqa: ANN001
    core, driver, client, broker = rig
    raw = broker.client("raw")
    answers: list[Envelope] = []

    async def collect(topic: str, payload: bytes) -> None:
        answers.append(codec.decode(payload))

    await raw.subscribe(topics.inbox_filter("raw"), collect)
    bad_reply = msgpack.packb({"src": "raw", "dest": "echo", "msg_id": 1, "in_reply_to": 5, "body": {"type": "GetRoleOk", "Role": 1}})
    await raw.publish(topics.inbox("echo", "raw"), bad_reply)
    # an oversized request whose trace id alone is near the cap: the error sent back must not be oversized in turn
    # (the tester's client would find it malformed and answer it, and so on, forever)
    huge = msgpack.packb({"src": "tester", "dest": "echo", "msg_id": 2, "trace_id": "t" * (codec.MAX_MESSAGE_BYTES - 100),
                          "body": {"type": "GetRole", "RoleName": "x" * 200}})
    await client.bus.publish(topics.inbox("echo", "tester"), huge)
    assert isinstance(await client.request("echo", Ping()), PingOk)
    async with asyncio.timeout(5):
        while client.unexpected < 1:  # the Malformed error, answering a request the client never made
            await asyncio.sleep(0.005)
    assert isinstance(await client.request("echo", Ping()), PingOk)
    assert (driver.counters.malformed, client.malformed) == (2, 0)
    assert answers == []  # the reply was not answered
