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


class Counted(list):
    """A list that counts the items read through it."""

    reads = 0

    def __getitem__(self, index):  # noqa: ANN001, ANN204
        found = super().__getitem__(index)
        Counted.reads += len(found) if isinstance(index, slice) else 1
        return found


def test_a_page_reads_only_its_page() -> None:
    items = Counted(f"i-{n:05d}" for n in range(10_000))
    _, marker = paging.page(items, ident, "", 100)
    for _ in range(50):  # deep into the list
        _, marker = paging.page(items, ident, marker, 100)
    Counted.reads = 0
    chunk, _ = paging.page(items, ident, marker, 100)
    assert chunk[0] == "i-05100" and Counted.reads <= 102  # the page, its first key and the next page's
