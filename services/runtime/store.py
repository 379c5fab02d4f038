"""I/O shell: a service's durable state: one SQLite file per node (``<state_dir>/<node>.db``).

Three tables, one transaction per core step that changed anything:

* ``rows (tbl, key, value)``: the core's state as rows (what :meth:`Durable.dump` returns,
  msgpack-encoded); a step writes only the rows whose bytes changed, and deletes the rows
  that disappeared.
* ``outbox (id, topic, payload)``: the exact bytes of every message a state change causes
  (events, pushes, the reply), written in the same transaction as the change and published
  after the commit. A crash between the two neither loses nor invents a message: at the next
  start what is still in the outbox is published again (at-least-once; receivers are idempotent).
* ``replies (src, msg_id, topic, payload)``: the reply to each request that changed state, so
  a redelivered request (QoS 1 after a crash before the PUBACK) gets the same answer instead of
  running twice. A window of the newest :data:`DEDUPE_WINDOW` is kept.

WAL with ``synchronous=NORMAL``: a committed transaction survives ``kill -9`` of the process
(it is in the WAL file, in the OS's cache); only a power loss can take the last few. The schema
carries a version (``PRAGMA user_version``) and :data:`MIGRATIONS` upgrades old files in order.

Rows of sealed tables (secrets: AccessKey secrets, STS credentials) are encrypted with
AES-GCM under the node's state key (``RAMSIM_STATE_KEY``), bound to their table and key; so
are every outbox message and kept reply, which may carry the same secrets (a new AccessKey's
reply, an instance's view with its credential).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import structlog
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = structlog.get_logger("store")

DEDUPE_WINDOW = 10_000

# MIGRATIONS[n] upgrades a file at user_version n-1 to n. Append; never edit a released step.
MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        "CREATE TABLE rows (tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID",
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL)",
        "CREATE TABLE replies (seq INTEGER PRIMARY KEY AUTOINCREMENT, src TEXT NOT NULL, msg_id INTEGER NOT NULL,"
        " topic TEXT NOT NULL, payload BLOB NOT NULL)",
        "CREATE UNIQUE INDEX replies_by_request ON replies (src, msg_id)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)
MESSAGES = "messages"  # the sealing context of outbox messages and kept replies (they may carry secrets)


class StoreError(Exception):
    """The state file cannot be used (newer schema, wrong state key, corrupt)."""


Changes = dict[str, dict[str, bytes | None]]  # table -> key -> new bytes (None: deleted)


class Store:
    def __init__(self, path: Path | str, *, key: bytes | None = None, sealed: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._aead = AESGCM(key) if key else None
        self.sealed = frozenset(sealed) | {MESSAGES}
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.commits = 0
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this ramsim knows up to {SCHEMA_VERSION}")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in MIGRATIONS[step]:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={step}")
            log.info("store_migrated", path=str(self.path), version=step)

    def _transaction(self) -> "_Transaction":
        return _Transaction(self.db)

    # -- sealing ----------------------------------------------------------------------------
    def _seal(self, table: str, key: str, value: bytes) -> bytes:
        if self._aead is None or table not in self.sealed:
            return value
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, value, f"{table}/{key}".encode())

    def _open(self, table: str, key: str, value: bytes) -> bytes:
        if self._aead is None or table not in self.sealed:
            return value
        try:
            return self._aead.decrypt(value[:12], value[12:], f"{table}/{key}".encode())
        except Exception:
            raise StoreError(f"{self.path}: {table}/{key} does not open with this state key (RAMSIM_STATE_KEY changed?)") from None

    # -- reading at start -----------------------------------------------------------------
    def rows(self) -> dict[str, dict[str, bytes]]:
        tables: dict[str, dict[str, bytes]] = {}
        for table, key, value in self.db.execute("SELECT tbl, key, value FROM rows"):
            tables.setdefault(table, {})[key] = self._open(table, key, value)
        return tables

    def outbox(self) -> list[tuple[int, str, bytes]]:
        return [(i, topic, self._open(MESSAGES, topic, payload))
                for i, topic, payload in self.db.execute("SELECT id, topic, payload FROM outbox ORDER BY id")]

    def replies(self) -> dict[tuple[str, int], tuple[str, bytes]]:
        return {(src, msg_id): (topic, self._open(MESSAGES, topic, payload)) for src, msg_id, topic, payload in
                self.db.execute("SELECT src, msg_id, topic, payload FROM replies ORDER BY seq")}

    # -- one step -------------------------------------------------------------------------
    def commit(self, changes: Changes, outbox: Sequence[tuple[str, bytes]] = (),
               replies: Sequence[tuple[str, int, str, bytes]] = (), sent: Sequence[int] = ()) -> list[int]:
        """In one transaction: apply ``changes``, queue ``outbox`` (returning its ids), keep
        ``replies`` for dedupe and forget the outbox rows ``sent`` earlier."""
        with self._transaction():
            # executemany: a step of a 100-instance batch writes ~100 rows and ~200 outbox messages
            self.db.executemany("DELETE FROM rows WHERE tbl = ? AND key = ?",
                                [(table, key) for table, rows in changes.items() for key, value in rows.items() if value is None])
            self.db.executemany("INSERT OR REPLACE INTO rows (tbl, key, value) VALUES (?, ?, ?)",
                                [(table, key, self._seal(table, key, value)) for table, rows in changes.items()
                                 for key, value in rows.items() if value is not None])
            ids: list[int] = []
            if outbox:
                self.db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)",
                                    [(topic, self._seal(MESSAGES, topic, payload)) for topic, payload in outbox])
                # AUTOINCREMENT ids, one writer (BEGIN IMMEDIATE): this statement's rows are the last len(outbox)
                last = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0]
                ids = list(range(last - len(outbox) + 1, last + 1))
            for src, msg_id, topic, payload in replies:
                self.db.execute("INSERT OR REPLACE INTO replies (src, msg_id, topic, payload) VALUES (?, ?, ?, ?)",
                                (src, msg_id, topic, self._seal(MESSAGES, topic, payload)))
            if replies:
                self.db.execute("DELETE FROM replies WHERE seq <= (SELECT MAX(seq) FROM replies) - ?", (DEDUPE_WINDOW,))
            self._forget(sent)
        self.commits += 1
        return ids

    def sent(self, ids: Sequence[int]) -> None:
        """Forget published outbox rows now (at shutdown; otherwise the next commit does it)."""
        if ids:
            with self._transaction():
                self._forget(ids)

    def _forget(self, ids: Sequence[int]) -> None:
        if ids:
            self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])

    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
