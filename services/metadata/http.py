"""I/O shell: one HTTP listener per instance, each standing in for that instance's view of
``http://100.100.100.200`` (a port stands in for the instance's source address).

Each listener answers origin-form requests (``GET /latest/...``) and absolute-form ones
(``GET http://100.100.100.200/latest/...``), so an SDK pointed at it as an HTTP proxy reaches
its own instance's view. Answers come from the pure core; this module only moves bytes.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from services.metadata.core import MetadataCore
from services.runtime.clock import Clock

Announce = Callable[[str, str], Awaitable[None]]


class Listeners:
    def __init__(self, core: MetadataCore, clock: Clock, host: str, announce: Announce) -> None:
        self.core = core
        self.clock = clock
        self.host = host
        self.announce = announce  # (instance_id, url) -> tell ECS where the view listens
        self.urls: dict[str, str] = {}
        self._runners: dict[str, web.ServerRunner] = {}
        self._announced_at = 0

    async def reconcile(self) -> None:
        """Open a listener for every instance the core serves, close the rest."""
        wanted = self.core.serving()
        for instance_id in sorted(wanted - self._runners.keys()):
            await self._open(instance_id)
        for instance_id in sorted(self._runners.keys() - wanted):
            await self._runners.pop(instance_id).cleanup()
            self.urls.pop(instance_id, None)
        if self.core.registered != self._announced_at:  # ECS (re)learnt this host: tell it again
            self._announced_at = self.core.registered
            for instance_id, url in sorted(self.urls.items()):
                await self.announce(instance_id, url)

    async def close(self) -> None:
        for runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()

    async def _open(self, instance_id: str) -> None:
        async def handler(request: web.BaseRequest) -> web.Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            answer = self.core.read(instance_id, request.method, request.path, headers, self.clock.now())
            return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type)

        runner = web.ServerRunner(web.Server(handler), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runners[instance_id] = runner
        self.urls[instance_id] = f"http://{self.host}:{port}"
        await self.announce(instance_id, self.urls[instance_id])
