"""Pure protocol: Alibaba's timestamp format, ``YYYY-MM-DDThh:mm:ssZ`` (UTC, no fraction)."""

from __future__ import annotations

import datetime as _dt
import functools
import re

FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")


def iso(epoch: float) -> str:
    return _iso(int(epoch))


@functools.lru_cache(maxsize=8192)
def _iso(second: int) -> str:  # a refresh wave stamps thousands of credentials with the same few seconds
    return _dt.datetime.fromtimestamp(second, _dt.timezone.utc).strftime(FORMAT)


def parse_iso(text: str) -> float:
    """Inverse of :func:`iso`; raises ValueError on anything else. (A regular expression and the
    datetime constructor, which checks the ranges: strptime took most of a refresh's time.)"""
    if not isinstance(text, str):
        raise ValueError(f"time data {text!r} does not match format {FORMAT!r}")
    return _parse(text)


@functools.lru_cache(maxsize=8192)
def _parse(text: str) -> float:  # (a refresh wave's expirations share a few seconds; an error is not cached)
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueError(f"time data {text!r} does not match format {FORMAT!r}")
    year, month, day, hour, minute, second = map(int, match.groups())
    return _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.timezone.utc).timestamp()
