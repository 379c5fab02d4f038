"""I/O shell: ``ramsim bench``: run the benchmarks of bench/ (all, or those named), one table.

bench/ is not an installed package: it lives in the repository beside ``services/``, so this
module finds it relative to the package (:func:`bench_dir`) and says clearly when ramsim is not
run from a checkout. The suite itself is bench/suite.py (what each benchmark measures: bench/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from services.cli.errors import CliError

NOT_A_CHECKOUT = ("ramsim bench needs the repository's bench/ directory, and {where} has none: ramsim is "
                  "installed from a package, not from a checkout. Clone the repository and run "
                  "`pip install -e '.[test]'` there, then `ramsim bench` again.")


def bench_dir() -> Path:
    """The checkout's bench/ directory (beside the ``services`` package), or :class:`CliError`."""
    import services

    root = Path(services.__file__).resolve().parent.parent
    found = root / "bench"
    if not (found / "suite.py").is_file():
        raise CliError(NOT_A_CHECKOUT.format(where=root))
    return found


def load(module: str) -> ModuleType:
    """A module of bench/ (``suite``, ``recording``, ...), importable once bench/ is on sys.path."""
    where = str(bench_dir())
    if where not in sys.path:
        sys.path.append(where)  # last: its plain module names (suite, machine, ...) never shadow anything
    return importlib.import_module(module)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmarks; one table; dated rows appended to BENCHMARKS.md",
        description="Run the benchmarks of the checkout's bench/ (the default suite, or the ones named), each against "
                    "its own private cluster on loopback, with progress on stderr; print one table (each figure beside "
                    "its baseline from the same run, the target and PASS/MISS) and append it, dated, with the machine "
                    "line and load average, to BENCHMARKS.md at the repository's root. --list names the benchmarks. Exit status 1 "
                    "when a benchmark could not run (its row says why), else 0, whatever the verdicts.",
        epilog="examples:\n  ramsim bench --list\n  ramsim bench --quick --no-record     # a smoke test, a minute or so\n"
               "  ramsim bench attach gets             # two of them\n  ramsim bench                         # the whole default suite",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: every default one; see --list)")
    p.add_argument("--only", default="", metavar="NAMES", help="the same as naming them: comma-separated benchmarks")
    p.add_argument("--quick", action="store_true", help="small counts and short phases, for a smoke test (rows of "
                   "10,000 instances are skipped)")
    p.add_argument("--no-record", dest="record", action="store_false", help="do not append to BENCHMARKS.md")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--seconds", type=float, default=None, help="length of each timed phase (GET load, AssumeRole "
                   "load, refresh watch), instead of each benchmark's own")
    p.add_argument("--output", type=Path, default=None, help="the file to append to (default <checkout>/BENCHMARKS.md)")


def main(args: argparse.Namespace) -> int:
    suite = load("suite")
    if args.list:
        print(suite.list_benchmarks())
        return 0
    names = [*args.names, *(n for n in args.only.split(",") if n)]
    try:
        suite.selected(names)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    if args.seconds is not None and args.seconds <= 0:
        raise CliError("--seconds must be > 0")
    output = args.output or bench_dir().parent / "BENCHMARKS.md"
    return suite.main(names, quick=args.quick, record=args.record, seconds=args.seconds, output=output,
                      command=["ramsim", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else ["ramsim", "bench"])
