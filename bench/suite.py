"""The benchmark suite behind ``ramsim bench``: which benchmarks exist, running them, one table.

Each benchmark is an ``async def run(ctx) -> list[Row]`` in a module of this directory
(:data:`BENCHMARKS` names them); ``python bench/<module>.py`` calls the same function. A
benchmark that fails becomes one row saying so (the others still run). The table goes to
stdout: a rich table on a terminal, else the Markdown table BENCHMARKS.md gets (plain, one
line a row, for pipes and tests). Progress goes to stderr: a rich progress bar on a
terminal, else one line a phase.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's services/, before any installed copy
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))  # bench/'s plain module names (machine, recording, ...) never shadow anything

from recording import Row, append, markdown_table  # noqa: E402


# name: (module in bench/, one line, in the default suite)
BENCHMARKS: dict[str, tuple[str, str, bool]] = {
    "attach": ("attach", "attach -> visible p50/p99 for 1, 100 (one batch) and 10,000 instances; broker pub/sub floor", True),
    "gets": ("throughput", "credential GETs/s from one agent hosting 1 and 10,000 instances; bare aiohttp, moto", True),
    "assume": ("throughput", "AssumeRole/s over the bus (concurrent callers) and through the gateway; moto's STS", True),
    "refresh": ("scale", "refreshes/s at 10,000 instances, --time-scale 60; credentials served expired (must be 0)", True),
    "memory": ("scale", "RSS of each process per 1,000 hosted instances", True),
    "startup": ("scale", "`ramsim up` to ready for 100, 1,000 and 10,000 instances; 0 instances as the baseline", True),
    "policy": ("policy", "RAM policy decisions/s (one core) beside a naive fnmatch evaluator", False),
    "latency": ("latency", "bus ping, API call, attach/detach/policy change: Mosquitto beside the in-memory bus", False),
    "oss": ("oss", "1 KiB OSS GETs/s with an STS token beside no authorization; policy change -> next GET", False),
    "cli": ("cli", "`ramsim --help` and the CLI's overhead on an API call, beside `python -c pass`", False),
    "sim": ("sim", "the simulator: 10,000 instances for a simulated day, beside a bare heapq loop", False),
}


@dataclass
class Context:
    """What every benchmark is told: how big to go, where to put files, how to say progress."""

    quick: bool = False
    workdir: Path = Path(".")
    say: Callable[[str], None] = field(default=lambda line: None)
    seconds: float | None = None  # --seconds: the length of each timed phase (else each benchmark's own)
    options: dict = field(default_factory=dict)  # a script's own knobs (bench/throughput.py: connections, callers, loadgen)

    def phase(self, full: float, quick: float) -> float:
        return self.seconds if self.seconds is not None else (quick if self.quick else full)

    def count(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def selected(names: list[str]) -> list[str]:
    """The benchmarks to run, in :data:`BENCHMARKS` order (all default ones when none is named)."""
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise KeyError(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if (n in names if names else BENCHMARKS[n][2])]


async def run_one(name: str, ctx: Context) -> list[Row]:
    module = importlib.import_module(BENCHMARKS[name][0])
    function = getattr(module, f"run_{name}", None) or module.run
    try:
        return await function(ctx)
    except Exception as exc:  # noqa: BLE001 - one benchmark's failure is its row, not the suite's end
        ctx.say(f"{name} failed: {exc!r}\n{traceback.format_exc()}")
        return [Row(name, "(the benchmark)", "", "", "", f"error: {type(exc).__name__}: {exc}"[:200])]


async def run(names: list[str], ctx: Context, on_done: Callable[[str], None] = lambda name: None) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        ctx.say(f"{name}: starting")
        started = time.monotonic()
        rows += await run_one(name, ctx)
        ctx.say(f"{name}: done in {time.monotonic() - started:.1f} s")
        on_done(name)
    return rows


def machine_line() -> str:
    """bench/machine.py's line with the tools' versions and the load average before the run."""
    from machine import machine
    from throughput import package_version, wrk_version

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return machine(f"aiohttp {package_version('aiohttp')}", wrk_version(), f"moto {package_version('moto')}",
                   f"load average {load} at the start")


def print_table(rows: list[Row], date: str, *, rich: bool) -> None:
    if not rich:
        print(markdown_table(rows, date), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ramsim bench, {date}", show_lines=False)
    for name, justify in (("benchmark", "left"), ("measure", "left"), ("value", "right"),
                          ("baseline (same run)", "right"), ("target", "left"), ("verdict", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        style = {"PASS": "green", "MISS": "bold red"}.get(row.verdict, "yellow" if row.verdict else "")
        table.add_row(row.bench, row.measure, row.value, row.baseline, row.target, f"[{style}]{row.verdict}[/]" if style else "")
    Console().print(table)


def list_benchmarks() -> str:
    return "\n".join(f"{name:<9} {'default' if default else 'extra  '}  {line}" for name, (_, line, default) in BENCHMARKS.items())


def main(names: list[str], *, quick: bool, record: bool, seconds: float | None, output: Path, command: list[str]) -> int:
    """``ramsim bench``: run ``names`` (else the default suite), print one table, append to ``output``."""
    chosen = selected(names)
    from services.runtime import logs
    logs.configure(level="error")
    when = datetime.now(timezone.utc)
    machine = machine_line()
    terminal = sys.stderr.isatty()
    print(f"machine: {machine}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="ramsim-bench-") as tmp:
        if terminal:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("ramsim bench", total=len(chosen))

                def say(line: str) -> None:
                    first = line.splitlines()[0] if line else line
                    progress.update(task, description=f"ramsim bench: {first[:100]}")
                    if " failed: " in first:
                        progress.console.print(line)

                ctx = Context(quick=quick, workdir=Path(tmp), say=say, seconds=seconds)
                rows = asyncio.run(run(chosen, ctx, lambda name: progress.advance(task)))
        else:
            ctx = Context(quick=quick, workdir=Path(tmp), seconds=seconds,
                          say=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
            rows = asyncio.run(run(chosen, ctx))
    print_table(rows, when.strftime("%Y-%m-%d"), rich=sys.stdout.isatty())
    if record:
        append(output, rows, when=when, machine=machine, command=shlex.join(command))
        print(f"appended {len(rows)} rows to {output}", file=sys.stderr, flush=True)
    failed = [r.bench for r in rows if r.verdict.startswith("error")]
    if failed:
        print(f"ramsim bench: {', '.join(dict.fromkeys(failed))} failed (see its row and the lines above)", file=sys.stderr, flush=True)
    return 1 if failed else 0  # a MISS is a measurement, not a failure


async def standalone(names: list[str], ctx: Context | None = None) -> list[Row]:
    """For ``python bench/<x>.py``: run ``names`` with progress lines on stderr, print the table."""
    from services.runtime import logs
    logs.configure(level="error")
    print(f"machine: {machine_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ramsim-bench-") as tmp:
        ctx = ctx or Context()
        ctx.workdir = Path(tmp)
        ctx.say = lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True)
        rows = await run(names, ctx)
    print_table(rows, datetime.now(timezone.utc).strftime("%Y-%m-%d"), rich=sys.stdout.isatty())
    return rows
