"""The OSS store: durable, and nothing half-written when an upload fails."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AsyncIterator

import pytest

from services.oss.store import BadDigest, Incomplete, Store, TooLarge


async def _body(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _broken(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p
    raise ConnectionResetError("client went away")


def _files(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs.iterdir()) + sorted(p.name for p in store.tmp.iterdir())


async def test_put_get_overwrite_delete_and_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.create_bucket("b-1", 1.0, "Standard") and not store.create_bucket("b-1", 2.0, "Standard")
    first = await store.put("b-1", "k", _body(b"hello ", b"world"), expected=11, limit=100, content_type="text/plain",
                            meta={"x-oss-meta-a": "1"}, now=5.0)
    assert first.etag == hashlib.md5(b"hello world").hexdigest() and store.path(first).read_bytes() == b"hello world"
    second = await store.put("b-1", "k", _body(b"v2"), expected=2, limit=100, content_type="text/plain", meta={}, now=6.0)
    assert _files(store) == [second.blob]  # the old body is gone
    assert store.delete_bucket("b-1") == "not_empty"
    store.close()
    again = Store(tmp_path)
    got = again.object("b-1", "k")
    assert got is not None and got.size == 2 and again.path(got).read_bytes() == b"v2"
    again.delete("b-1", "k")
    assert again.object("b-1", "k") is None and _files(again) == []
    assert again.delete_bucket("b-1") == "ok" and again.delete_bucket("b-1") == "missing"


@pytest.mark.parametrize("body,expected,limit,md5,error", [
    (lambda: _body(b"abc"), 10, 100, None, Incomplete),
    (lambda: _body(b"x" * 50, b"x" * 60), None, 100, None, TooLarge),
    (lambda: _broken(b"abc"), 10, 100, None, ConnectionResetError),
    (lambda: _body(b"abc"), 3, 100, "AAAAAAAAAAAAAAAAAAAAAA==", BadDigest),
])
async def test_failed_upload_leaves_nothing_and_keeps_the_old_object(tmp_path: Path, body, expected, limit, md5, error) -> None:  # noqa: ANN001
    store = Store(tmp_path)
    store.create_bucket("b-1", 1.0, "Standard")
    old = await store.put("b-1", "k", _body(b"old"), expected=3, limit=100, content_type="t", meta={}, now=1.0)
    with pytest.raises(error):
        await store.put("b-1", "k", body(), expected=expected, limit=limit, content_type="t", meta={}, now=2.0, content_md5=md5)
    assert store.object("b-1", "k") == old and _files(store) == [old.blob]


def test_orphans_are_removed_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    (store.blobs / "orphan").write_bytes(b"x")
    (store.tmp / "partial").write_bytes(b"x")
    store.close()
    assert _files(Store(tmp_path)) == []


async def test_listing_is_in_binary_key_order(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_bucket("b-1", 1.0, "Standard")
    for key in ("b", "a/2", "a/1", "é", "Z"):
        await store.put("b-1", key, _body(b"."), expected=1, limit=10, content_type="t", meta={}, now=1.0)
    assert [o.key for o in store.objects("b-1", "", "")] == ["Z", "a/1", "a/2", "b", "é"]
    assert [o.key for o in store.objects("b-1", "a/", "a/1")] == ["a/2"]
