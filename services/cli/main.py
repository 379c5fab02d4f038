"""I/O shell: the ``ramsim`` command line.

Each subcommand lives in its own module, which has ``add_parser(sub)`` (its arguments) and
``main(args) -> int``; :data:`COMMANDS` names them. Only the module of the command that runs
is imported, so ``ramsim --help`` loads none of them and a call such as ``ramsim ram ListRoles``
loads only the small API client. A user mistake or a missing piece is a
:class:`~services.cli.errors.CliError`: one line on stderr and an exit status, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from protocol.products import VERSIONS
from services.cli.errors import CliError

# name: (module, one line for `ramsim --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("services.cli.up", "start (or resume) a cluster (private Mosquitto + every service, supervised); run until Ctrl-C"),
    "demo": ("services.cli.demo", "walk the seed's nine steps, narrated (starts its own cluster if none is running)"),
    "tour": ("services.cli.tour", "the nine steps one at a time: each call's messages on the bus, the moments that teach (Enter; --auto)"),
    "instances": ("services.cli.instances", "list instances and the URL of each one's metadata view"),
    "metadata": ("services.cli.instances", "GET a metadata path as an instance sees it at http://100.100.100.200"),
    "app": ("services.cli.app", "run an application on an instance: OSS calls with its role's credentials, measured"),
    "trace": ("services.cli.trace", "the messages of each trace (live bus or a recording) as text, a Mermaid or an SVG sequence diagram"),
    "deploy": ("services.cli.deploy", "compose.yaml's helpers: secrets (env files, on the host), broker, init and health (in containers)"),
    "check": ("services.cli.check", "check a recorded fault-run history (JSON lines) against the durability invariants"),
    "bench": ("services.cli.bench", "run the benchmarks (or those named); one table, dated rows appended to BENCHMARKS.md"),
    "soak": ("services.faults.soak", "random faults (kill -9, broker restarts, pauses) for minutes, then the checker"),
    "experiment": ("services.experiment.cli", "run an experiment file (timeline of actions and faults, checks) live or --sim; a verdict and plots"),
    **{product: ("services.cli.product", f"call {product.upper()} API version {version}, like Alibaba's aliyun CLI")
       for product, version in sorted(VERSIONS.items())},
}

EPILOG = """examples:
  ramsim demo                               # the nine steps against a private cluster, then it stops
  ramsim up --instances 2 --time-scale 60
  ramsim up --state-dir ~/ramsim            # again later: resumes that cluster; --reset starts a new one
  ramsim ram CreateRole --RoleName MyApplicationRole --AssumeRolePolicyDocument "$(cat trust.json)"
  ramsim ecs AttachInstanceRamRole --RegionId cn-hangzhou --RamRoleName MyApplicationRole --InstanceIds '["i-..."]'
  ramsim metadata i-... /latest/meta-data/ram/security-credentials/
  ramsim app i-... --rate 20 --duration 30
  ramsim check run.jsonl --detach-bound 1 --grace 5
  ramsim soak --minutes 10 --seed 7
  ramsim experiment run deploy/experiments/slow-sts.yaml --sim --seed 3
`ramsim COMMAND --help` tells more. The cluster is found with --cluster-file, else $RAMSIM_CLUSTER,
else .ramsim/cluster.json."""


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser, with ``chosen``'s arguments in full and every other command as a name and a line."""
    parser = argparse.ArgumentParser(prog="ramsim", description="A working simulation of Alibaba Cloud RAM roles for ECS instances.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if chosen in COMMANDS:
        importlib.import_module(COMMANDS[chosen][0]).add_parser(sub)
    for name, (_, line) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=line, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = _parser(chosen)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command in VERSIONS:
        args.extra = extra  # --Name value pairs: the API's parameters
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return importlib.import_module(COMMANDS[args.command][0]).main(args)
    except CliError as exc:
        print(exc.line(args.command), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
