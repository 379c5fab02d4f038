"""Pure protocol: Alibaba's timestamp format, ``YYYY-MM-DDThh:mm:ssZ`` (UTC, no fraction)."""

from __future__ import annotations

import datetime as _dt

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(epoch: float) -> str:
    return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc).strftime(FORMAT)


def parse_iso(text: str) -> float:
    """Inverse of :func:`iso`; raises ValueError on anything else."""
    return _dt.datetime.strptime(text, FORMAT).replace(tzinfo=_dt.timezone.utc).timestamp()
