"""The link proxy on real loopback TCP (an echo server behind it): each toxic seen to act and to
heal, and its draws seeded. Bounds are lower bounds on what a toxic adds (a loaded machine only
makes things slower), and waits for what must not arrive are short and explicit."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest

from services.experiment.proxy import MIN_RTO, Proxy, Toxics


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    p = Proxy("echo", server.sockets[0].getsockname()[1], seed=1)
    await p.start()
    yield p
    await p.close()
    server.close()


async def connect(p: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", p.port)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes = b"ping") -> float:
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data
    return time.monotonic() - started


async def test_latency_acts_on_both_directions_and_heals(proxy: Proxy) -> None:
    reader, writer = await connect(proxy)
    plain = await round_trip(reader, writer)
    proxy.set(Toxics(latency=0.15))
    assert await round_trip(reader, writer) >= 0.3  # 0.15 there, 0.15 back
    proxy.set(Toxics(latency=0.15, direction="up"))
    assert 0.15 <= await round_trip(reader, writer)
    proxy.heal()
    assert await round_trip(reader, writer) < 0.15 + plain
    assert proxy.stats.delayed_chunks >= 3
    writer.close()


async def test_a_partition_holds_bytes_both_ways_and_delivers_them_at_the_heal(proxy: Proxy) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer)
    proxy.set(Toxics(partition=True))
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)  # nothing gets through while partitioned
    late_reader, late_writer = await connect(proxy)  # a new connection is accepted but goes nowhere
    late_writer.write(b"new")
    proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    assert await asyncio.wait_for(late_reader.readexactly(3), 5) == b"new"
    writer.close()
    late_writer.close()


async def test_loss_is_a_retransmission_timeout_that_backs_off(proxy: Proxy) -> None:
    reader, writer = await connect(proxy)
    proxy.set(Toxics(loss=1.0, direction="up"))
    first = await round_trip(reader, writer)
    second = await round_trip(reader, writer)
    assert first >= MIN_RTO and second >= 2 * MIN_RTO  # consecutive losses double the RTO
    assert proxy.stats.lost_chunks == 2
    proxy.heal()
    assert await round_trip(reader, writer) < MIN_RTO
    writer.close()


async def test_bandwidth_limits_bytes_per_second(proxy: Proxy) -> None:
    reader, writer = await connect(proxy)
    proxy.set(Toxics(bandwidth=40_000, direction="down"))
    assert await round_trip(reader, writer, b"x" * 20_000) >= 0.4  # 20 kB at 40 kB/s
    proxy.heal()
    assert await round_trip(reader, writer, b"x" * 20_000) < 0.4
    writer.close()


async def test_reset_closes_every_connection_and_new_ones_work(proxy: Proxy) -> None:
    reader, writer = await connect(proxy)
    await round_trip(reader, writer)
    assert proxy.reset() == 1
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(reader, writer)
    reader, writer = await connect(proxy)
    await round_trip(reader, writer)
    assert proxy.stats.resets == 1 and proxy.stats.connections == 2
    writer.close()


def test_draws_are_seeded() -> None:
    def draws(seed: int, distribution: str) -> list[float]:
        p = Proxy("link", 1, seed=seed)
        toxics = Toxics(latency=0.2, jitter=0.1, distribution=distribution)
        return [p._latency(toxics) for _ in range(50)]

    for distribution in ("uniform", "normal", "pareto"):
        assert draws(7, distribution) == draws(7, distribution) != draws(8, distribution)
        assert all(d >= 0 for d in draws(7, distribution))
    assert max(draws(7, "uniform")) <= 0.3 + 1e-9 and min(draws(7, "uniform")) >= 0.1 - 1e-9
    assert min(draws(7, "pareto")) >= 0.2  # a heavy tail above the latency, never below it


def test_bad_toxics_are_refused() -> None:
    for bad in (dict(distribution="gamma"), dict(direction="sideways"), dict(loss=1.5), dict(latency=-1)):
        with pytest.raises(ValueError):
            Toxics(**bad)  # type: ignore[arg-type]
