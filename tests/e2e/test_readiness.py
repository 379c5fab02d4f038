"""A node answers Ping with PingOk only once it serves all it offers: ``ramsim up`` calls the
cluster ready on those answers, and callers come at once. The gateway and OSS used to answer
as soon as their bus client started, before their HTTP port listened, so a caller that came
right after "ready" could be refused a connection (what broke tests/fuzz/test_http_fuzz.py's
cluster fixture now and then). Here their port is taken, so they can never listen: they must
never say PingOk, only "starting", until they give up."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.errors import Error
from protocol.messages.common import Ping, PingOk
from services.runtime.client import BusClient
from services.runtime.clock import ScaledClock
from services.runtime.mqtt_bus import MqttBus
from tests.conftest import Broker


@pytest.mark.parametrize("node", ["gateway", "oss"])
async def test_a_front_whose_http_port_is_taken_never_says_it_is_ready(node: str, broker: Broker, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = {**os.environ, "RAMSIM_BROKER_URL": broker.url, "RAMSIM_STATE_DIR": str(tmp_path),
           "RAMSIM_HTTP_PORT": str(taken.getsockname()[1]), "RAMSIM_LOG_FORMAT": "json"}
    bus = await MqttBus.connect(broker.url, f"readiness-{node}-{os.getpid()}", persistent=False)
    answers: list[object] = []
    try:
        client = await BusClient(bus, f"tester-{node}", ScaledClock()).start()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{node}", env=env,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        async def ask() -> None:
            answers.append(await client.request(node, Ping(), timeout=1.0))

        asking: list[asyncio.Task[None]] = []
        while proc.returncode is None and len(asking) < 20_000:  # bounded: a Ping every millisecond while it lives
            asking.append(asyncio.ensure_future(ask()))
            await asyncio.sleep(0.001)
        await asyncio.wait_for(proc.wait(), 30)
        await asyncio.gather(*asking)
        stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
    finally:
        taken.close()
        await bus.close()
    assert proc.returncode != 0 and "address already in use" in stderr.lower(), stderr[-800:]
    assert not [a for a in answers if isinstance(a, PingOk)], "said it was ready without listening"
    starting = [a for a in answers if isinstance(a, Error) and a.code == "ServiceUnavailable"]
    assert starting, {type(a).__name__ for a in answers}  # it did answer while its bus was up: "starting"
