"""I/O shell: the OSS process: an aiohttp server, the store, and a bus client.

The bus client is node ``oss``: it answers Pings, asks RAM/STS to authenticate and RAM for
effective policies, and feeds every RAM event to the core (which drops stale cache entries)
as soon as it arrives.
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
from services.oss.core import NAME, OssCore
from services.oss.http import OssHttp
from services.oss.store import Store
from services.runtime import service
from services.runtime.bus import Bus
from services.runtime.client import BusClient
from services.runtime.mqtt_bus import MqttBus
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
    clock = clock_for(settings)

    def on_message(env: Envelope) -> None:
        for effect in core.handle(env, clock.now()):
            log.debug(getattr(effect, "event", "effect"))

    client = BusClient(bus, NAME, clock, on_message=on_message)

    async def on_event(topic: str, payload: bytes) -> None:
        try:
            env = codec.decode(payload)
        except ProtocolError as exc:
            log.warning("event_malformed", topic=topic, field=exc.field, reason=exc.reason)
            return
        on_message(env)

    for topic_filter in core.subscriptions():
        await bus.subscribe(topic_filter, on_event)
    await client.start()
    store = Store(state_dir / "oss")
    authorize = os.environ.get(NO_AUTH_VARIABLE, "true").lower() != "false"
    if not authorize:
        log.warning("oss_authorization_disabled", variable=NO_AUTH_VARIABLE,
                    reason="benchmark-only baseline: every request is served without authentication or authorization")
    front = OssHttp(core, store, client, clock, request_timeout=settings.request_timeout, authorize=authorize)
    runner = web.ServerRunner(web.Server(front.handle), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        url = f"http://{settings.http_host}:{bound}"
        log.info("service_ready", node=NAME, url=url, state=str(state_dir / "oss"))
        yield url
    finally:
        await runner.cleanup()
        store.close()


async def serve(settings: Settings) -> None:
    bus = await MqttBus.connect(settings.broker_url, client_id=f"ramsim-{NAME}", hold=True)
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
