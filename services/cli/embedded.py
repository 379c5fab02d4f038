"""I/O shell: a whole cluster inside this one process, over the in-memory bus.

The same cores, drivers, gateway and metadata listeners as ``ramsim up``, but no broker and
no child processes: ``ramsim demo`` uses it when Mosquitto is not installed (or with
``--embedded``). The tests that claim end-to-end behaviour never use it; they run real
processes over a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from protocol import ids
from services.cli import cluster
from services.ecs.app import build as build_ecs
from services.gateway.app import make_server
from services.metadata.app import build as build_metadata, http_listeners
from services.oss.app import running_oss
from services.ram.app import build as build_ram
from services.runtime.client import BusClient
from services.runtime.driver import Driver
from services.runtime.entropy import SystemEntropy
from services.runtime.memory_bus import MemoryBroker
from services.runtime.service import clock_for
from services.runtime.settings import Settings
from services.sts.app import build as build_sts


@contextlib.asynccontextmanager
async def embedded_cluster(*, time_scale: float = 1.0, credential_lifetime: int = 3600, refresh_before: int = 1800,
                           hosts: int = 1) -> AsyncIterator[cluster.ClusterFile]:
    root_id, root_secret = ids.access_key_id(os.urandom(20)), ids.secret(os.urandom(30))
    settings = Settings(time_scale=time_scale, time_origin=time.time(), account_id=ids.numeric_id(os.urandom(8), 16),
                        credential_lifetime=credential_lifetime, refresh_before=refresh_before,
                        root_access_key_id=root_id, root_access_key_secret=root_secret, sts_signing_key=os.urandom(32).hex())
    broker, entropy, clock = MemoryBroker(), SystemEntropy(), clock_for(settings)
    async with contextlib.AsyncExitStack() as stack:
        # The gateway first: the metadata agents' proxies forward to it.
        gateway_bus = broker.client("gateway")
        stack.push_async_callback(gateway_bus.close)
        client = await BusClient(gateway_bus, "gateway", clock).start()
        runner = web.ServerRunner(make_server(client, settings), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        settings = dataclasses.replace(settings, gateway_url=f"http://127.0.0.1:{port}")
        cores = [build(settings, entropy) for build in (build_ram, build_sts, build_ecs)]
        cores += [build_metadata(dataclasses.replace(settings, host_id=f"host-{i}"), entropy) for i in range(1, hosts + 1)]
        drivers = []
        for core in cores:
            bus = broker.client(core.node_id)
            stack.push_async_callback(bus.close)
            driver = Driver(core, bus, clock, entropy, request_timeout=settings.request_timeout)
            if core.node_id.startswith("metadata-"):
                await stack.enter_async_context(http_listeners(driver, settings))
            await driver.start()
            drivers.append(driver)
        tasks = [asyncio.create_task(d.run(), name=f"embedded:{d.core.node_id}") for d in drivers]
        stack.push_async_callback(_cancel, tasks)
        oss_bus = broker.client("oss")
        stack.push_async_callback(oss_bus.close)
        oss_state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ramsim-oss-")))
        oss_url = await stack.enter_async_context(running_oss(oss_bus, settings, oss_state))
        yield cluster.ClusterFile(broker_url="memory://", gateway_url=settings.gateway_url, account_id=settings.account_id,
                                  region_id=settings.region_id, access_key_id=root_id, access_key_secret=root_secret,
                                  state_dir="", time_scale=time_scale, time_origin=settings.time_origin, pid=os.getpid(),
                                  oss_url=oss_url)



async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
