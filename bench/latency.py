"""Latency of the paths the seed promises are fast, on a real cluster, against a baseline.

    python bench/latency.py [--rounds N]

Runs the same measurements against (a) a real cluster (Mosquitto + one process per service,
as ``ramsim up``) and (b) the embedded cluster (the same cores in one process over the
in-memory bus) as the baseline in the same run, and prints a table of p50/p99/max in
milliseconds and the MQTT/memory ratio, with the machine it ran on.

Measured:
  bus ping            request/response to the RAM node (Ping -> PingOk), no HTTP
  api call            a signed ram GetRole through the gateway (HTTP, authentication, RAM)
  attach -> visible   AttachInstanceRamRole on a running instance until its metadata lists the role
  detach -> 404       DetachInstanceRamRole until the listing answers 404
  policy -> denied    DetachPolicyFromRole, then the instance's token is refused (next call); ECS decides
                      from its cached effective policies, dropped by RAM's event before the reply

Everything talks to 127.0.0.1 only; every loop is bounded by --rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py

from machine import machine  # noqa: E402
from protocol.messages.common import Ping  # noqa: E402
from services.cli import api, cluster  # noqa: E402
from services.runtime import logs  # noqa: E402
from services.cli.embedded import embedded_cluster  # noqa: E402
from services.cli.instances import instances, read_metadata  # noqa: E402
from services.cli.up import Options, running_cluster  # noqa: E402
from services.ram.policy import ECS_TRUST_POLICY  # noqa: E402
from services.runtime.client import BusClient  # noqa: E402
from services.runtime.clock import ScaledClock  # noqa: E402
from services.runtime.mqtt_bus import MqttBus  # noqa: E402

LISTING = "/latest/meta-data/ram/security-credentials/"


def poll(probe: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.perf_counter() + limit
    while not probe():
        if time.perf_counter() > deadline:
            raise RuntimeError("condition not reached in time")


def measure_api(target: cluster.ClusterFile, rounds: int) -> dict[str, list[float]]:
    root = api.Credential(target.access_key_id, target.access_key_secret)

    def call(action: str, credential: api.Credential = root, product: str = "ram", **params: str) -> dict:
        return api.call(target.gateway_url, product, action, params, credential)

    region = target.region_id
    call("CreateRole", RoleName="BenchRole", AssumeRolePolicyDocument=ECS_TRUST_POLICY)
    call("AttachPolicyToRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="BenchRole")
    instance_id = call("RunInstances", product="ecs", RegionId=region)["InstanceIdSets"]["InstanceIdSet"][0]
    url = ""
    while not url:
        url = next((i["MetadataUrl"] for i in instances(target) if i["InstanceId"] == instance_id), "")
    ids = json.dumps([instance_id])
    results: dict[str, list[float]] = {"api call": [], "attach -> visible": [], "detach -> 404": [], "policy -> denied": []}
    for _ in range(rounds):
        t = time.perf_counter()
        call("GetRole", RoleName="BenchRole")
        results["api call"].append(time.perf_counter() - t)

        t = time.perf_counter()
        call("AttachInstanceRamRole", product="ecs", RegionId=region, RamRoleName="BenchRole", InstanceIds=ids)
        poll(lambda: read_metadata(url, LISTING)[0] == 200)
        results["attach -> visible"].append(time.perf_counter() - t)

        doc = json.loads(read_metadata(url, LISTING + "BenchRole")[1])
        session = api.Credential(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"])
        t = time.perf_counter()
        call("DetachPolicyFromRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="BenchRole")
        try:
            call("DescribeInstances", session, product="ecs", RegionId=region)
            raise RuntimeError("still allowed after the policy was detached")
        except api.ApiError:
            results["policy -> denied"].append(time.perf_counter() - t)
        call("AttachPolicyToRole", PolicyType="System", PolicyName="AliyunECSReadOnlyAccess", RoleName="BenchRole")

        t = time.perf_counter()
        call("DetachInstanceRamRole", product="ecs", RegionId=region, InstanceIds=ids)
        poll(lambda: read_metadata(url, LISTING)[0] == 404)
        results["detach -> 404"].append(time.perf_counter() - t)
    return results


async def measure_ping(client: BusClient, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        await client.request("ram", Ping())
        samples.append(time.perf_counter() - t)
    return samples


async def run_mqtt(rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="ramsim-bench-") as state:
        async with running_cluster(Options(state_dir=Path(state), instances=0)) as running:
            bus = await MqttBus.connect(running.file.broker_url, "ramsim-bench", persistent=False)
            try:
                client = await BusClient(bus, "operator", ScaledClock()).start()  # node id = the URL's broker identity
                ping = await measure_ping(client, rounds * 10)
            finally:
                await bus.close()
            results = await asyncio.to_thread(measure_api, running.file, rounds)
            return {"bus ping": ping, **results}


async def run_memory(rounds: int) -> dict[str, list[float]]:
    async with embedded_cluster() as target:
        results = await asyncio.to_thread(measure_api, target, rounds)
    from services.ram.app import build as build_ram
    from services.runtime.driver import Driver
    from services.runtime.entropy import SystemEntropy
    from services.runtime.memory_bus import MemoryBroker
    from services.runtime.settings import Settings
    broker = MemoryBroker()
    settings = Settings(root_access_key_id="LTAIbench", root_access_key_secret="x")
    ram_bus, bench_bus = broker.client("ram"), broker.client("bench")
    driver = Driver(build_ram(settings, SystemEntropy()), ram_bus, ScaledClock(), SystemEntropy())
    await driver.start()
    task = asyncio.create_task(driver.run())
    client = await BusClient(bench_bus, "bench", ScaledClock()).start()
    ping = await measure_ping(client, rounds * 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await ram_bus.close()
    await bench_bus.close()
    return {"bus ping": ping, **results}


def stats(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99, max in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1]


async def run_latency(ctx) -> list:
    """``ramsim bench latency``: one row per metric, Mosquitto beside the in-memory bus."""
    from recording import Row, verdict
    rounds = ctx.count(100, 10)
    ctx.say(f"latency: the in-memory cluster, {rounds} rounds")
    memory = await run_memory(rounds)
    ctx.say(f"latency: the Mosquitto cluster, {rounds} rounds")
    mqtt = await run_mqtt(rounds)
    rows = []
    for metric in mqtt:
        m50, m99, _ = stats(memory[metric])
        q50, q99, _ = stats(mqtt[metric])
        change = metric == "policy -> denied"
        rows.append(Row("latency", f"{metric}, p50 / p99 ms ({rounds * 10 if metric == 'bus ping' else rounds} rounds)",
                        f"{q50:.2f} / {q99:.2f}", f"in-memory bus {m50:.2f} / {m99:.2f} ({q50 / m50:.1f}x)",
                        "p99 <= 20 ms" if change else "", verdict(q99 <= 20) if change else ""))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="rounds per measurement (bus ping: 10x this)")
    args = parser.parse_args()
    logs.configure(level="warning")
    print(f"machine: {machine()}", flush=True)  # bench/machine.py
    print(f"rounds: {args.rounds} (bus ping {args.rounds * 10})", flush=True)
    memory = await run_memory(args.rounds)
    mqtt = await run_mqtt(args.rounds)
    header = f"{'metric':<20}{'memory p50':>11}{'p99':>8}{'max':>8}  {'mqtt p50':>9}{'p99':>8}{'max':>8}  {'p50 ratio':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for metric in mqtt:
        m50, m99, mmax = stats(memory[metric])
        q50, q99, qmax = stats(mqtt[metric])
        print(f"{metric:<20}{m50:>11.2f}{m99:>8.2f}{mmax:>8.2f}  {q50:>9.2f}{q99:>8.2f}{qmax:>8.2f}  {q50 / m50:>8.1f}x")
    change = stats(mqtt["policy -> denied"])[1]
    print(f"\npolicy change to effect over Mosquitto: p99 {change:.2f} ms (target <= 20 ms: {'PASS' if change <= 20 else 'MISS'})")
    print("(milliseconds; memory = every service in one process over the in-memory bus, "
          "mqtt = one process per service over Mosquitto)")


if __name__ == "__main__":
    asyncio.run(main())
