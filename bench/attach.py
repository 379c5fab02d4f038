"""attach -> visible: how soon a role attached to running instances shows at their metadata paths.

    python bench/attach.py [--quick]

On a private cluster (Mosquitto + one process per service, as ``ramsim up``):

  broker floor      a bare publish/subscribe request/response on the same Mosquitto: two MQTT
                    connections (QoS 1), one publishes, the other answers on the same topic, no
                    envelope, no codec, no service; the round trip no message between two nodes can beat
  1 instance        AttachInstanceRamRole (through the gateway), then GET the instance's
                    credentials listing until it answers 200; then detach until it answers 404;
                    p50/p99 over the rounds (target p99 <= 10 ms)
  100 instances     one AttachInstanceRamRole naming 100 InstanceIds, until all 100 answer 200
                    (every one polled concurrently, keep-alive); p50/p99 over the rounds (target p99 <= 50 ms)
  10,000 instances  100 attach calls of 100 (8 at a time), until all 10,000 answer 200, once
                    (target <= 2 s); skipped with --quick

The pollers run in this process: their own GETs are inside the figures, so the figures are
upper bounds; the baseline column gives the poller's resolution (the median time of one poll,
or one sweep of all 100, measured before the rounds).
"""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import CREDENTIALS, ROLE, Poller, attach, cluster, create_role, detach, endpoints, launch, p50_p99_ms  # noqa: E402
from recording import Row, verdict  # noqa: E402
from suite import Context  # noqa: E402


async def broker_floor(running, rounds: int) -> list[float]:
    """Seconds per bare request/response through the cluster's Mosquitto (QoS 1, two connections)."""
    from protocol import topics
    from services.cli import broker
    from services.runtime.mqtt_bus import MqttBus

    url = running.broker_url(broker.OPERATOR)
    topic = topics.inbox(broker.OPERATOR, broker.OPERATOR)  # the one topic the operator may both write and read
    asker = await MqttBus.connect(url, broker.tool_client_id(broker.OPERATOR), persistent=False)
    answerer = await MqttBus.connect(url, broker.tool_client_id(broker.OPERATOR), persistent=False)
    waiting: dict[bytes, asyncio.Future[None]] = {}

    async def answer(_: str, payload: bytes) -> None:
        if payload[:1] == b"q":
            await answerer.publish(topic, b"r" + payload[1:])

    async def answered(_: str, payload: bytes) -> None:
        future = waiting.pop(payload[1:], None) if payload[:1] == b"r" else None
        if future is not None and not future.done():
            future.set_result(None)

    samples = []
    try:
        await answerer.subscribe(topic, answer)
        await asker.subscribe(topic, answered)
        loop = asyncio.get_running_loop()
        for i in range(rounds + 10):  # 10 warm-up rounds
            key = str(i).encode()
            waiting[key] = loop.create_future()
            t = time.perf_counter()
            await asker.publish(topic, b"q" + key)
            await asyncio.wait_for(waiting[key], 5)
            if i >= 10:
                samples.append(time.perf_counter() - t)
    finally:
        await asker.close()
        await answerer.close()
    return samples


