"""Fixtures shared by all tests: a private Mosquitto on a free loopback port.

The broker is a subprocess, so it works with any event-loop scope; each test that needs its
own broker (restart tests) uses ``broker_factory``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from services.cli.up import find_mosquitto, free_port, mosquitto_conf

# Never let an SDK or client in a test reach the real 100.100.100.200: default credential chains
# leave the ECS provider out, and any socket in this process refuses to connect there.
os.environ.setdefault("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
METADATA_ADDRESS = "100.100.100.200"
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


class RealMetadataAddressDialled(ConnectionRefusedError):
    """A test tried to reach the real metadata address instead of a simulated one."""


def _guard(address: object) -> None:
    if isinstance(address, tuple) and address and address[0] == METADATA_ADDRESS:
        raise RealMetadataAddressDialled(f"refused: a test tried to connect to the real {METADATA_ADDRESS}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _guard(address)
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _guard(address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@dataclass
class Broker:
    port: int
    conf: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on {self.port}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def _broker(tmp: Path) -> Broker:
    port = free_port()
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    conf = tmp / "mosquitto.conf"
    conf.write_text(mosquitto_conf(port, tmp))
    return Broker(port, conf)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = _broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Broker] = []

    def make() -> Broker:
        b = _broker(tmp_path / f"broker{len(made)}")
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
