"""Opaque markers: resume where the last page ended, even when the list changed in between."""

from __future__ import annotations

from hypothesis import given, strategies as st

from services.runtime import paging


def ident(x: str) -> str:
    return x


def walk(items: list[str], size: int) -> list[str]:
    seen, marker = [], ""
    while True:
        chunk, marker = paging.page(items, ident, marker, size)  # type: ignore[misc]
        seen += chunk
        if not marker:
            return seen


@given(st.lists(st.text(min_size=1), unique=True, max_size=40), st.integers(1, 7))
def test_a_walk_returns_every_item_once(items: list[str], size: int) -> None:
    assert walk(items, size) == items


def test_changes_between_pages() -> None:
    items = ["a", "b", "c", "d", "e"]
    _, marker = paging.page(items, ident, "", 2)
    assert paging.page(items[1:], ident, marker, 2) == (["c", "d"], paging.marker(3, "e"))  # moved: found again
    assert paging.page(["a", "b", "d", "e"], ident, marker, 9) == (["d", "e"], "")  # gone: resume at its place
    assert paging.page(items, ident, "not-ours", 2) is None and paging.page(items, ident, "Wy0xLCJhIl0", 2) is None
    assert paging.page([], ident, "", 5) == ([], "")
