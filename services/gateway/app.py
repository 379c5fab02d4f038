"""I/O shell: the gateway process: an aiohttp server, a bus client, and its nonce window on disk
(``<state_dir>/gateway.db``), so a restarted gateway still refuses replays of recent requests."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl
from typing import Sequence

import msgspec
import structlog
from aiohttp import web

from protocol import errors
from protocol.base import Message
from protocol.errors import Error
from protocol.messages.common import AuthenticateOk
from protocol.trace import trace_id_of
from services.gateway import core
from services.runtime import service
from services.runtime.client import BusClient
from services.runtime.mqtt_bus import parse
from services.runtime.refusals import RefusingServer
from services.runtime.service import clock_for
from services.runtime.settings import Settings

NAME = "gateway"
MAX_BODY = 64 * 1024
ATTEMPTS = 3  # for idempotent requests that time out (core.idempotent)
log = structlog.get_logger(NAME)


async def ask(client: BusClient, dest: str, body: Message, settings: Settings, trace_id: str) -> Message:
    """Ask ``dest``; an idempotent request that timed out is asked again (a few times, backing off).
    Anything else that timed out is answered with the indefinite timeout error, as it came."""
    attempts = ATTEMPTS if core.idempotent(body) else 1
    for attempt in range(1, attempts + 1):
        reply = await client.request(dest, body, timeout=settings.request_timeout, trace_id=trace_id)
        if not (isinstance(reply, Error) and reply.code == errors.TIMEOUT) or attempt == attempts:
            return reply
        log.warning("request_retried", dest=dest, action=type(body).__name__, attempt=attempt + 1)
        await asyncio.sleep(0.1 * 2 ** attempt)
    raise AssertionError("unreachable")


class NonceLog:
    """The nonces the gateway saw within the timestamp window, in SQLite (WAL): written before
    the request is answered, read back at start."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, stamp REAL NOT NULL) WITHOUT ROWID")
        self.added = 0

    def load(self, now: float, window: float) -> dict[str, float]:
        self.db.execute("DELETE FROM nonces WHERE stamp < ?", (now - window,))
        return dict(self.db.execute("SELECT nonce, stamp FROM nonces"))

    def add(self, seen: list[tuple[str, float]], now: float, window: float) -> list[str]:
        """Write ``seen`` down; return those another process (a gateway worker sharing this file)
        already wrote with a stamp still inside the window: replays this process could not know of."""
        taken = []
        for nonce, stamp in seen:  # each its own write: SQLite serialises the workers' (each waits up to its timeout)
            written = self.db.execute(
                "INSERT INTO nonces (nonce, stamp) VALUES (?, ?) "
                "ON CONFLICT (nonce) DO UPDATE SET stamp = excluded.stamp WHERE nonces.stamp < ?",
                (nonce, stamp, now - window))
            if written.rowcount == 0:
                taken.append(nonce)
        self.added += len(seen)
        if self.added >= 10_000:  # now and then, forget what can no longer be replayed
            self.added = 0
            self.db.execute("DELETE FROM nonces WHERE stamp < ?", (now - window,))
        return taken

    def close(self) -> None:
        self.db.close()


