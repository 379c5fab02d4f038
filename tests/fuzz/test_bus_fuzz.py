"""Fuzz every bus topic of every service with random and mutated messages.

In memory (fast, so many examples): the real cores of RAM, STS, ECS and a metadata agent, each
owned by its :class:`~services.runtime.driver.Driver`, and the bus clients of the gateway and of
OSS (their real shell, ``running_oss``), all on one in-memory broker, with a role, a user and
an instance holding credentials. On every topic a node reads, a ``fuzzer`` node sends random
bytes; real messages of every type, encoded and then mutated (bit flips, truncation, spliced
bytes, wrong field types, unknown body tags, huge strings, out-of-range ints, deeply nested
junk, payloads beyond the codec's cap, fields dropped or added); and well-formed envelopes
claiming other senders or callers. Topics only a privileged identity may write (RAM's events,
a host's instances) get only what does not decode, as the broker's ACL would have it. After
each message:

* no handler raised, and every driver is still running;
* the node answers Ping;
* a dropped message (malformed, forged, caller refused, unexpected reply) was counted, logged
  and recorded once on the node's dead-letter topic (reason, topic, size, SHA-256; never its
  bytes), and nothing else was;
* no core raised, and no core's state changed (RAM's directory, ECS's instances, the agent's
  views, STS's keys).

Then the same against real processes and a real Mosquitto (``ramsim up``'s cluster), bounded:
every service's inbox gets random and mutated messages as the operator identity, and RAM's
events and a host's instances get them from the identities allowed to write there.

``RAMSIM_FUZZ_EXAMPLES`` sets the number of examples of each in-memory test (150 by default):

    RAMSIM_FUZZ_EXAMPLES=5000 python -m pytest tests/fuzz/test_bus_fuzz.py -q
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import msgpack
import msgspec
import pytest
import structlog
from hypothesis import HealthCheck, given, settings, strategies as st

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.errors import Error, ProtocolError
from protocol.messages import ALL, ecs, ram
from protocol.messages.common import ApiCommand, DeadLetter, Ping, PingOk, Principal
from services.cli import broker as broker_acl
from services.ecs.app import build as build_ecs
from services.metadata.app import build as build_metadata
from services.metadata.core import MetadataCore
from services.oss.app import running_oss
from services.ram.app import build as build_ram
from services.ram.policy import ECS_TRUST_POLICY
from services.runtime.bus import Handler
from services.runtime.client import BusClient, forged, may_call
from services.runtime.clock import ScaledClock
from services.runtime.driver import Driver
from services.runtime.entropy import SeededEntropy
from services.runtime.memory_bus import MemoryBroker, MemoryBus
from services.runtime.mqtt_bus import MqttBus
from services.runtime.service import clock_for
from services.runtime.settings import Settings
from services.sts.app import build as build_sts
from services.sts.core import StsCore
from tests.e2e.conftest import broker_kind, broker_options, make_cluster, make_role, metadata_url  # noqa: F401  # fixtures: make_cluster and what it needs

EXAMPLES = int(os.environ.get("RAMSIM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
FUZZER = "fuzzer"
HOST = "host-1"
AGENT = broker_acl.host_identity(HOST)
DRIVEN = ("ram", "sts", "ecs", AGENT)  # the cores a Driver owns
CLIENTS = ("gateway", "oss")           # the shells that are bus clients
ACCOUNT = "1234567890123456"
SENDERS = ("ram", "sts", "ecs", "gateway", "oss", AGENT, broker_acl.OPERATOR)  # whom a forged envelope may claim to be
LOGGED = {"malformed": {"message_malformed", "event_malformed"}, "forged": {"message_forged"},
          "caller_refused": {"caller_refused"}, "unexpected_reply": {"reply_unexpected"}}


# -- the rig: one in-memory cluster for the whole module -----------------------------------------
class RecordingBus(MemoryBus):
    """A memory bus client that remembers every exception a handler let out (the bus itself only logs them)."""

    raised: list[BaseException] = []

    async def subscribe(self, topic_filter: str, handler: Handler) -> None:
        async def guarded(topic: str, payload: bytes) -> None:
            try:
                await handler(topic, payload)
            except BaseException as exc:
                RecordingBus.raised.append(exc)
                raise

        await super().subscribe(topic_filter, guarded)


class RecordingBroker(MemoryBroker):
    def client(self, client_id: str) -> MemoryBus:
        bus = RecordingBus(self, client_id)
        self._clients[client_id] = bus
        return bus


class Rig:
    def __init__(self, loop: asyncio.AbstractEventLoop, drivers: dict[str, Driver], tasks: list[asyncio.Task[None]],
                 fuzzer: BusClient, gateway: BusClient, letters: list[DeadLetter], instance_id: str) -> None:
        self.loop, self.drivers, self.tasks, self.fuzzer, self.gateway = loop, drivers, tasks, fuzzer, gateway
        self.letters = letters  # every dead letter published, in order
        self.instance_id = instance_id
        self.initial = states(self)

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def __repr__(self) -> str:
        return f"<in-memory cluster: {', '.join(self.drivers)}, {len(self.letters)} dead letters so far>"


def root() -> Principal:
    return Principal(identity_type="Account", account_id=ACCOUNT, arn=f"acs:ram::{ACCOUNT}:root", principal_id=ACCOUNT)


async def until(probe: Callable[[], Any], what: str | Callable[[], str], timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.005)
    return value


_encoder = msgspec.msgpack.Encoder()


def state(core: object) -> object:
    """What must not change when a core is sent bad input: its rows where it has a dump (RAM's
    directory, ECS's instances and hosts), an agent's views, STS's keys."""
    if isinstance(core, MetadataCore):
        return {i: _encoder.encode(v) for i, v in core.views.items()}, core.registered
    if isinstance(core, StsCore):
        return core.account_id, core.keys.rotation, core.keys._master
    dump = getattr(core, "dump", None)
    if callable(dump):
        return {table: {key: _encoder.encode(row) for key, row in rows.items()} for table, rows in dump().items()}
    if hasattr(core, "dir"):  # RAM without a dump: its directory's tables
        return {name: repr(getattr(core.dir, name)) for name in ("users", "groups", "roles", "members", "keys", "policies",
                                                                 "attached", "generation")}
    return {i: repr(r) for i, r in core.instances.items()}, list(core.hosts)  # type: ignore[attr-defined]


def states(rig: Rig) -> dict[str, object]:
    return {node: state(driver.core) for node, driver in rig.drivers.items()}


async def build_rig(loop: asyncio.AbstractEventLoop, oss_dir: Path, stack: contextlib.AsyncExitStack) -> Rig:
    settings_ = Settings(account_id=ACCOUNT, root_access_key_id="LTAI5tFuzzRootKey0000000", root_access_key_secret="root-secret-" + "f" * 18,
                         sts_signing_key="11" * 32, request_timeout=2.0, host_id=HOST)
    broker, entropy, clock = RecordingBroker(), SeededEntropy(7), clock_for(settings_)
    cores = [build_ram(settings_, entropy), build_sts(settings_, entropy), build_ecs(settings_, entropy), build_metadata(settings_, entropy)]
    drivers: dict[str, Driver] = {}
    for core in cores:
        bus = broker.client(core.node_id)
        stack.push_async_callback(bus.close)
        driver = drivers[core.node_id] = Driver(core, bus, clock, entropy, request_timeout=settings_.request_timeout)
        await driver.start()
    tasks = [loop.create_task(d.run(), name=f"fuzz:{node}") for node, d in drivers.items()]
    letters: list[DeadLetter] = []

    async def collect(topic: str, payload: bytes) -> None:
        letters.append(codec.decode(payload).body)  # type: ignore[arg-type]

    fuzzer_bus = broker.client(FUZZER)
    stack.push_async_callback(fuzzer_bus.close)
    await fuzzer_bus.subscribe(topics.deadletters(), collect)  # the same connection as its Pings: letters arrive in order
    fuzzer = await BusClient(fuzzer_bus, FUZZER, clock).start()
    gateway_bus = broker.client("gateway")
    stack.push_async_callback(gateway_bus.close)
    gateway = await BusClient(gateway_bus, "gateway", clock).start()
    oss_bus = broker.client("oss")
    stack.push_async_callback(oss_bus.close)
    await stack.enter_async_context(running_oss(oss_bus, settings_, oss_dir))

    # something to keep: a user with a key, a role with a policy, an instance holding the role's credentials
    async def admin(node: str, body: Any) -> Any:
        answer = await gateway.request(node, msgspec.structs.replace(body, caller=root()))
        assert not isinstance(answer, Error), answer
        return answer

    await admin("ram", ram.CreateUser(user_name="alice"))
    await admin("ram", ram.CreateAccessKey(user_name="alice"))
    await admin("ram", ram.CreateRole(role_name="Fuzzed", assume_role_policy_document=ECS_TRUST_POLICY))
    await admin("ram", ram.AttachPolicyToRole(policy_type="System", policy_name="AliyunECSReadOnlyAccess", role_name="Fuzzed"))
    await until(lambda: drivers[AGENT].core.ready, "the agent to register")  # type: ignore[attr-defined]
    launched = await admin("ecs", ecs.RunInstances(region_id=settings_.region_id, ram_role_name="Fuzzed"))
    instance_id = launched.instance_id_sets.instance_id_set[0]
    agent = drivers[AGENT].core
    assert isinstance(agent, MetadataCore)
    await until(lambda: (v := agent.views.get(instance_id)) is not None and v.credentials is not None, "the credential at the agent")
    for node in (*DRIVEN, *CLIENTS):
        assert isinstance(await fuzzer.request(node, Ping()), PingOk), node
    return Rig(loop, drivers, tasks, fuzzer, gateway, letters, instance_id)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        made = loop.run_until_complete(build_rig(loop, tmp_path_factory.mktemp("bus-fuzz"), stack))
        yield made
        assert states(made) == made.initial  # nothing the fuzzing sent changed anything
        assert not any(t.done() for t in made.tasks)
    finally:
        for task in asyncio.all_tasks(loop):
            if task.get_name().startswith("fuzz:"):
                task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(stack.aclose())
        loop.close()


# -- what to send ---------------------------------------------------------------------------------
ints = st.sampled_from([0, -1, 1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), ints, st.floats(), st.text(max_size=16),
                              st.binary(max_size=16)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _encodable(body: object) -> bool:
    try:
        _encoder.encode(body)
        return True
    except OverflowError:  # from_type's ints are unbounded; msgpack's stop at 64 bits
        return False


bodies = st.sampled_from(ALL).flatmap(st.from_type).filter(_encodable)


def envelopes(dest: str) -> st.SearchStrategy[Envelope]:
    return st.builds(Envelope, src=st.one_of(st.just(FUZZER), st.sampled_from(SENDERS)), dest=st.sampled_from([dest, "*", FUZZER]),
                     msg_id=st.integers(-(2**63), 2**64 - 1), body=bodies,
                     in_reply_to=st.one_of(st.none(), st.none(), st.integers(-(2**63), 2**64 - 1)),
                     trace_id=st.text(max_size=24), sent_at=st.floats())


def _positions(value: Any, path: tuple = ()) -> list[tuple]:
    found: list[tuple] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        found.append((*path, key))
        found += _positions(inner, (*path, key))
    return found


def _parent(value: Any, path: tuple) -> Any:
    for key in path[:-1]:
        value = value[key]
    return value


def _nested(depth: int) -> bytes:
    """``depth`` arrays or maps inside each other, as bytes (msgpack-python refuses to pack that deep)."""
    return b"".join(b"\x91" if i % 2 else b"\x81\xa1k" for i in range(depth)) + b"\xc0"


MUTATIONS = ("flip", "truncate", "splice", "retype", "tag", "huge", "int", "nest", "drop", "extra", "oversize")


def mutate(data: st.DataObject, env: Envelope) -> bytes:
    """``env`` encoded, then broken in one of :data:`MUTATIONS` (a few may still decode)."""
    raw = codec.encode(env)
    kind = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if kind == "flip":
        flipped = bytearray(raw)
        for index, bit in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 7)), min_size=1, max_size=8)):
            flipped[index] ^= 1 << bit
        return bytes(flipped)
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, len(raw) - 1))]
    if kind == "splice":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=16)) + raw[at + data.draw(st.integers(0, 8)):]
    if kind == "oversize":
        return raw + b"\xc0" * (codec.MAX_MESSAGE_BYTES + 1 - len(raw) + data.draw(st.integers(0, 1024)))
    tree = msgpack.unpackb(raw)
    places = _positions(tree)
    path = data.draw(st.sampled_from(places))
    parent = _parent(tree, path)
    if kind == "retype":
        parent[path[-1]] = data.draw(junk)
    elif kind == "tag":
        tree["body"]["type"] = data.draw(st.one_of(st.text(max_size=24), st.sampled_from([k.__name__ for k in ALL]), junk))
    elif kind == "huge":
        parent[path[-1]] = "x" * data.draw(st.sampled_from([1_000, 65_536, codec.MAX_MESSAGE_BYTES - 200, codec.MAX_MESSAGE_BYTES + 1]))
    elif kind == "int":
        parent[path[-1]] = data.draw(ints)
    elif kind == "drop":
        del parent[path[-1]]
    elif kind == "extra":
        target = data.draw(st.sampled_from([tree, *[v for v in (_parent(tree, (*p, None)) for p in places) if isinstance(v, dict)]]))
        target[data.draw(st.text(max_size=12))] = data.draw(junk)
    else:  # nest: a marker, replaced by deeply nested junk once packed
        marker = "\x00deep\x00"
        parent[path[-1]] = marker
        return msgpack.packb(tree).replace(msgpack.packb(marker), _nested(data.draw(st.integers(1, 20_000))), 1)
    return msgpack.packb(tree)


