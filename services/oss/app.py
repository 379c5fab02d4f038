"""I/O shell: the OSS process: an aiohttp server, the store, and a bus client.

The bus client is node ``oss``: it answers Pings, asks RAM/STS to authenticate and RAM for
effective policies, and feeds every RAM event to the core (which drops stale cache entries)
as soon as it arrives, acknowledging it to RAM. A background task keeps OSS a watcher of
RAM's decisions (:class:`~protocol.messages.ram.WatchDecisions`): at start, after RAM dropped
it, and after the bus reconnected (events may have been missed while away).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import AsyncIterator, Sequence

import structlog
from aiohttp import web

from protocol import codec
from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.messages import ram
from services.oss.core import NAME, OssCore
from services.oss.http import OssHttp
from services.oss.store import Store
from services.runtime import service
from services.runtime.bus import Bus
from services.runtime.client import BusClient, dead_letter
from services.runtime.effects import Effect, Log, Send
from services.runtime.refusals import RefusingServer
from services.runtime.service import clock_for
from services.runtime.settings import Settings

log = structlog.get_logger(NAME)
DESCRIPTION = "OSS: an object store speaking Alibaba OSS's HTTP API (signature V1 and V4)."
# Benchmark-only (bench/oss.py's baseline): RAMSIM_OSS_AUTHORIZE=false serves every request with
# no authentication and no authorization. Never set it anywhere else.
NO_AUTH_VARIABLE = "RAMSIM_OSS_AUTHORIZE"


def build(settings: Settings) -> OssCore:
    return OssCore(account_id=settings.account_id, region_id=settings.region_id)


@contextlib.asynccontextmanager
async def running_oss(bus: Bus, settings: Settings, state_dir: Path, port: int = 0) -> AsyncIterator[str]:
    """Serve OSS on ``bus`` until the context exits; yields the endpoint URL."""
    core = build(settings)
    clock = getattr(bus, "clock", None) or clock_for(settings)  # a ChaosBus's: a clock-skew fault moves it
    rewatch = asyncio.Event()

    async def perform(effects: list[Effect], trace_id: str) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                await client.send(effect.dest, effect.body, trace_id=trace_id)
            elif isinstance(effect, Log):
                getattr(log, effect.level)(effect.event, **effect.fields)

    def on_message(env: Envelope) -> None:  # direct messages that are not replies (WatchDropped)
        effects = core.handle(env, clock.now())
        if not core.watching:
            rewatch.set()
        asyncio.ensure_future(perform(effects, env.trace_id))

    client = BusClient(bus, NAME, clock, on_message=on_message, ready=False)  # "starting" until HTTP listens

    async def on_event(topic: str, payload: bytes) -> None:
        try:
            env = codec.decode(payload)
        except ProtocolError as exc:
            log.warning("event_malformed", topic=topic, field=exc.field, reason=exc.reason)
            client.malformed += 1
            await client.dead_letter(dead_letter(NAME, topic, payload, "malformed", field=exc.field, detail=exc.reason))
            return
        await perform(core.handle(env, clock.now()), env.trace_id)

    def on_reconnect() -> None:
        core.watching = False  # events may have been missed while away: decide with the barrier until watching again
        rewatch.set()

    async def watch() -> None:
        delay = 0.1
        while True:
            if core.watching:
                await rewatch.wait()
                rewatch.clear()
                continue
            answer = await client.request("ram", ram.WatchDecisions(), timeout=settings.request_timeout)
            if isinstance(answer, ram.WatchDecisionsOk):
                core.watched(answer)
                log.info("watching_decisions", generation=answer.generation)
                delay = 0.1
            else:
                log.warning("watch_failed", reason=getattr(answer, "code", type(answer).__name__), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    for topic_filter in core.subscriptions():
        await bus.subscribe(topic_filter, on_event)
    await client.start()
    if hasattr(bus, "on_reconnect"):
        bus.on_reconnect = on_reconnect  # type: ignore[attr-defined]
    watcher = asyncio.create_task(watch(), name="oss:watch")
    store = Store(state_dir / "oss")
    authorize = os.environ.get(NO_AUTH_VARIABLE, "true").lower() != "false"
    if not authorize:
        log.warning("oss_authorization_disabled", variable=NO_AUTH_VARIABLE,
                    reason="benchmark-only baseline: every request is served without authentication or authorization")
    front = OssHttp(core, store, client, clock, request_timeout=settings.request_timeout, authorize=authorize)
    runner = web.ServerRunner(RefusingServer(front.handle, front.refused), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://{settings.http_host}:{bound}"
        client.ready = True  # Pings said "starting" until now: a cluster called ready can be called at once
        log.info("service_ready", node=NAME, url=url, state=str(state_dir / "oss"))
        yield url
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await runner.cleanup()
        store.close()


async def serve(settings: Settings) -> None:
    bus = await service.connect(NAME, settings, clock_for(settings))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        async with running_oss(bus, settings, Path(settings.state_dir), settings.http_port):
            await stop.wait()
    finally:
        await bus.close()
        log.info("service_stopped", node=NAME)


def main(argv: Sequence[str] | None = None) -> None:
    service.run(NAME, DESCRIPTION, serve, argv=argv)
