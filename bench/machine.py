"""The machine a benchmark ran on, in one line, for the results it prints and records."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path


def machine(*extra: str) -> str:
    """CPU model, cores, memory, Python, Mosquitto's version, and ``extra`` (other versions)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    memory = ""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f", {kib / 2**20:.0f} GiB"
    try:
        from services.cli.up import find_mosquitto

        mosquitto = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        mosquitto = "mosquitto ?"
    return ", ".join([f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}", mosquitto, *extra])
