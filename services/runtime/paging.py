"""Pure core: paging a list as Alibaba's APIs do, behind an opaque marker (RAM's ``Marker``,
ECS's ``NextToken``).

A marker names where the next page starts: the position and the key of the first item not yet
returned. Resuming looks for that key at that position first (one comparison when nothing
changed between pages), then anywhere else in the list (it moved: something before it was
added or removed), so what is still there is neither repeated nor skipped; a marker whose item
is gone resumes at its position.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def marker(position: int, key: str) -> str:
    raw = json.dumps([position, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str) -> tuple[int, str] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and value[0] >= 0
            and isinstance(value[1], str)):
        return None
    return value[0], value[1]


def resume(text: str, items: Sequence[T], key: Callable[[T], str]) -> int | None:
    """Where the page a marker names starts in ``items``, or None if it is no marker of ours."""
    decoded = _decode(text)
    if decoded is None:
        return None
    position, wanted = decoded
    if position < len(items) and key(items[position]) == wanted:
        return position
    moved = next((i for i, item in enumerate(items) if key(item) == wanted), None)
    return moved if moved is not None else min(position, len(items))


def page(items: Sequence[T], key: Callable[[T], str], text: str, size: int) -> tuple[list[T], str] | None:
    """The ``size`` items from where ``text`` (a marker, or "" for the start) points, and the
    marker of the rest ("" when nothing is left). None if ``text`` is no marker of ours."""
    start = 0
    if text:
        found = resume(text, items, key)
        if found is None:
            return None
        start = found
    end = min(start + size, len(items))
    return list(items[start:end]), marker(end, key(items[end])) if end < len(items) else ""
