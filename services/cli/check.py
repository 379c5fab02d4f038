"""I/O shell: ``ramsim check HISTORY.jsonl``: a recorded fault run held to the durability invariants."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.faults import history as fault_history, invariants


def add_parser(sub: Any) -> None:
    bounds = invariants.Bounds()
    p = sub.add_parser("check",
                       description="Check the history of a run (JSON lines, as services.faults.recorder.Recorder writes\n"
                                   "it) against the invariants of the durability issue. Prints, per invariant, how many\n"
                                   "records were checked, skipped (during a fault, not covered by probes) and violated,\n"
                                   "then each violation with its evidence. Exit status 0 when nothing is violated, 1 on\n"
                                   "any violation, 2 when the file cannot be read.",
                       epilog="invariants:\n" + "\n".join(
                           f"  {rule.__name__:28} {(rule.__doc__ or '').strip().splitlines()[0]}" for rule in invariants.INVARIANTS)
                       + "\n\nA fault window on a node of a path (or on the instance's metadata agent) makes what\n"
                         "happens from its start until --grace seconds after its end unhealthy for that path:\n"
                         "the expiry checks (credential path) and detach checks (control path) skip it.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("history", metavar="HISTORY.jsonl", type=Path, help="the recorded history")
    p.add_argument("--detach-bound", type=float, default=bounds.detach_bound, metavar="S",
                   help=f"seconds after DetachInstanceRamRole returns by which the role must be gone (default {bounds.detach_bound:g})")
    p.add_argument("--refresh-margin", type=float, default=bounds.refresh_margin, metavar="S",
                   help=f"seconds before expiry by which a fresh credential must be served (default {bounds.refresh_margin:g})")
    p.add_argument("--grace", type=float, default=bounds.grace, metavar="S",
                   help=f"recovery seconds after a fault window ends before records count again (default {bounds.grace:g})")
    p.add_argument("--credential-path", default=",".join(bounds.credential_path), metavar="NODES",
                   help="nodes issuing a credential needs; their faults excuse the expiry checks (default %(default)s)")
    p.add_argument("--control-path", default=",".join(bounds.control_path), metavar="NODES",
                   help="nodes carrying a detach to an instance; their faults excuse the detach checks (default %(default)s)")
    p.add_argument("--reply-path", default=",".join(bounds.reply_path), metavar="NODES",
                   help="nodes holding a caller's connection; their faults excuse a missing reply (default %(default)s)")
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format (default table)")


def main(args: argparse.Namespace) -> int:
    """0 when every invariant holds, 1 on any violation, 2 when the history is unreadable."""
    try:
        history = fault_history.decode_jsonl(args.history.read_bytes())
    except (OSError, fault_history.HistoryError) as exc:
        print(f"ramsim check: cannot read {args.history}: {exc}", file=sys.stderr)
        return 2
    nodes = lambda text: tuple(n.strip() for n in text.split(",") if n.strip())  # noqa: E731
    bounds = invariants.Bounds(detach_bound=args.detach_bound, refresh_margin=args.refresh_margin, grace=args.grace,
                               credential_path=nodes(args.credential_path), control_path=nodes(args.control_path),
                               reply_path=nodes(args.reply_path))
    report = invariants.check(history, bounds)
    if args.output == "json":
        import msgspec

        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        print(f"{args.history}: {len(history)} records")
        print(report.table())
    return 0 if report.ok else 1
