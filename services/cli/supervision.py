"""Pure core: when ``ramsim up`` restarts a child that exited, and when it gives up.

A child (a service, a metadata agent, Mosquitto) that exits while the cluster runs is started
again after a delay that doubles with each restart in a row (0.2 s, 0.4 s, … up to 10 s), so a
child that cannot start does not spin, while one killed once is back at once. A child that
stayed up :attr:`RestartPolicy.stable_after` seconds was healthy: its next restart starts the
doubling over. More than :attr:`RestartPolicy.loop_limit` exits of one child within
:attr:`RestartPolicy.loop_window` seconds is a crash loop that restarting will not cure: the
supervisor gives up and ``ramsim up`` stops the cluster with an error.

Everything here is told the time (monotonic seconds) and returns what to do, so the schedule
is tested without processes; :mod:`services.cli.up` does the waiting and the spawning.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DOUBLINGS = 32  # 0.2 s * 2**32 is far past any cap; keeps the power a small number


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.2     # seconds before the first restart in a row
    max_delay: float = 10.0      # the doubling stops here
    stable_after: float = 30.0   # up this long: healthy again, the doubling starts over
    loop_limit: int = 5          # more exits than this within loop_window is a crash loop
    loop_window: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based) of a run of restarts."""
        return min(self.max_delay, self.first_delay * 2 ** min(max(attempt - 1, 0), MAX_DOUBLINGS))


@dataclass(frozen=True)
class History:
    """What the policy remembers of one child between its exits."""

    attempt: int = 0                  # restarts in a row since the child last stayed up stable_after
    exits: tuple[float, ...] = ()     # when it exited, those still within loop_window


@dataclass(frozen=True)
class Restart:
    """Start the child again after ``delay`` seconds; this is restart ``attempt`` in a row."""

    delay: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    """A crash loop: ``exits`` exits within ``window`` seconds. Stop the cluster."""

    exits: int
    window: float


def on_exit(policy: RestartPolicy, history: History, *, started_at: float, exited_at: float) -> tuple[Restart | GiveUp, History]:
    """A child started at ``started_at`` exited at ``exited_at``: what to do, and the new history."""
    attempt = 0 if exited_at - started_at >= policy.stable_after else history.attempt
    exits = tuple(t for t in history.exits if exited_at - t < policy.loop_window) + (exited_at,)
    if len(exits) > policy.loop_limit:
        return GiveUp(len(exits), policy.loop_window), History(attempt, exits)
    attempt += 1
    return Restart(policy.delay(attempt), attempt), History(attempt, exits)
