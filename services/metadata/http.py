"""I/O shell: the HTTP side of a metadata agent, standing in for each instance's view of
``http://100.100.100.200``: one listener per instance (port mode, :class:`Listeners`: a port
stands in for the instance's source address), or one listener for all of them (shared mode,
:class:`SharedListener`: the instance is named in the request, see there).

Each listener answers origin-form requests (``GET /latest/...``) and absolute-form ones
(``GET http://100.100.100.200/latest/...``), so an SDK pointed at it as an HTTP proxy reaches
its own instance's view. As a forward proxy it also sends requests for any other host to the
gateway (the Alibaba SDKs route *all* plain-http API calls through ``HTTP_PROXY`` and ignore
``NO_PROXY``), keeping the ``Host`` header the client signed. ``CONNECT`` (HTTPS tunnels) is
refused: configure clients with ``protocol='http'``. Metadata answers come from the pure
core; this module only moves bytes.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Awaitable, Callable

import base64
import binascii
from typing import Sequence

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from services.metadata.core import MetadataCore
from services.runtime.chaos import as_seen_by
from services.runtime.clock import Clock
from services.runtime.refusals import RefusingServer

Announce = Callable[[str, str], Awaitable[None]]
AnnounceMany = Callable[[Sequence[tuple[str, str]]], Awaitable[None]]
METADATA_HOST = "100.100.100.200"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length"})
log = structlog.get_logger("metadata.http")


def refused(request: web.BaseRequest, status: int, reason: str) -> web.Response:
    """A request no HTTP parser could read, answered as the metadata service answers (plain text)."""
    return web.Response(status=status, text=f"{HTTPStatus(status).phrase}: {reason}")


def server(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> web.Server:
    """The HTTP server of a metadata view: unreadable requests get :func:`refused`."""
    return RefusingServer(handler, refused)


class Ways:
    """A way in to each instance's view (a port here; a network namespace in namespace mode),
    kept in step with the core: :meth:`reconcile` after each step opens one for every instance
    the core serves and closes the rest; ``urls`` are the open ones, as announced to ECS."""

    def __init__(self, core: MetadataCore, clock: Clock, announce: Announce, announce_many: AnnounceMany | None = None) -> None:
        self.core = core
        self.clock = clock
        self.announce = announce  # (instance_id, url) -> tell ECS where the view listens
        self.announce_many = announce_many  # [(instance_id, url), ...] -> the same, in one message (when given)
        self.urls: dict[str, str] = {}
        self._announced_at = 0
        self._unopened: set[str] = set()  # wanted, but _open could not open them yet: tried again each time

    async def reconcile(self) -> None:
        """Open a way in for every instance the core serves, close the rest; when ECS has
        (re)learnt this host, tell it again where the existing ones are. Only the instances
        whose views changed since the last call are looked at (a step costs what it changed)."""
        touched = self.core.take_touched() | self._unopened
        told: list[tuple[str, str]] = []
        if self.core.registered != self._announced_at:
            self._announced_at = self.core.registered
            told += sorted(self.urls.items())
            touched = set(self.core.views) | set(self.urls)  # everything, once per registration
        if not touched and not told:
            return
        serving = self.core.views
        for instance_id in sorted(touched):
            view = serving.get(instance_id)
            wanted = view is not None and not view.deleted
            self._unopened.discard(instance_id)
            if wanted and instance_id not in self.urls:
                url = await self._open(instance_id)
                if url:
                    self.urls[instance_id] = url
                    told.append((instance_id, url))
                else:
                    self._unopened.add(instance_id)
            elif not wanted and instance_id in self.urls:
                del self.urls[instance_id]
                await self._close(instance_id)
        if self.announce_many is not None and told:
            await self.announce_many(told)
        else:
            for instance_id, url in told:
                await self.announce(instance_id, url)

    def answer(self, instance_id: str, request: web.BaseRequest, path: str | None = None) -> web.Response:
        """The core's answer to ``request`` (at ``path``, default its own) for ``instance_id``
        (logging what the core asks to)."""
        offset = getattr(self.clock, "offsets", {}).get(instance_id, 0.0)  # a clock-skew fault on this instance
        answer = self.core.read(instance_id, request.method, request.path if path is None else path, request.headers,
                                self.clock.now() + offset)
        if answer.log is not None:
            getattr(log, answer.log.level)(answer.log.event, **answer.log.fields)
        body = as_seen_by(answer.body, offset) if offset else answer.body
        return web.Response(status=answer.status, text=body, content_type=answer.content_type)

    async def _open(self, instance_id: str) -> str:
        """Open the instance's way in; its URL ("" if it cannot be opened now)."""
        raise NotImplementedError

    async def _close(self, instance_id: str) -> None:
        raise NotImplementedError


