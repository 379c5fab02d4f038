"""I/O shell: the common life of a service process.

``main(name, description, build)`` parses settings, sets up logs, connects to the broker as
node ``name``, builds the core, enters the service's extra shells (async context managers such
as HTTP servers, given the driver) and runs the driver until SIGINT/SIGTERM. Shutdown is
ordered: stop the driver, leave the shells (closing their servers), disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import structlog

from services.runtime import logs, private
from services.runtime.bus import BusError
from services.runtime.chaos import ChaosBus
from services.runtime.clock import ScaledClock
from services.runtime.driver import Driver
from services.runtime.effects import Core, Durable
from services.runtime.entropy import Entropy, SystemEntropy
from services.runtime.mqtt_bus import MqttBus, parse, session_client_id
from services.runtime.settings import Settings
from services.runtime.store import Store

BuildCore = Callable[[Settings, Entropy], Core]
Shell = Callable[[Driver, Settings], AbstractAsyncContextManager[None]]


def clock_for(settings: Settings) -> ScaledClock:
    return ScaledClock(settings.time_scale, settings.time_origin or None)


async def connect(node_id: str, settings: Settings, clock: ScaledClock) -> ChaosBus:
    """The node's bus, held until its owner opens it, obeying the faults an experiment sets on it
    (none unless one does: :mod:`services.runtime.chaos`)."""
    # a client id derived from the identity's password: on a broker that does not bind client ids to
    # usernames (RabbitMQ), nobody without the password can take this node's session
    client_id = session_client_id(f"ramsim-{node_id}", parse(settings.broker_url).password)
    # A shared worker's session is not kept: a broker (Mosquitto 2) goes on handing a shared subscription's
    # messages to a member whose session outlives its connection, so a killed worker's share would wait for
    # it; with a clean session they go to the live workers (what was in flight at the kill is lost: the
    # requester's timeout, an indefinite error, as for a lost reply).
    bus = await MqttBus.connect(settings.broker_url, client_id=client_id, hold=True, persistent=not settings.share_group)
    try:
        return await ChaosBus(bus, node_id, clock).start()
    except BaseException:
        await bus.close()
        raise


def open_store(node_id: str, settings: Settings, core: Core) -> Store | None:
    """``<state_dir>/<node>.db`` for a core with durable state, else None."""
    if not isinstance(core, Durable):
        return None
    if not settings.state_key:
        structlog.get_logger(node_id).warning("state_key_missing", hint="set RAMSIM_STATE_KEY: secrets are stored unencrypted")
    key = bytes.fromhex(settings.state_key) if settings.state_key else None
    return Store(Path(settings.state_dir) / f"{node_id}.db", key=key, sealed=core.SEALED)


async def serve(node_id: str, settings: Settings, build: BuildCore, shells: Sequence[Shell] = ()) -> None:
    log = structlog.get_logger(node_id)
    if settings.ready_file:
        Path(settings.ready_file).unlink(missing_ok=True)  # a previous run's, killed before it could delete it
    entropy = SystemEntropy()
    core = build(settings, entropy)
    store = open_store(node_id, settings, core)
    clock = clock_for(settings)
    bus = await connect(node_id, settings, clock)
    driver = Driver(core, bus, clock, entropy, request_timeout=settings.request_timeout, store=store,
                    share_group=settings.share_group)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for shell in shells:
                await stack.enter_async_context(shell(driver, settings))
            await driver.start()
            log.info("service_ready", node=node_id, broker=settings.broker_url.split("@")[-1])
            mark_ready(settings)
            running = asyncio.create_task(driver.run(), name=f"{node_id}:driver")
            stopped = asyncio.create_task(stop.wait(), name=f"{node_id}:signals")
            await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
            log.info("service_stopping", node=node_id)
            for task in (running, stopped):
                task.cancel()
            await asyncio.gather(running, stopped, return_exceptions=True)
            if running.done() and not running.cancelled() and running.exception() is not None:
                raise running.exception()  # type: ignore[misc]
    finally:
        if settings.ready_file:
            Path(settings.ready_file).unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            await bus.close()
        driver.close()
        log.info("service_stopped", node=node_id)


def mark_ready(settings: Settings) -> None:
    """Write ``settings.ready_file`` (this pid), what ``ramsim deploy health`` reads in a container."""
    if settings.ready_file:
        path = Path(settings.ready_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")


def main(node_id: str, description: str, build: BuildCore, shells: Sequence[Shell] = (),
         argv: Sequence[str] | None = None, settings: Settings | None = None) -> None:
    """Run a service whose logic is a core (ram, sts, ecs, metadata agents)."""
    run(node_id, description, lambda s: serve(node_id, s, build, shells), argv=argv, settings=settings)


def run(node_id: str, description: str, body: Callable[[Settings], Awaitable[None]], *,
        argv: Sequence[str] | None = None, settings: Settings | None = None) -> None:
    """Parse settings, set up logs and run ``body`` until it returns; an unreachable broker
    is one log line and exit status 2."""
    settings = settings or Settings.parse(argv, prog=f"python -m services.{node_id.split('-')[0]}", description=description)
    private.keep_private()  # its databases, their -wal/-shm, OSS's objects: 0600 (services/runtime/private.py)
    logs.configure(fmt=settings.log_format, level=settings.log_level, service=node_id)
    try:
        asyncio.run(body(settings))
    except BusError as exc:
        structlog.get_logger(node_id).error("broker_unreachable", error=str(exc))
        sys.exit(2)