def subscribed(node: str, instance_id: str) -> list[str]:
    """Topics besides its inbox that ``node`` reads (only their one privileged writer may publish there)."""
    if node in ("ecs", "oss"):
        return [topics.event("ram", "PolicyAttachedToRole")]
    if node == AGENT:
        return [topics.instance(HOST, instance_id)]
    return []


def decodes(payload: bytes) -> Envelope | None:
    try:
        return codec.decode(payload)
    except ProtocolError:
        return None


def expected(node: str, topic: str, payload: bytes) -> str | None:
    """Why ``node`` drops this message, or None if it is not dropped (answered, or handled by the core)."""
    env = decodes(payload)
    if env is None:
        return "malformed"
    if forged(topic, env.src):
        return "forged"
    if node in CLIENTS and isinstance(env.body, Ping):  # a bus client answers a Ping first
        return None
    if env.in_reply_to is not None:  # nobody asked the fuzzer anything
        return "unexpected_reply"
    if isinstance(env.body, ApiCommand) and not may_call(env):  # every node alike, driven or a bus client
        return "caller_refused"
    return None


def counted(rig: Rig, node: str) -> dict[str, int]:
    if node in DRIVEN:
        c = rig.drivers[node].counters
        return {"malformed": c.malformed, "forged": c.forged, "caller_refused": c.forged, "unexpected_reply": c.unexpected,
                "failed": c.failed}
    if node == "gateway":
        g = rig.gateway
        return {"malformed": g.malformed, "forged": g.forged, "caller_refused": g.forged, "unexpected_reply": g.unexpected,
                "failed": g.failed}
    return {}  # OSS's client lives inside its shell: its dead letters and logs show what it dropped


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every log event, whatever level an earlier test configured (capture_logs keeps the level filter)."""
    old = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        cache_logger_on_first_use=False)
    try:
        yield capture.entries
    finally:
        structlog.configure(**old)


async def deliver(rig: Rig, node: str, topic: str, payload: bytes) -> None:
    """Send one message to ``node`` and check every property."""
    before_counts = counted(rig, node)
    before_state = states(rig)
    before_letters = len(rig.letters)
    reason = expected(node, topic, payload)
    with captured_logs() as logged:
        await rig.fuzzer.bus.publish(topic, payload)
        # the same connection, the same node: once the Ping is answered, the message before it was handled
        pong = await rig.fuzzer.request(node, Ping(), timeout=5)
    assert isinstance(pong, PingOk), (node, pong)
    assert RecordingBus.raised == [], RecordingBus.raised
    assert not any(t.done() for t in rig.tasks), [t for t in rig.tasks if t.done()]
    assert states(rig) == before_state, f"{node}: state changed by {reason or 'a handled message'} on {topic}"
    letters = [d for d in rig.letters[before_letters:] if d.node == node]
    after_counts = counted(rig, node)
    if after_counts:
        assert after_counts["failed"] == before_counts["failed"], f"{node}: the core raised (see the core_failed log)"
    if reason is None:
        assert letters == [], letters
        assert after_counts == before_counts
        return
    assert [(d.reason, d.topic, d.size, d.sha256) for d in letters] == [(reason, topic, len(payload), hashlib.sha256(payload).hexdigest())]
    if after_counts:
        assert after_counts[reason] == before_counts[reason] + 1, (reason, before_counts, after_counts)
    assert LOGGED[reason] & {e["event"] for e in logged}, (reason, [e["event"] for e in logged])
    if len(payload) >= 32:  # a dead letter never carries the payload
        assert payload[:32] not in _encoder.encode(letters[0])


NODES = (*DRIVEN, *CLIENTS)


@pytest.mark.parametrize("node", NODES)
@FUZZ
@given(data=st.data(), payload=st.one_of(st.binary(max_size=512), st.binary(min_size=1, max_size=64).map(lambda b: b"\x84" + b)))
def test_random_bytes_on_every_topic(rig: Rig, node: str, data: st.DataObject, payload: bytes) -> None:
    privileged = subscribed(node, rig.instance_id) if decodes(payload) is None else []  # what decodes there would be trusted
    topic = data.draw(st.sampled_from([topics.inbox(node, FUZZER), *privileged]))
    rig.run(deliver(rig, node, topic, payload))


@pytest.mark.parametrize("node", NODES)
@FUZZ
@given(data=st.data())
def test_mutated_messages_on_every_topic(rig: Rig, node: str, data: st.DataObject) -> None:
    payload = mutate(data, data.draw(envelopes(node), label="envelope"))
    privileged = subscribed(node, rig.instance_id) if decodes(payload) is None else []  # what decodes there would be trusted
    topic = data.draw(st.sampled_from([topics.inbox(node, FUZZER), *privileged]))
    rig.run(deliver(rig, node, topic, payload))


@pytest.mark.parametrize("node", NODES)
@FUZZ
@given(data=st.data())
def test_well_formed_messages_from_an_unprivileged_sender(rig: Rig, node: str, data: st.DataObject) -> None:
    message = data.draw(envelopes(node), label="envelope")
    caller = data.draw(st.one_of(st.none(), st.just(root()), st.from_type(Principal)), label="caller")
    if isinstance(message.body, ApiCommand):
        message = msgspec.structs.replace(message, body=msgspec.structs.replace(message.body, caller=caller))
    rig.run(deliver(rig, node, topics.inbox(node, FUZZER), codec.encode(message)))


def test_a_node_cannot_administer_ram_by_calling_itself_a_service() -> None:
    """Found by this fuzzer: a node could name itself a service principal and RAM took any
    Service principal for the account owner. Now neither layer lets it through."""
    from services.ram.core import RamCore

    core = RamCore(account_id=ACCOUNT, root_access_key_id="", root_access_key_secret="", entropy=SeededEntropy(3).token_bytes, now=0.0)
    itself = Principal(identity_type="Service", account_id=ACCOUNT, arn=f"{FUZZER}.aliyuncs.com", principal_id=FUZZER)
    request = Envelope(src=FUZZER, dest="ram", msg_id=1, body=ram.CreateUser(user_name="mallory", caller=itself))
    assert not may_call(request)
    core.handle(request, 0.0)  # and RAM alone refuses it too
    assert "mallory" not in core.dir.users


def test_the_fuzzing_reached_every_reason(rig: Rig) -> None:
    """The strategies do produce each kind of drop (so the properties above were exercised)."""
    if len(rig.letters) < 100:
        pytest.skip("meaningful only after the fuzz tests above")
    assert {d.reason for d in rig.letters if d.node != FUZZER} >= {"malformed", "forged", "caller_refused", "unexpected_reply"}
    assert all(d.node in NODES or d.node == FUZZER for d in rig.letters)


# -- against real processes and a real broker -----------------------------------------------------
E2E_MESSAGES = 30  # per topic, before those that happen to decode are left out
E2E_FORGED = 3     # per inbox: well-formed, but claiming to come from ECS


def e2e_payloads(seed: int, src: str, dest: str, count: int) -> list[bytes]:
    """Random and mutated messages, none of which decodes (bounded and reproducible)."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        kind = rng.choice(ALL)
        required = [f.encode_name for f in msgspec.structs.fields(kind) if f.required]
        body: dict[str, Any] = {"type": kind.__name__ if required else rng.choice(["", "Unknown", "ping", 3, None])}
        body.update({name: rng.choice([7, -1, 2**64 - 1, None, [1, [2]], {"x": 1}, "x" * 300]) for name in required})
        env: dict[str, Any] = {"src": src, "dest": dest, "msg_id": rng.getrandbits(48), "body": body}
        raw = msgpack.packb(env)
        choice = i % 6
        if choice == 0:  # random bytes
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
        elif choice == 1:  # truncated
            out.append(raw[:rng.randint(0, len(raw) - 1)])
        elif choice == 2:  # bit flips
            flipped = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        elif choice == 3:  # deeply nested junk inside the body
            body["Junk"] = marker = "\x00deep\x00"
            out.append(msgpack.packb(env).replace(msgpack.packb(marker), _nested(rng.randint(1_000, 20_000)), 1))
        elif choice == 4:  # beyond the codec's cap
            out.append(raw + b"\x00" * (codec.MAX_MESSAGE_BYTES + 1 - len(raw)))
        else:  # wrong field types, unknown tags
            out.append(raw)
    return [p for p in out if decodes(p) is None]