class Listeners(Ways):
    def __init__(self, core: MetadataCore, clock: Clock, host: str, announce: Announce, gateway_url: str = "") -> None:
        super().__init__(core, clock, announce)
        self.gateway_url = gateway_url  # where absolute-form requests for other hosts go
        self._session: aiohttp.ClientSession | None = None
        self.host = host
        self._runners: dict[str, web.ServerRunner] = {}

    async def _close(self, instance_id: str) -> None:
        await self._runners.pop(instance_id).cleanup()

    async def close(self) -> None:
        for runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.BaseRequest) -> web.Response:
        """Proxy an absolute-form request for another host to the gateway, Host header intact."""
        if not self.gateway_url:
            return web.Response(status=502, text="Bad Gateway: this metadata proxy has no gateway to forward to")
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        target = URL(self.gateway_url.rstrip("/") + "/" + request.raw_path.split("/", 3)[3], encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            async with self._session.request(request.method, target, headers=headers, data=await request.read(),
                                             allow_redirects=False, skip_auto_headers=("User-Agent",)) as answer:
                body = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "content-encoding"}
                return web.Response(status=answer.status, body=body, headers=kept)
        except aiohttp.ClientError as exc:
            log.warning("proxy_forward_failed", host=request.host, error=str(exc))
            return web.Response(status=502, text=f"Bad Gateway: {exc}")

    def _previous_port(self, instance_id: str) -> int:
        """The port this instance's view was served on before (a restart keeps URLs stable), or 0."""
        view = self.core.views.get(instance_id)
        url = URL(view.endpoint_url) if view is not None and view.endpoint_url else None
        return (url.port or 0) if url is not None and url.host == self.host else 0

    async def _open(self, instance_id: str) -> str:
        async def handler(request: web.BaseRequest) -> web.Response:
            if request.method == "CONNECT":
                return web.Response(status=405, text="CONNECT is not supported: use plain http (protocol='http')")
            if request.raw_path.startswith("http://") and request.host.split(":")[0] != METADATA_HOST:
                return await self.forward(request)
            return self.answer(instance_id, request)

        runner = web.ServerRunner(server(handler), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._previous_port(instance_id))
        try:
            await site.start()
        except OSError:  # taken since: any free port (ECS learns the new URL below)
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runners[instance_id] = runner
        return f"http://{self.host}:{port}"


PROXY_AUTHORIZATION = "Proxy-Authorization"


def named_instance(request: web.BaseRequest) -> tuple[str, str]:
    """(instance id, path) of a request to a shared listener: the id is the user name of
    ``Proxy-Authorization`` (an SDK given ``http://<id>:@127.0.0.1:PORT`` as its HTTP proxy sends
    it: requests, which alibabacloud-credentials uses, sends it only when the URL has a password,
    so the empty one after the colon matters), else of ``Authorization`` (the same URL used
    directly: curl, aiohttp), else the first
    path segment (``/<id>/latest/...``), else the first label of the ``Host`` name
    (``Host: <id>.metadata``); ("", path) when none names one."""
    path = request.path
    for header in (PROXY_AUTHORIZATION, "Authorization"):
        user = _basic_user(request.headers.get(header, ""))
        if user:
            return user, path
    origin = "/" + path.split("/", 3)[3] if path.startswith("http://") and path.count("/") >= 3 else path
    first, _, rest = origin[1:].partition("/")
    if first.startswith("i-"):
        return first, "/" + rest
    label = request.headers.get("Host", "").split(".")[0].split(":")[0]
    if label.startswith("i-"):
        return label, path
    return "", path


def _basic_user(value: str) -> str:
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return ""
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


class SharedListener(Listeners):
    """Shared mode: one loopback port for every instance of the host. Each request names its
    instance (:func:`named_instance`), and is answered from that instance's view only: its URL
    ``http://<InstanceId>:@127.0.0.1:PORT`` works as an SDK's HTTP proxy (as the port-mode URL
    does) and as a base URL; ``http://127.0.0.1:PORT/<InstanceId>/latest/...`` also works.
    A request that names no instance, or one this host does not serve, is 404."""

    def __init__(self, core: MetadataCore, clock: Clock, host: str, announce: Announce, gateway_url: str = "",
                 announce_many: AnnounceMany | None = None) -> None:
        super().__init__(core, clock, host, announce, gateway_url)
        self.announce_many = announce_many
        self.port = 0
        self._runner: web.ServerRunner | None = None

    async def _start(self) -> None:
        runner = web.ServerRunner(server(self._handle), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._previous_shared_port())
        try:
            await site.start()
        except OSError:  # taken since: any free port (ECS learns the new URLs)
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        log.info("metadata_shared_listener", address=f"{self.host}:{self.port}")

    def _previous_shared_port(self) -> int:
        """The port a previous run of this agent served on (a restart keeps URLs stable), or 0."""
        for instance_id in self.core.views:
            port = self._previous_port(instance_id)
            if port:
                return port
        return 0

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        if request.method == "CONNECT":
            return web.Response(status=405, text="CONNECT is not supported: use plain http (protocol='http')")
        if request.raw_path.startswith("http://") and request.host.split(":")[0] != METADATA_HOST:
            return await self.forward(request)
        instance_id, path = named_instance(request)
        if not instance_id:
            return web.Response(status=404, text="Not Found: name the instance, as in http://<InstanceId>:@"
                                                 f"{self.host}:{self.port} or /<InstanceId>/latest/meta-data/")
        return self.answer(instance_id, request, path)

    async def _open(self, instance_id: str) -> str:
        if self._runner is None:
            await self._start()
        return f"http://{instance_id}:@{self.host}:{self.port}"

    async def _close(self, instance_id: str) -> None:
        return None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await super().close()
