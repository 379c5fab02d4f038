"""The OSS HTTP front in process (a stub bus client): the benchmark-only switch that skips
authentication and authorization serves the same path, and is off unless asked for."""

from __future__ import annotations

import email.utils
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from protocol.errors import Error
from services.oss import app, core
from services.oss.http import OssHttp
from services.oss.store import Store
from services.runtime.clock import ScaledClock


class RefusingBus:
    """Answers every authentication with an unknown key, and counts the requests."""

    def __init__(self) -> None:
        self.requests = 0

    async def request(self, dest: str, body: object, **_: object) -> Error:
        self.requests += 1
        return Error(code="InvalidAccessKeyId.NotFound", message="no such key")


async def _serve(tmp_path: Path, authorize: bool) -> tuple[web.ServerRunner, str, RefusingBus, Store]:
    bus = RefusingBus()
    store = Store(tmp_path / "oss")
    front = OssHttp(core.OssCore(account_id="1234567890123456", region_id="cn-hangzhou"), store, bus, ScaledClock(),  # type: ignore[arg-type]
                    authorize=authorize)
    runner = web.ServerRunner(web.Server(front.handle), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", bus, store  # type: ignore[union-attr]


def _call(url: str, method: str = "GET", data: bytes | None = None, signed: bool = True) -> tuple[int, bytes]:
    headers = {"Date": email.utils.formatdate(time.time(), usegmt=True)}
    if signed:
        headers["Authorization"] = "OSS LTAIunknown:c2lnbmF0dXJl"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method=method, data=data, headers=headers), timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.parametrize("authorize", [True, False])
async def test_the_benchmark_baseline_skips_authentication_and_nothing_else(tmp_path: Path, authorize: bool) -> None:
    import asyncio
    runner, url, bus, store = await _serve(tmp_path, authorize)
    try:
        put = await asyncio.to_thread(_call, url + "/bench-bucket", "PUT", b"")
        if authorize:  # the normal service: STS/RAM refuse the key, nothing is created
            assert put[0] == 403 and b"<Code>InvalidAccessKeyId</Code>" in put[1] and bus.requests == 1
            assert store.bucket("bench-bucket") is None
            return
        assert put[0] == 200 and bus.requests == 0
        assert (await asyncio.to_thread(_call, url + "/bench-bucket/k", "PUT", b"1 KiB"))[0] == 200
        assert await asyncio.to_thread(_call, url + "/bench-bucket/k") == (200, b"1 KiB")
        # Still parsed and validated as ever: names, and a request must carry a signature at all.
        assert (await asyncio.to_thread(_call, url + "/Bad_Bucket/k"))[0] == 400
        status, body = await asyncio.to_thread(_call, url + "/bench-bucket/k", "GET", None, False)
        assert status == 403 and b"<Code>AccessDenied</Code>" in body
        assert bus.requests == 0
    finally:
        await runner.cleanup()
        store.close()


def test_the_switch_is_one_variable_and_off_by_default() -> None:
    assert app.NO_AUTH_VARIABLE == "RAMSIM_OSS_AUTHORIZE"
    assert OssHttp.__init__.__kwdefaults__["authorize"] is True
