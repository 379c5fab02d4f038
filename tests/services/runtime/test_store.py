"""Durable state: the SQLite store, and the driver that commits each step before its messages leave.

The driver tests run RAM's real core over the in-memory bus on a real SQLite file, and "crash"
by dropping the driver and core without any shutdown, then build new ones on the same file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import AsyncIterator

import pytest

from protocol import codec, topics
from protocol.envelope import Envelope
from protocol.messages import ram as m
from protocol.messages.common import Ping, PingOk
from services.ram.core import RamCore
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.driver import Driver
from services.runtime.entropy import SeededEntropy
from services.runtime.memory_bus import MemoryBroker
from services.runtime.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from tests.helpers import ACCOUNT, root

KEY = bytes(range(32))


# -- the store ------------------------------------------------------------------------------
def test_a_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.rows() == {} and store.outbox() == [] and store.replies() == {}


def test_a_file_from_a_newer_ramsim_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "n.db").close()
    db = sqlite3.connect(tmp_path / "n.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(tmp_path / "n.db")


def test_migrations_run_in_order_from_an_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(tmp_path / "n.db").close()
    later = {**MIGRATIONS, SCHEMA_VERSION + 1: ("ALTER TABLE rows ADD COLUMN note TEXT NOT NULL DEFAULT ''",)}
    monkeypatch.setattr("services.runtime.store.MIGRATIONS", later)
    monkeypatch.setattr("services.runtime.store.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store = Store(tmp_path / "n.db")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "note" in [c[1] for c in store.db.execute("PRAGMA table_info(rows)")]


def test_commit_writes_rows_outbox_and_replies_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db")
    [first] = store.commit({"t": {"a": b"1", "b": b"2"}}, [("topic/x", b"event")], [("gateway", 7, "topic/r", b"reply")])
    store.commit({"t": {"b": None}}, sent=[first])
    again = Store(tmp_path / "n.db")
    assert again.rows() == {"t": {"a": b"1"}}
    assert again.outbox() == []
    assert again.replies() == {("gateway", 7): ("topic/r", b"reply")}


def test_outbox_ids_returned_are_the_rows_written_batch_after_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db")
    first = store.commit({"t": {"a": b"1", "b": b"2"}}, [("x/1", b"p1"), ("x/2", b"p2"), ("x/3", b"p3")])
    assert [i for i, _, _ in store.outbox()] == first and len(set(first)) == 3
    second = store.commit({"t": {"a": None}}, [("x/4", b"p4")], sent=first[:2])  # forgetting does not reuse ids
    assert [(i, t) for i, t, _ in store.outbox()] == [(first[2], "x/3"), (second[0], "x/4")] and second[0] > first[2]
    assert store.commit({}, []) == [] and store.rows() == {"t": {"b": b"2"}}
    store.close()


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db")
    store.commit({"t": {"a": b"1"}})
    with pytest.raises(sqlite3.Error):
        store.commit({"t": {"a": b"2"}}, [("topic", None)])  # type: ignore[list-item]  # NOT NULL payload: the step fails
    assert Store(tmp_path / "n.db").rows() == {"t": {"a": b"1"}}


def test_sealed_rows_are_encrypted_and_bound_to_their_place(tmp_path: Path) -> None:
    store = Store(tmp_path / "n.db", key=KEY, sealed={"keys"})
    store.commit({"keys": {"LTAI1": b"the-secret"}, "plain": {"x": b"visible"}})
    raw = dict(((t, k), v) for t, k, v in store.db.execute("SELECT tbl, key, value FROM rows"))
    assert b"the-secret" not in raw[("keys", "LTAI1")] and raw[("plain", "x")] == b"visible"
    assert Store(tmp_path / "n.db", key=KEY, sealed={"keys"}).rows()["keys"] == {"LTAI1": b"the-secret"}
    with pytest.raises(StoreError, match="state key"):
        Store(tmp_path / "n.db", key=bytes(32), sealed={"keys"}).rows()
    store.db.execute("UPDATE rows SET key = 'LTAI2' WHERE tbl = 'keys'")  # moved to another key: refused
    with pytest.raises(StoreError):
        Store(tmp_path / "n.db", key=KEY, sealed={"keys"}).rows()


def test_the_dedupe_window_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.runtime.store.DEDUPE_WINDOW", 3)
    store = Store(tmp_path / "n.db")
    for i in range(5):
        store.commit({}, replies=[("gateway", i, "t", b"r")])
    assert sorted(store.replies()) == [("gateway", 2), ("gateway", 3), ("gateway", 4)]


# -- the driver, with RAM's core ----------------------------------------------------------------
class Node:
    """RAM's core and driver on a store file, and a client standing in for the gateway."""

    def __init__(self, path: Path, broker: MemoryBroker) -> None:
        self.path, self.broker = path, broker
        self.clock = ScaledClock(1.0)

    async def start(self) -> "Node":
        self.core = RamCore(account_id=ACCOUNT, root_access_key_id="LTAIroot", root_access_key_secret="s" * 30,
                            entropy=SeededEntropy(3).token_bytes, now=self.clock.now())
        self.store = Store(self.path, key=KEY, sealed=self.core.SEALED)
        self.driver = Driver(self.core, self.broker.client("ram"), self.clock, SeededEntropy(4), store=self.store)
        await self.driver.start()
        self.task = asyncio.create_task(self.driver.run())
        return self

    async def crash(self) -> None:
        """Stop without any shutdown step: what a kill -9 leaves is what is on disk."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.driver.endpoint.bus.close()
        self.store.db.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Node, BusClient, MemoryBroker]]:
    broker = MemoryBroker()
    node = await Node(tmp_path / "ram.db", broker).start()
    client = await BusClient(broker.client("gateway"), "gateway", node.clock).start()
    yield node, client, broker
    node.task.cancel()
    await asyncio.gather(node.task, return_exceptions=True)


async def test_acknowledged_writes_survive_a_crash(rig) -> None:  # noqa: ANN001
    node, client, broker = rig
    assert isinstance(await client.request("ram", m.CreateUser(user_name="alice", caller=root())), m.CreateUserOk)
    key = await client.request("ram", m.CreateAccessKey(user_name="alice", caller=root()))
    assert isinstance(key, m.CreateAccessKeyOk)
    await client.request("ram", m.CreatePolicy(policy_name="p", policy_document='{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:*","Resource":"*"}]}', caller=root()))
    await client.request("ram", m.AttachPolicyToUser(user_name="alice", policy_type="Custom", policy_name="p", caller=root()))
    generation = node.core.dir.generation
    dump = node.core.dump()
    await node.crash()

    again = await Node(node.path, broker).start()
    assert again.core.dump() == dump and again.core.dir.generation == generation
    listed = await client.request("ram", m.ListPoliciesForUser(user_name="alice", caller=root()))
    assert [p.policy_name for p in listed.policies.policy] == ["p"]  # type: ignore[union-attr]
    assert again.core.dir.keys[key.access_key.access_key_id].secret == key.access_key.access_key_secret
    raw = Path(node.path).read_bytes() + Path(f"{node.path}-wal").read_bytes() if Path(f"{node.path}-wal").exists() else Path(node.path).read_bytes()
    assert key.access_key.access_key_secret.encode() not in raw  # sealed at rest


async def test_a_redelivered_request_is_answered_again_not_run_again(rig) -> None:  # noqa: ANN001
    node, client, broker = rig
    env = client.envelope("ram", m.CreateUser(user_name="bob", caller=root()), trace_id="t1")
    answers: list[Envelope] = []
    spy = broker.client("spy")
    await spy.subscribe(topics.inbox("gateway", "ram"), lambda topic, payload: _collect(answers, payload))
    await client.post(env)
    await _until(lambda: len(answers) == 1)
    await node.crash()  # as if the PUBACK never left: the broker delivers the request again
    again = await Node(node.path, broker).start()  # (its outbox still holds the reply: it goes out again too)
    await client.post(env)
    await _until(lambda: again.driver.counters.duplicates == 1 and len(answers) == 3)
    assert all(a == answers[0] for a in answers) and isinstance(answers[0].body, m.CreateUserOk)  # the same reply, byte for byte
    assert list(again.core.dir.users) == ["bob"]


async def test_messages_committed_but_not_published_go_out_at_the_next_start(rig) -> None:  # noqa: ANN001
    node, client, broker = rig
    await node.crash()
    events: list[Envelope] = []
    observer = broker.client("observer")
    await observer.subscribe(topics.events("ram"), lambda topic, payload: _collect(events, payload))
    stranded = Envelope(src="ram", dest="*", msg_id=99, body=m.PolicyAttachedToRole(role_name="r", policy_type="System",
                                                                                  policy_name="p", generation=5))
    [stranded_id] = Store(node.path, key=KEY).commit({}, [(topics.event("ram", "PolicyAttachedToRole"), codec.encode(stranded))])
    again = await Node(node.path, broker).start()
    await _until(lambda: len(events) == 1)
    assert events[0] == stranded
    assert isinstance(await client.request("ram", Ping()), PingOk)
    await client.request("ram", m.CreateUser(user_name="carol", caller=root()))  # the next commit forgets it
    assert stranded_id not in [i for i, _, _ in again.store.outbox()]


async def test_reads_do_not_touch_the_disk(rig) -> None:  # noqa: ANN001
    node, client, _ = rig
    await client.request("ram", m.CreateUser(user_name="dave", caller=root()))
    commits = node.store.commits
    for _ in range(5):
        await client.request("ram", m.GetUser(user_name="dave", caller=root()))
        await client.request("ram", m.CreateUser(user_name="dave", caller=root()))  # refused: nothing to write
    assert node.store.commits == commits


async def _collect(into: list[Envelope], payload: bytes) -> None:
    into.append(codec.decode(payload))


async def _until(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
