"""I/O shell: OSS storage under the state directory: object bodies as files, metadata in SQLite.

Layout: ``<root>/meta.sqlite3`` (WAL) with tables ``buckets`` and ``objects``;
``<root>/blobs/<id>`` one file per stored object body; ``<root>/tmp/`` uploads in progress.
An upload is written to ``tmp/``, fsynced, renamed into ``blobs/`` and only then recorded in
SQLite, so a failed or interrupted upload leaves no object (and the old one, if any, intact).
A blob no row points to (a crash between rename and commit) is removed at the next start.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

CHUNK = 256 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, created_at REAL NOT NULL, storage_class TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    content_type TEXT NOT NULL, last_modified REAL NOT NULL, meta TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Bucket:
    name: str
    created_at: float
    storage_class: str


@dataclass(frozen=True)
class Object:
    bucket: str
    key: str
    blob: str
    size: int
    etag: str  # hex MD5
    content_type: str
    last_modified: float
    meta: dict[str, str]


class TooLarge(Exception):
    """The body exceeded the limit."""


class Incomplete(Exception):
    """The body ended before its Content-Length."""


class BadDigest(Exception):
    """The body's MD5 is not the Content-MD5 the client sent."""


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        for d in (self.blobs, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "meta.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._recover()

    def close(self) -> None:
        self.db.close()

    def _recover(self) -> None:
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        known = {row[0] for row in self.db.execute("SELECT blob FROM objects")}
        for blob in self.blobs.iterdir():
            if blob.name not in known:
                blob.unlink(missing_ok=True)

    # -- buckets -----------------------------------------------------------------------------
    def create_bucket(self, name: str, now: float, storage_class: str) -> bool:
        try:
            self.db.execute("INSERT INTO buckets VALUES (?, ?, ?)", (name, now, storage_class))
            return True
        except sqlite3.IntegrityError:
            return False

    def bucket(self, name: str) -> Bucket | None:
        row = self.db.execute("SELECT name, created_at, storage_class FROM buckets WHERE name = ?", (name,)).fetchone()
        return Bucket(*row) if row else None

    def buckets(self, prefix: str, after: str, limit: int) -> list[Bucket]:
        rows = self.db.execute("SELECT name, created_at, storage_class FROM buckets WHERE name > ? AND name >= ? "
                               "ORDER BY name LIMIT ?", (after, prefix, limit * 4 + 1)).fetchall()
        return [Bucket(*r) for r in rows if r[0].startswith(prefix)]

    def delete_bucket(self, name: str) -> str:
        """'ok', 'missing' or 'not_empty'."""
        with self._tx():
            if self.bucket(name) is None:
                return "missing"
            if self.db.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                return "not_empty"
            self.db.execute("DELETE FROM buckets WHERE name = ?", (name,))
            return "ok"

    # -- objects -----------------------------------------------------------------------------
    def object(self, bucket: str, key: str) -> Object | None:
        row = self.db.execute("SELECT bucket, key, blob, size, etag, content_type, last_modified, meta FROM objects "
                              "WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
        return _object(row) if row else None

    def objects(self, bucket: str, prefix: str, after: str) -> Iterator[Object]:
        """Objects with ``key > after`` starting with ``prefix``, in key order (binary, as OSS)."""
        cursor = self.db.execute("SELECT bucket, key, blob, size, etag, content_type, last_modified, meta FROM objects "
                                 "WHERE bucket = ? AND key > ? AND key >= ? ORDER BY key", (bucket, after, prefix))
        for row in cursor:
            if not row[1].startswith(prefix):
                return
            yield _object(row)

    def path(self, obj: Object) -> Path:
        return self.blobs / obj.blob

    async def put(self, bucket: str, key: str, chunks: AsyncIterator[bytes], *, expected: int | None, limit: int,
                  content_type: str, meta: dict[str, str], now: float, content_md5: str | None = None) -> Object:
        """Stream ``chunks`` to a new blob and record it; raises TooLarge / Incomplete / BadDigest (leaving nothing)."""
        blob = uuid.uuid4().hex
        tmp = self.tmp / blob
        md5, size = hashlib.md5(), 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge()
                    md5.update(chunk)
                    out.write(chunk)
                if expected is not None and size != expected:
                    raise Incomplete()
                if content_md5 is not None and base64.b64encode(md5.digest()).decode() != content_md5:
                    raise BadDigest()
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            return self._commit(tmp, blob, bucket, key, size, md5.hexdigest(), content_type, meta, now)
        finally:
            tmp.unlink(missing_ok=True)

    async def copy(self, source: Object, bucket: str, key: str, *, content_type: str, meta: dict[str, str], now: float) -> Object:
        blob = uuid.uuid4().hex
        tmp = self.tmp / blob
        try:
            await asyncio.to_thread(self._copy_file, self.path(source), tmp)
            return self._commit(tmp, blob, bucket, key, source.size, source.etag, content_type, meta, now)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _copy_file(src: Path, dst: Path) -> None:
        with open(src, "rb") as i, open(dst, "wb") as o:
            shutil.copyfileobj(i, o, CHUNK)
            o.flush()
            os.fsync(o.fileno())

    def _commit(self, tmp: Path, blob: str, bucket: str, key: str, size: int, etag: str, content_type: str,
                meta: dict[str, str], now: float) -> Object:
        final = self.blobs / blob
        os.replace(tmp, final)
        self._fsync_dir(self.blobs)
        old = None
        try:
            with self._tx():
                if self.bucket(bucket) is None:
                    raise KeyError(bucket)
                old = self.object(bucket, key)
                self.db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (bucket, key, blob, size, etag, content_type, now, json.dumps(meta)))
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        if old is not None:
            (self.blobs / old.blob).unlink(missing_ok=True)
        return Object(bucket, key, blob, size, etag, content_type, now, meta)

    def delete(self, bucket: str, key: str) -> None:
        with self._tx():
            old = self.object(bucket, key)
            self.db.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
        if old is not None:
            (self.blobs / old.blob).unlink(missing_ok=True)

    # -- plumbing ----------------------------------------------------------------------------
    def _tx(self) -> "_Transaction":
        return _Transaction(self.db)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _object(row: tuple) -> Object:
    return Object(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]))
