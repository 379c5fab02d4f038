"""How fast the ``ramsim`` command answers: its start-up, and its own overhead on an API call.

    python bench/cli.py [--runs N]

Runs each command N times (after one warm-up run) as a new process, as a script or a tutorial
calling the CLI in a loop would, and prints p50/min/max wall milliseconds beside the baseline
of the same run, ``python -c pass`` (the interpreter's own start-up, which no CLI can beat):

  ramsim --help                 the command table only (no subcommand module is imported)
  ramsim ram --help             the RAM product's actions
  ramsim sts GetCallerIdentity  a signed call through a running cluster's gateway; its CLI
                                overhead is its wall time minus the same call made in one warm
                                process (``services.cli.api.call``), measured in the same run

Target (issue 11): ``ramsim --help`` and the CLI overhead on an API call <= 150 ms. Starts a
private cluster on loopback for the API call; every loop is bounded by --runs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402
from services.cli import api  # noqa: E402
from services.cli.up import Options, running_cluster  # noqa: E402

TARGET_MS = 150.0


def ramsim() -> list[str]:
    """The installed console script, as a user runs it (else the module)."""
    script = shutil.which("ramsim", path=str(Path(sys.executable).parent)) or shutil.which("ramsim")
    return [script] if script else [sys.executable, "-m", "services.cli"]


def timed(argv: list[str], runs: int) -> list[float]:
    subprocess.run(argv, capture_output=True, check=True, timeout=60)  # warm the page cache
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=60)
        ms.append((time.perf_counter() - t) * 1000)
    return ms


def row(name: str, ms: list[float], baseline: float, note: str = "") -> str:
    p50 = statistics.median(ms)
    return f"| {name} | {p50:.1f} | {min(ms):.1f} | {max(ms):.1f} | {p50 / baseline:.1f}x | {note} |"


async def api_overhead(runs: int) -> tuple[list[float], list[float]]:
    """(wall ms of `ramsim sts GetCallerIdentity`, ms of the same call in one warm process)."""
    with tempfile.TemporaryDirectory(prefix="ramsim-bench-cli-") as state:
        async with running_cluster(Options(state_dir=Path(state), instances=0)) as cluster:
            root = api.Credential(cluster.file.access_key_id, cluster.file.access_key_secret)
            in_process = []
            for _ in range(runs + 1):
                t = time.perf_counter()
                await asyncio.to_thread(api.call, cluster.file.gateway_url, "sts", "GetCallerIdentity", {}, root)
                in_process.append((time.perf_counter() - t) * 1000)
            cli = await asyncio.to_thread(timed, [*ramsim(), "sts", "GetCallerIdentity", "--cluster-file", str(cluster.path)], runs)
            return cli, in_process[1:]


async def run_cli(ctx) -> list:
    """``ramsim bench cli``: the command's start-up and its overhead on an API call."""
    from recording import Row, verdict
    runs = ctx.count(30, 5)
    ctx.say(f"cli: {runs} runs of each command")
    baseline = statistics.median(await asyncio.to_thread(timed, [sys.executable, "-c", "pass"], runs))
    help_ms = statistics.median(await asyncio.to_thread(timed, [*ramsim(), "--help"], runs))
    cli_ms, call_ms = await api_overhead(runs)
    overhead = statistics.median(cli_ms) - statistics.median(call_ms)
    return [Row("cli", f"`ramsim --help`, wall ms, p50 of {runs}", f"{help_ms:.1f}", f"`python -c pass` {baseline:.1f}",
                f"<= {TARGET_MS:g} ms", verdict(help_ms <= TARGET_MS)),
            Row("cli", f"CLI overhead on an API call (`ramsim sts GetCallerIdentity` minus the call in a warm process), ms, p50 of {runs}",
                f"{overhead:.1f}", f"the call in a warm process {statistics.median(call_ms):.1f}", f"<= {TARGET_MS:g} ms",
                verdict(overhead <= TARGET_MS))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (default 30)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    baseline_ms = timed([sys.executable, "-c", "pass"], args.runs)
    baseline = statistics.median(baseline_ms)
    help_ms = timed([*ramsim(), "--help"], args.runs)
    product_ms = timed([*ramsim(), "ram", "--help"], args.runs)
    cli_ms, call_ms = asyncio.run(api_overhead(args.runs))
    overhead = statistics.median(cli_ms) - statistics.median(call_ms)
    verdict = lambda ms: "PASS" if ms <= TARGET_MS else "MISS"  # noqa: E731
    print(f"Machine: {machine()}\n{args.runs} runs each, wall milliseconds; `{' '.join(ramsim())}`\n")
    print("| command | p50 | min | max | / baseline p50 | target <= 150 ms |\n| --- | ---: | ---: | ---: | ---: | --- |")
    print(row("baseline: `python -c pass`", baseline_ms, baseline))
    print(row("`ramsim --help`", help_ms, baseline, verdict(statistics.median(help_ms))))
    print(row("`ramsim ram --help`", product_ms, baseline))
    print(row("`ramsim sts GetCallerIdentity` (whole call)", cli_ms, baseline))
    print(row("the same call in one warm process", call_ms, baseline))
    print(f"\nCLI overhead on an API call (p50 whole call - p50 in-process call): {overhead:.1f} ms: {verdict(overhead)}")
    return 0 if verdict(statistics.median(help_ms)) == verdict(overhead) == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