def make_server(client: BusClient, settings: Settings, nonces: NonceLog | None = None) -> web.Server:
    """The gateway's HTTP server: ``GET /`` and ``POST /`` are API calls; anything else, and any
    request the HTTP parser cannot read (services/runtime/refusals.py), is an Alibaba JSON error."""
    gateway = core.Gateway()
    if nonces is not None:
        gateway.restore(nonces.load(time.time(), gateway.max_skew), time.time())

    async def call(request: web.BaseRequest) -> web.Response:
        request_id = new_request_id()
        body = await request.content.read(MAX_BODY + 1)
        unwanted = not_a_call(request, body)
        if unwanted is not None:
            return respond(unwanted, request_id, "gateway")
        form = parse_qsl(body.decode(errors="replace"), keep_blank_values=True) \
            if request.content_type == "application/x-www-form-urlencoded" else []
        http = core.HttpCall(method=request.method, path=request.path,
                             query=parse_qsl(request.query_string, keep_blank_values=True),
                             headers={k.lower(): v for k, v in request.headers.items()}, body=body, form=form)
        now = time.time()
        parsed = gateway.parse(http, now)
        taken: list[str] = []
        if gateway.seen:  # on disk before anything is answered: a restart (or another worker) must not forget it
            if nonces is not None:
                taken = nonces.add(gateway.seen, now, gateway.max_skew)
            gateway.seen.clear()
        product = parsed.product if isinstance(parsed, core.Call) else "gateway"
        if taken:  # a replay of a request another gateway worker took
            return respond(core.nonce_used(), request_id, product)
        if isinstance(parsed, Error):
            return respond(parsed, request_id, product)
        trace_id = trace_id_of(request_id)  # a client finds its call's messages by the RequestId it is answered
        who = await ask(client, core.verifier(parsed.credential.access_key_id), parsed.credential, settings, trace_id)
        if not isinstance(who, AuthenticateOk):
            log.info("request_unauthenticated", code=who.code if isinstance(who, Error) else type(who).__name__,
                     access_key_id=parsed.credential.access_key_id)
            return respond(core.unauthenticated(who, parsed.credential), request_id, product)
        if isinstance(parsed.command, Error):
            return respond(parsed.command, request_id, product)
        observed = {"acs:SourceIp": request.remote or "", "acs:SecureTransport": "true" if request.secure else "false"}
        command = msgspec.structs.replace(parsed.command, caller=who.principal, request_context=observed)  # type: ignore[type-var]
        reply = await ask(client, parsed.product, command, settings, trace_id)
        log.info("request_served", action=type(command).__name__, principal=who.principal.arn,
                 outcome=reply.code if isinstance(reply, Error) else "ok")
        return respond(reply, request_id, product)

    return RefusingServer(call, refused)


def not_a_call(request: web.BaseRequest, body: bytes) -> Error | None:
    """Why this request is no API call the gateway serves (another path or method, a body over
    :data:`MAX_BODY`), or None."""
    if request.path != "/":
        return errors.error("InvalidApi.NotFound", "Specified api is not found, please check your url and method.", 404)
    if request.method not in ("GET", "POST"):
        return errors.error("UnsupportedHTTPMethod", "This http method is not supported.", 405)
    if len(body) > MAX_BODY:
        return errors.error("RequestEntityTooLarge", f"The request body is larger than {MAX_BODY} bytes.", 413)
    return None


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def refused(request: web.BaseRequest, status: int, reason: str) -> web.Response:
    """A request the HTTP parser could not read, answered in Alibaba's error shape."""
    code = {414: "RequestURITooLong", 431: "RequestHeaderFieldsTooLarge"}.get(status, "InvalidRequest.Malformed")
    return respond(errors.error(code, reason, status), new_request_id(), "gateway")


def respond(body: object, request_id: str, product: str) -> web.Response:
    status, data = core.render(body, request_id, product)  # type: ignore[arg-type]
    return web.json_response(data, status=status)


async def serve(settings: Settings) -> None:
    clock = clock_for(settings)
    bus = await service.connect(NAME, settings, clock)
    # "starting" until HTTP listens; a worker (``ramsim up --gateway-workers``) shares the inbox and hears every reply
    client = await BusClient(bus, NAME, clock, ready=False, share_group=settings.share_group,
                             replies_from=tuple(core.COMMANDS)).start()
    nonces = NonceLog(Path(settings.state_dir) / f"{NAME}.db")
    runner = web.ServerRunner(make_server(client, settings, nonces), access_log=None)
    await runner.setup()
    # the workers of one gateway listen on one port (SO_REUSEPORT: the kernel spreads connections between
    # them); a lone gateway does not, so that a second one on its port is an error, not a silent share
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=bool(settings.share_group) or None)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client.ready = True  # only now may a Ping say so: `ramsim up` calls the cluster ready on it, and callers come at once
    log.info("service_ready", node=NAME, url=f"http://{settings.http_host}:{port}",
             identity=parse(settings.broker_url).user if settings.share_group else None)  # which worker (gateway-2) this is
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await bus.close()
        nonces.close()
        log.info("service_stopped", node=NAME)


def main(argv: Sequence[str] | None = None) -> None:
    service.run(NAME, "Gateway: Alibaba RPC-style OpenAPI (ram, sts, ecs) over HTTP.", serve, argv=argv)
