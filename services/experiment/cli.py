"""I/O shell: ``ramsim experiment run|validate|schema``: an experiment file run live or in the simulator.

``run FILE`` runs it live (the live engine, :func:`services.experiment.live.run_live`); ``--sim``
runs it in the deterministic simulator with ``--seed N`` (default: the file's). Either way the
history is checked (:mod:`services.experiment.checks`) and the report written to ``--out DIR``.
Exit status: 0 when the verdict is what the file expects, 1 when not (the checks that differ are
named; a sim run prints its seed and the command that replays it), 2 for a bad file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from services.cli.errors import CliError

DESCRIPTION = """\
Run an experiment: one YAML file declaring a topology, a timeline of control actions and faults,
and checks (see docs/experiments.md; the JSON Schema is `ramsim experiment schema`).

  ramsim experiment validate FILE              check the file; errors name the line and the field
  ramsim experiment run FILE --sim [--seed N]  run it in the deterministic simulator (virtual time)
  ramsim experiment run FILE                   run it live: real processes, real Mosquitto
  ramsim experiment schema                     print the JSON Schema of the file

The report goes to --out DIR (default experiments-out/<name>): report.json, report.md,
history.jsonl and PNG plots. Exit status: 0 the verdict is the one the file expects,
1 it is not, 2 a bad file."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("experiment", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run an experiment file (live, or --sim)", description="Run an experiment file.")
    run.add_argument("file", metavar="FILE", help="the experiment (YAML)")
    run.add_argument("--sim", action="store_true", help="run in the deterministic simulator on virtual time")
    run.add_argument("--seed", type=int, default=None, metavar="N", help="the seed (default: the file's `seed`)")
    run.add_argument("--out", type=Path, default=None, metavar="DIR", help="where the report goes (default experiments-out/<name>)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster)")
    validate = actions.add_parser("validate", help="check an experiment file", description="Check an experiment file.")
    validate.add_argument("file", metavar="FILE")
    actions.add_parser("schema", help="print the JSON Schema of experiment files", description="Print the JSON Schema.")


def _load(file: str) -> Any:
    from services.experiment import spec
    try:
        return spec.load(file)
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}") from None
    except spec.SpecError as exc:
        raise CliError("\n".join(exc.lines())) from None


def main(args: argparse.Namespace) -> int:
    if args.action == "schema":
        from services.experiment import spec
        sys.stdout.buffer.write(spec.schema_json())
        return 0
    x = _load(args.file)
    if args.action == "validate":
        print(f"{args.file}: ok ({len(x.timeline)} steps, {len(x.checks)} checks, expect {x.expect})")
        return 0
    return _run(args, x)


def replay_command(file: str, seed: int) -> str:
    shown = os.path.relpath(file) if os.path.isabs(file) else file
    return f"ramsim experiment run {shown} --sim --seed {seed}"


def _run(args: argparse.Namespace, x: Any) -> int:
    from services.experiment import checks, report
    out = args.out or Path("experiments-out") / x.name
    seed = x.seed if args.seed is None else args.seed
    with _progress(x.name, "sim" if args.sim else "live") as progress:
        if args.sim:
            from services.experiment.sim import SetupError, run_sim
            try:
                result = run_sim(x, seed, progress=progress.update if progress is not None else None)
            except SetupError as exc:
                raise CliError(str(exc)) from None
            history, extra = result.history, {"events": result.events, **result.counters}
        else:
            history, extra = _live(x, out, progress), None
    outcome = checks.evaluate(history, x)
    replay = replay_command(args.file, seed)
    report.write(out, x, outcome, history, engine="sim" if args.sim else "live", seed=seed, replay=replay, extra=extra,
                 plots=not args.no_plots)
    for c in outcome.checks:
        print(f"  {'pass' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    v = outcome.verdict
    print(f"{x.name}: {'as expected' if v.matches else 'NOT as expected'} ({v.explanation}); report in {out}")
    if args.sim and not v.matches:
        print(f"seed {seed}; replay with: {replay}")
    return 0 if v.matches else 1


def _live(x: Any, out: Path, progress: Any) -> Any:
    """The live engine (``services.experiment.live.run_live``: async, ``progress(done, line)``)."""
    import asyncio
    try:
        from services.experiment.live import LiveError, run_live
    except ImportError:
        raise CliError("the live engine (services/experiment/live.py) is not in this build; run with --sim") from None
    # run_live reports as the simulator does: progress(simulated seconds done, total, tallies)
    report = progress.update if progress is not None else (lambda done, total, tally: None)
    try:
        return asyncio.run(run_live(x, out, report))
    except LiveError as exc:
        raise CliError(f"cannot run live: {exc} (try --sim)") from None


class _progress:
    """A rich progress bar and a summary line on stderr when it is a terminal; silent otherwise."""

    def __init__(self, name: str, engine: str) -> None:
        self.name, self.engine, self.bar, self.task = name, engine, None, None

    def __enter__(self) -> "_progress | None":
        if not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn
        self.bar = Progress(TextColumn("[bold]{task.fields[name]}[/] ({task.fields[engine]})"), BarColumn(),
                            TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"), TextColumn("{task.fields[summary]}"),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        self.task = self.bar.add_task("run", total=1, name=self.name, engine=self.engine, summary="")
        return self

    def update(self, done: float, total: float, tally: dict[str, int]) -> None:
        """The simulator's report: a tally of calls, faults and probes so far."""
        calls = tally.get("calls", 0)
        rate = f"{100 * tally.get('ok', 0) / calls:.2f}% ok" if calls else "no calls yet"
        self.line(done, total, f"calls {calls} ({rate})  faults {tally.get('faults', 0)}  probes {tally.get('probes', 0)}")

    def line(self, done: float, total: float, summary: str) -> None:
        self.bar.update(self.task, completed=done, total=total, summary=summary)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
