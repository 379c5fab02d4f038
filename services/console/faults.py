"""I/O shell: live faults from the web console, through :class:`services.experiment.inject.Injector`.

The console is a child of ``ramsim up``, not its parent, so it holds no
:class:`services.cli.up.Cluster`: :class:`ClusterView` stands in for one, built from the cluster
file (the children's pids, which ``ramsim up`` rewrites whenever its supervisor restarts one,
and the operator's broker URL). A restart is seen as a pid that changed. Process faults
(pause: SIGSTOP until healed; kill: kill -9, healed once the supervisor started it again and
every node answers) signal the pid; message faults (drop or delay a message type) are the
operator's ``control/<node>`` messages, as experiments send them. Link faults need a proxy
that only ``ramsim up --proxy`` makes, in its own process: the console does not offer them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.cli import broker, cluster
from services.cli.cluster import ClusterFile

SELF = "console"
KINDS = ("pause", "kill", "drop", "delay")


class FaultError(ValueError):
    """A fault the console cannot inject (says why)."""


@dataclass
class _Proc:
    pid: int

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


@dataclass
class _Child:
    name: str
    view: "ClusterView"

    @property
    def pid(self) -> int:
        return self.view.pids().get(self.name, 0)

    @property
    def proc(self) -> _Proc:
        return _Proc(self.pid)


class _Restarts(dict):  # type: ignore[type-arg]
    """``Cluster.restarts`` as seen from outside: how often each child's pid changed."""

    def __init__(self, view: "ClusterView") -> None:
        super().__init__()
        self.view = view

    def get(self, name: str, default: int = 0) -> int:  # type: ignore[override]
        self.view.pids()
        return self.view.changes.get(name, default)


@dataclass
class ClusterView:
    """What :class:`~services.experiment.inject.Injector` needs of a ``Cluster``, read from the cluster file."""

    path: Path
    changes: dict[str, int] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)
    _file: ClusterFile | None = None
    _mtime: float = -1.0
    proxies: dict[str, Any] = field(default_factory=dict)  # no link faults from the console

    def __post_init__(self) -> None:
        self.restarts = _Restarts(self)

    @property
    def file(self) -> ClusterFile:
        self.pids()
        if self._file is None:
            raise FaultError(f"no cluster file at {self.path} yet")
        return self._file

    def pids(self) -> dict[str, int]:
        """The children's pids (re-read when the file changed), counting each change as a restart."""
        with contextlib.suppress(OSError, cluster.NoCluster):
            mtime = self.path.stat().st_mtime
            if mtime != self._mtime:
                self._file, self._mtime = cluster.load(self.path), mtime
                for name, pid in self._file.services.items():
                    if name in self._last and self._last[name] != pid:
                        self.changes[name] = self.changes.get(name, 0) + 1
                    self._last[name] = pid
        return dict(self._last)

    @property
    def processes(self) -> list[_Child]:
        return [_Child(name, self) for name in self.pids() if name != SELF]  # the console answers no Ping the injector waits for

    def process(self, name: str) -> _Child:
        if name not in self.pids():
            raise FaultError(f"no process {name!r} in this cluster")
        return _Child(name, self)

    def broker_url(self, identity: str = broker.OPERATOR) -> str:
        if identity != broker.OPERATOR:
            raise FaultError("the console joins the bus only as the operator")
        return self.file.broker_url


class ConsoleFaults:
    """The faults injected from the console, by id; each one healed from the page (or at exit)."""

    def __init__(self, path: Path) -> None:
        self.view = ClusterView(path)
        self.injector: Any = None
        self.faults: dict[str, dict[str, Any]] = {}
        self.counter = 0
        self.lock = asyncio.Lock()

    def targets(self) -> list[str]:
        return sorted(n for n in self.view.pids() if n != SELF)

    async def _injector(self) -> Any:
        if self.injector is None:
            from services.experiment.inject import Injector  # the experiment machinery, only once a fault is asked for

            self.injector = await Injector(self.view, seed=int(time.time())).__aenter__()  # type: ignore[arg-type]
        return self.injector

    async def inject(self, kind: str, target: str, types: list[str], probability: float, delay: float) -> dict[str, Any]:
        if kind not in KINDS:
            raise FaultError(f"unknown fault {kind!r}; choose one of {', '.join(KINDS)}")
        if kind in ("pause", "kill") and target not in self.targets():
            raise FaultError(f"no process {target!r}; choose one of {', '.join(self.targets())}")
        if kind == "pause" and target == "mosquitto":
            raise FaultError("pausing the broker would also stop the console's own feed; kill it instead (it is restarted)")
        if kind in ("drop", "delay") and not types:
            raise FaultError("a message fault names the message types it applies to (e.g. InstanceChanged)")
        async with self.lock:
            injector = await self._injector()
            self.counter += 1
            fault_id = f"console-{self.counter}"
            nodes = None if target in ("", "*") else [target]
            if kind == "pause":
                await injector.pause(fault_id, target)
            elif kind == "kill":
                await injector.kill(fault_id, target)
            elif kind == "drop":
                await injector.message(fault_id, nodes=nodes, types=types, drop=max(0.0, min(1.0, probability)))
            else:
                await injector.message(fault_id, nodes=nodes, types=types, delay=max(0.0, min(30.0, delay)))
            entry = {"Id": fault_id, "Kind": kind, "Target": target or "*", "Types": types, "Probability": probability,
                     "Delay": delay, "Since": time.time()}
            self.faults[fault_id] = entry
        if kind == "kill":  # the supervisor restarts it: heal (wait until it is back) without being asked
            asyncio.get_running_loop().create_task(self._heal_later(fault_id), name=f"console:heal:{fault_id}")
        return entry

    async def _heal_later(self, fault_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.heal(fault_id)

    async def heal(self, fault_id: str) -> bool:
        if fault_id not in self.faults:
            return False
        await self.injector.heal(fault_id)
        self.faults.pop(fault_id, None)
        return True

    def active(self) -> list[dict[str, Any]]:
        return list(self.faults.values())

    async def close(self) -> None:
        if self.injector is not None:
            with contextlib.suppress(Exception):
                await self.injector.__aexit__(None, None, None)  # heals what is still active: never leave a service stopped