async def test_a_real_cluster_survives_fuzzed_messages_on_every_topic_and_records_them(make_cluster) -> None:  # noqa: ANN001, F811
    cluster = await make_cluster(instances=0)
    make_role(cluster, "Survivor", "AliyunECSReadOnlyAccess")
    cluster.call("ram", "CreateUser", UserName="bob")
    region = cluster.file.region_id
    launched = cluster.call("ecs", "RunInstances", RegionId=region, RamRoleName="Survivor")["InstanceIdSets"]["InstanceIdSet"][0]
    await asyncio.to_thread(metadata_url, cluster, launched)  # running, and its agent serves it
    users_before = cluster.call("ram", "ListUsers")["Users"]
    instances_before = cluster.call("ecs", "DescribeInstances", RegionId=region)["Instances"]["Instance"]

    letters: list[tuple[str, DeadLetter]] = []

    async def collect(topic: str, payload: bytes) -> None:
        letters.append((topic, codec.decode(payload).body))  # type: ignore[arg-type]

    observer = await MqttBus.connect(cluster.broker_url(broker_acl.OBSERVER), "ramsim-fuzz-observer", persistent=False)
    bus = await MqttBus.connect(cluster.file.broker_url, "ramsim-fuzz-operator", persistent=False)  # the operator identity
    nodes = ["ram", "sts", "ecs", "gateway", "oss", AGENT]
    sent: dict[tuple[str, str], int] = {(n, r): 0 for n in nodes for r in ("malformed", "forged")}
    writers: list[MqttBus] = []
    try:
        await observer.subscribe(topics.deadletters(), collect)
        client = await BusClient(bus, broker_acl.OPERATOR, ScaledClock()).start()
        for seed, node in enumerate(nodes):
            inbox = topics.inbox(node, broker_acl.OPERATOR)
            for payload in e2e_payloads(seed, broker_acl.OPERATOR, node, E2E_MESSAGES):
                await bus.publish(inbox, payload)
                sent[(node, "malformed")] += 1
            for msg_id in range(E2E_FORGED):
                await bus.publish(inbox, codec.encode(Envelope(src="ecs", dest=node, msg_id=msg_id, body=Ping())))
                sent[(node, "forged")] += 1
        # the topics only one identity may write (anyone else's publish the broker drops): RAM's events, a host's instances
        for identity, topic, readers in (("ram", topics.event("ram", "PolicyAttachedToRole"), ["ecs", "oss"]),
                                         ("ecs", topics.instance(HOST, launched), [AGENT])):
            writer = await MqttBus.connect(cluster.broker_url(identity), f"ramsim-fuzz-{identity}", persistent=False)
            writers.append(writer)  # kept open until the end: closing at once could cut off what is still in flight
            for payload in e2e_payloads(len(identity), identity, "*", E2E_MESSAGES):
                await writer.publish(topic, payload)
                for reader in readers:
                    sent[(reader, "malformed")] += 1
        for node in nodes:  # everyone is still up
            assert isinstance(await client.request(node, Ping(), timeout=10), PingOk), node

        def recorded() -> dict[tuple[str, str], int]:
            return {key: sum(1 for _, d in letters if (d.node, d.reason) == key) for key in sent}

        await until(lambda: recorded() == sent, lambda: f"a dead letter for each message dropped: sent {sent}, recorded {recorded()}",
                    timeout=30)
        assert all(topic == topics.deadletter(d.node) for topic, d in letters)
        mine = [d for _, d in letters if d.node in nodes]
        assert all(d.field and d.detail and d.size and len(d.sha256) == 64 for d in mine if d.reason == "malformed")
        assert {(d.src, d.body) for d in mine if d.reason == "forged"} == {("ecs", "Ping")}
        # the operator's own client recorded the answers to messages it never sent (the malformed ones with a readable sender)
        assert [d for _, d in letters if d.node == broker_acl.OPERATOR and d.reason == "unexpected_reply"]
    finally:
        for closing in (*writers, bus, observer):
            await closing.close()
    # nothing changed, and the services serve
    assert cluster.call("ram", "ListUsers")["Users"] == users_before
    assert cluster.call("ecs", "DescribeInstances", RegionId=region)["Instances"]["Instance"] == instances_before
    assert cluster.call("ram", "GetRole", RoleName="Survivor")["Role"]["RoleName"] == "Survivor"
