"""I/O shell: the clock. Cores never read it; the shell reads it and hands them ``now``.

Every process of a cluster shares ``origin`` (the cluster's start, wall epoch seconds) and
``scale``, so all agree on simulated time: ``now = origin + (wall - origin) * scale``. With
scale 1 simulated time is wall time; with ``--time-scale 60`` an hour passes per real minute.
The discrete-event simulator uses its own virtual clock with the same two methods.

An experiment may skew one node's clock live (:mod:`services.runtime.chaos` sets ``skew``,
simulated seconds added to what it reads), and a metadata agent's view of one instance
(``offsets``: instance id -> seconds, read by its HTTP shell). Both are 0 otherwise.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Simulated time, epoch seconds."""

    def real_seconds(self, simulated: float) -> float:
        """How long to wait in real time for ``simulated`` seconds to pass."""


class ScaledClock:
    def __init__(self, scale: float = 1.0, origin: float | None = None) -> None:
        if scale <= 0:
            raise ValueError(f"time scale must be > 0, got {scale}")
        self.scale = scale
        self.origin = time.time() if origin is None else origin
        self.skew = 0.0  # a clock-skew fault on this node: simulated seconds ahead (negative: behind)
        self.offsets: dict[str, float] = {}  # a skewed clock of one subject this node serves (an instance)

    def now(self) -> float:
        return self.origin + (time.time() - self.origin) * self.scale + self.skew

    def real_seconds(self, simulated: float) -> float:
        return max(0.0, simulated / self.scale)


def WallClock() -> ScaledClock:  # noqa: N802 - a named face of the one clock
    return ScaledClock(1.0)
