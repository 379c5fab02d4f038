"""I/O shell: a TCP proxy between one component and the broker, with toxics set at run time.

``ramsim up --proxy ecs,metadata-host-1`` (``Options.proxies``) starts one :class:`Proxy` per
named child, inside ``ramsim up``'s own event loop, and gives that child a ``RAMSIM_BROKER_URL``
pointing at the proxy's loopback port; the proxy forwards every connection to the broker. An
experiment engine running the cluster in-process changes the link through :meth:`Proxy.set`,
:meth:`Proxy.heal` and :meth:`Proxy.reset` (after Toxiproxy's toxics; kernel netem is not always
available). With no toxic set the bytes go straight through.

What each toxic means (times are real seconds: the engine converts an experiment's simulated
durations with the cluster's time scale):

* ``latency``/``jitter``/``distribution``: every chunk of bytes read from one side is written to
  the other ``latency`` later, plus a jitter drawn from ``uniform`` (±jitter), ``normal`` (σ =
  jitter) or ``pareto`` (a heavy tail: jitter·(Pareto(α=3) − 1), so mostly small, sometimes
  large), never below zero. TCP delivers in order, so a chunk never overtakes the one before it.
* ``loss``: TCP never loses bytes the application sees; a lost segment is sent again after the
  retransmission timeout, and everything behind it waits (head-of-line blocking). So a chunk is
  "lost" with probability ``loss`` and then arrives one RTO late: 200 ms (Linux's minimum RTO),
  doubling with each consecutive loss on that direction (up to 6.4 s), as TCP's backoff does.
* ``bandwidth``: bytes per second per direction (0: unlimited); chunks queue behind each other.
* ``partition``: nothing is delivered either way (bytes are held, as the network holds TCP's
  retransmissions) and a new connection is accepted but not carried to the broker; at the heal
  the held bytes flow, unless a side gave up meanwhile (the MQTT keepalive, 1.5x 60 s).
* ``direction``: ``both`` (default), ``up`` (component -> broker) or ``down`` (broker -> component).
* :meth:`Proxy.reset` closes every connection now with a TCP RST to both sides (the component's
  MQTT client reconnects, through the proxy again).

Every random draw comes from one ``random.Random`` per proxy, seeded with the run's seed and the
proxy's name (:meth:`Proxy.set` reseeds), so one seed draws the same delays for the same chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("proxy")
CHUNK = 65536
MIN_RTO, MAX_RTO = 0.2, 6.4
PARETO_ALPHA = 3.0
DISTRIBUTIONS = ("uniform", "normal", "pareto")
DIRECTIONS = ("both", "up", "down")


@dataclass(frozen=True)
class Toxics:
    """What the link does now (all zero: a plain link)."""

    latency: float = 0.0
    jitter: float = 0.0
    distribution: str = "uniform"
    loss: float = 0.0
    bandwidth: float = 0.0  # bytes per second
    partition: bool = False
    direction: str = "both"

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS or self.direction not in DIRECTIONS:
            raise ValueError(f"distribution is one of {DISTRIBUTIONS}, direction one of {DIRECTIONS}")
        if min(self.latency, self.jitter, self.loss, self.bandwidth) < 0 or self.loss > 1:
            raise ValueError("latency, jitter and bandwidth are >= 0, loss a probability 0..1")

    def acts_on(self, direction: str) -> bool:
        return self.direction in ("both", direction)


@dataclass
class Stats:
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    delayed_chunks: int = 0   # chunks written later than they were read, by a toxic
    lost_chunks: int = 0      # chunks that waited out a retransmission timeout
    resets: int = 0


@dataclass
class _Direction:
    name: str  # "up" | "down"
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    due: float = 0.0        # when the last chunk is written (loop time): the next never earlier
    losses: int = 0         # consecutive losses (the RTO's backoff)


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Proxy:
    def __init__(self, name: str, upstream_port: int, *, host: str = "127.0.0.1", seed: int = 0) -> None:
        self.name, self.host, self.upstream_port = name, host, upstream_port
        self.toxics = Toxics()
        self.stats = Stats()
        self.port = 0
        self._rng = random.Random(f"{seed}:{name}")
        self._open = asyncio.Event()  # set unless partitioned
        self._open.set()
        self._changed = asyncio.Event()  # a toxic changed: waiting chunks look again
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._drop(link, reset=False)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- control ----------------------------------------------------------------------------
    def set(self, toxics: Toxics, *, seed: int | None = None) -> None:
        """From now on the link does ``toxics`` (replacing what it did)."""
        if seed is not None:
            self._rng = random.Random(f"{seed}:{self.name}")
        self.toxics = toxics
        if toxics.partition:
            self._open.clear()
        else:
            self._open.set()
        self._changed.set()
        self._changed = asyncio.Event()
        log.info("link_toxics", proxy=self.name, **{k: v for k, v in vars(toxics).items() if v})

    def heal(self) -> None:
        """A plain link again; bytes a partition held flow now."""
        self.set(Toxics())

    def reset(self) -> int:
        """Close every connection now with a TCP RST to both sides; how many were closed."""
        links = list(self._links)
        for link in links:
            self._drop(link, reset=True)
        self.stats.resets += len(links)
        log.info("link_reset", proxy=self.name, connections=len(links))
        return len(links)

    @property
    def connections(self) -> int:
        return len(self._links)

    # -- connections ------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        self.stats.connections += 1
        try:
            await self._open.wait()  # a partition: the connection goes nowhere until it heals
            try:
                up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                self._drop(link, reset=True)  # the broker is down: refuse as it would
                return
            link.upstream = up_writer
            _nodelay(writer)
            _nodelay(up_writer)
            link.tasks = [asyncio.create_task(self._pump(link, _Direction("up", reader, up_writer))),
                          asyncio.create_task(self._pump(link, _Direction("down", up_reader, writer)))]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._drop(link, reset=False)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        for writer in (link.client, link.upstream):
            if writer is None:
                continue
            if reset:
                _linger_zero(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort() if reset else writer.close()

    async def _pump(self, link: _Link, way: _Direction) -> None:
        """Carry one direction: read a chunk, hold it as the toxics say, write it, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.create_task(self._write(way, queue))
        try:
            while data := await way.reader.read(CHUNK):
                queue.put_nowait((self._due(way, len(data)), data))
            queue.put_nowait((0.0, b""))  # EOF after what is queued
            await writer
        finally:
            writer.cancel()
            self._drop(link, reset=False)

    def _due(self, way: _Direction, size: int) -> float:
        """When a chunk read now may be written (loop time), never before the previous one."""
        now = asyncio.get_running_loop().time()
        t = self.toxics
        if not t.acts_on(way.name):
            way.due = max(way.due, now)
            return way.due
        delay = self._latency(t)
        if t.loss and self._rng.random() < t.loss:
            delay += min(MAX_RTO, MIN_RTO * 2 ** way.losses)
            way.losses += 1
            self.stats.lost_chunks += 1
        else:
            way.losses = 0
        # the chunk is through once its last byte is: after the one before it, and its own size at the bandwidth
        way.due = max(way.due, now + delay) + (size / t.bandwidth if t.bandwidth else 0.0)
        if way.due > now:
            self.stats.delayed_chunks += 1
        return way.due

    def _latency(self, t: Toxics) -> float:
        if not t.jitter:
            return t.latency
        if t.distribution == "normal":
            extra = self._rng.gauss(0.0, t.jitter)
        elif t.distribution == "pareto":
            extra = t.jitter * (self._rng.paretovariate(PARETO_ALPHA) - 1.0)
        else:
            extra = self._rng.uniform(-t.jitter, t.jitter)
        return max(0.0, t.latency + extra)

    async def _write(self, way: _Direction, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            if not data:
                with contextlib.suppress(Exception):
                    way.writer.write_eof()
                return
            while True:
                changed = self._changed
                if not (self.toxics.partition and self.toxics.acts_on(way.name)) and loop.time() >= due:
                    break
                wait = None if self.toxics.partition and self.toxics.acts_on(way.name) else due - loop.time()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
                if not self.toxics.acts_on(way.name) or self.toxics == Toxics():
                    break  # healed (or no longer this way): what waited goes now
            way.writer.write(data)
            if way.name == "up":
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            await way.writer.drain()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the close send a RST (SO_LINGER 0), as a reset peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


__all__ = ["Proxy", "Toxics", "Stats"]