async def rounds_of(running, instance_ids: list[str], rounds: int, limit: float) -> tuple[list[float], float]:
    """Seconds from the attach call until every instance lists the role, per round (each round
    detaches again); and the median seconds of one poll sweep over all of them (the poller's own
    resolution, measured before: every GET answers 404)."""
    bases = await asyncio.to_thread(endpoints, running, instance_ids)
    urls = {i: b.rstrip("/") + CREDENTIALS for i, b in bases.items()}
    samples = []
    async with Poller(concurrency=min(100, len(urls))) as poller:
        sweeps = []
        for _ in range(5):
            t = time.perf_counter()
            await poller.until(urls, lambda status: status == 404, limit)
            sweeps.append(time.perf_counter() - t)
        for _ in range(rounds):
            t = time.perf_counter()
            await asyncio.to_thread(attach, running, ROLE, instance_ids)
            seen = await poller.until(urls, lambda status: status == 200, limit)
            samples.append(max(seen.values()) - t)
            await asyncio.to_thread(detach, running, instance_ids)
            await poller.until(urls, lambda status: status == 404, limit)
    return samples, sorted(sweeps)[len(sweeps) // 2]


async def all_of_many(running, instance_ids: list[str], limit: float) -> float:
    """Seconds from the first attach call until all ``instance_ids`` list the role (once)."""
    bases = await asyncio.to_thread(endpoints, running, instance_ids, 300)
    urls = {i: b.rstrip("/") + CREDENTIALS for i, b in bases.items()}
    batches = [instance_ids[i:i + 100] for i in range(0, len(instance_ids), 100)]

    def attach_all() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda batch: attach(running, ROLE, batch), batches))

    async with Poller(concurrency=64) as poller:
        t = time.perf_counter()
        calls = asyncio.create_task(asyncio.to_thread(attach_all))
        seen = await poller.until(urls, lambda status: status == 200, limit)
        await calls
    return max(seen.values()) - t


async def run_attach(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    single_rounds, batch_rounds = ctx.count(100, 5), ctx.count(20, 3)
    async with cluster(ctx.workdir, "attach") as running:
        ctx.say(f"attach: broker floor, {ctx.count(1000, 100)} round trips")
        floor = p50_p99_ms(await broker_floor(running, ctx.count(1000, 100)))
        await asyncio.to_thread(create_role, running)
        rows.append(Row("attach", "broker floor: bare pub/sub request/response (QoS 1), p50 / p99 ms",
                        f"{floor[0]:.2f} / {floor[1]:.2f}"))
        baseline = f"floor {floor[0]:.2f} / {floor[1]:.2f}"
        ids = await asyncio.to_thread(launch, running, 101)
        ctx.say(f"attach: 1 instance, {single_rounds} rounds")
        samples, sweep = await rounds_of(running, ids[:1], single_rounds, 10)
        one = p50_p99_ms(samples)
        rows.append(Row("attach", f"attach -> visible, 1 instance, p50 / p99 ms ({single_rounds} rounds)",
                        f"{one[0]:.2f} / {one[1]:.2f}", f"{baseline}; a poll {sweep * 1000:.2f}", "p99 <= 10 ms", verdict(one[1] <= 10)))
        ctx.say(f"attach: a batch of 100, {batch_rounds} rounds")
        samples, sweep = await rounds_of(running, ids[1:], batch_rounds, 10)
        hundred = p50_p99_ms(samples)
        rows.append(Row("attach", f"attach -> all visible, one 100-instance batch, p50 / p99 ms ({batch_rounds} rounds)",
                        f"{hundred[0]:.2f} / {hundred[1]:.2f}", f"{baseline}; a poll sweep of 100 {sweep * 1000:.2f}",
                        "p99 <= 50 ms", verdict(hundred[1] <= 50)))
    measure = "attach -> all visible, 10,000 instances (100 calls of 100), s"
    if ctx.quick:
        rows.append(Row("attach", measure, "", "", "<= 2 s", "skipped (--quick)"))
    else:
        async with cluster(ctx.workdir, "attach-10k", shared=True, hosts=5, ready_timeout=120) as running:
            await asyncio.to_thread(create_role, running)
            ctx.say("attach: launching 10,000 instances")
            ids = await asyncio.to_thread(launch, running, 10_000)
            ctx.say("attach: 10,000 instances, once")
            took = await all_of_many(running, ids, 120)
            rows.append(Row("attach", measure, f"{took:.2f}", baseline, "<= 2 s", verdict(took <= 2)))
    return rows


if __name__ == "__main__":
    from suite import standalone
    asyncio.run(standalone(["attach"], Context(quick="--quick" in sys.argv[1:])))
