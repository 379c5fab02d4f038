"""I/O shell: ``ramsim trace``: the messages of each trace, live from the bus or from a recording.

Live, it joins the running cluster's bus through the read-only trace tap
(:mod:`services.runtime.tap`: redacted descriptions, never a secret). ``--follow`` prints each
message as it arrives until Ctrl-C (or ``--duration``); without it, it listens for
``--duration`` seconds (or until ``--count`` messages) and prints them grouped by trace.
``--record FILE`` also appends every message, as JSON lines, for a later ``ramsim trace FILE``.

From files, it reads JSON lines: what ``--record`` wrote (trace events), or a run's history
(``services/faults/`` ``run.jsonl``, an experiment's ``--out DIR``/``history.jsonl``: its bus
events, attaches, detaches, faults and marks, which carry no trace id).

``--format mermaid`` writes a Mermaid ``sequenceDiagram``, ``--format svg`` an SVG sequence
diagram (``services/cli/sequence.py``), of the traces chosen (``--trace-id``, a prefix will do;
``--type`` keeps the traces with a message of that type), to ``--out`` or stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import IO, Iterable, Sequence

import msgspec

from protocol.trace import TraceEvent
from services.cli import sequence
from services.cli.errors import CliError

FORMATS = ("text", "mermaid", "svg")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="the messages of each trace on the bus (live or recorded), as text or a sequence diagram",
                       description=_plain(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="recorded JSON lines (--record's, a run's history, an experiment's "
                                                            "--out DIR); none: the live bus of the running cluster")
    p.add_argument("--cluster-file", help="the cluster to follow (default: $RAMSIM_CLUSTER, else .ramsim/cluster.json)")
    p.add_argument("--follow", "-f", action="store_true", help="print each message as it arrives, until Ctrl-C (or --duration)")
    p.add_argument("--duration", type=float, help="seconds to listen (live; default 5 without --follow, forever with it)")
    p.add_argument("--count", type=int, help="stop after this many messages (live)")
    p.add_argument("--trace-id", action="append", default=[], help="only this trace (an id or a prefix; repeatable)")
    p.add_argument("--type", dest="types", action="append", default=[],
                   help="only traces with a message of this type (AttachInstanceRamRole; repeatable)")
    p.add_argument("--format", choices=FORMATS, default="text", help="text (default), mermaid (a sequenceDiagram) or svg")
    p.add_argument("--out", "-o", help="write there instead of stdout")
    p.add_argument("--record", help="also append every message seen live to this JSON-lines file")
    p.add_argument("--fields", type=int, default=4, help="key fields shown per message in text (default 4)")


def main(args: argparse.Namespace) -> int:
    if args.follow and args.format != "text":
        raise CliError("--follow prints text; record with --record FILE and draw it afterwards with --format")
    if args.files:
        events = load(args.files)
    else:
        events = asyncio.run(_listen(args))
        if args.follow:
            return 0
    chosen = select(events, args.trace_id, args.types)
    if (args.trace_id or args.types) and not chosen:
        raise CliError("no trace matches --trace-id/--type" + (f" among {len(sequence.by_trace(events))} traces" if events else ""))
    _write(render(chosen, args.format, fields=args.fields), args.out)
    return 0


def render(events: Sequence[TraceEvent], fmt: str, *, fields: int = 4, title: str = "") -> str:
    if fmt == "mermaid":
        return sequence.mermaid(events, title=title)
    if fmt == "svg":
        return sequence.svg(events, title=title)
    return "\n".join(sequence.text(events, fields=fields)) + "\n" if events else "no messages\n"


def select(events: Sequence[TraceEvent], trace_ids: Sequence[str] = (), types: Sequence[str] = ()) -> list[TraceEvent]:
    """The events of the traces whose id starts with one of ``trace_ids`` and that hold a message of one of ``types``."""
    groups = sequence.by_trace(events)
    keep = {t for t, group in groups.items()
            if (not trace_ids or any(t.startswith(p) for p in trace_ids)) and (not types or any(e.type in types for e in group))}
    return [e for e in events if (e.trace_id or sequence.UNTRACED) in keep]


# -- recordings -------------------------------------------------------------------------------
_event = msgspec.json.Decoder(TraceEvent)
_encoder = msgspec.json.Encoder()


def encode(event: TraceEvent) -> bytes:
    return _encoder.encode(event) + b"\n"


def load(paths: Iterable[str]) -> list[TraceEvent]:
    """Every event of these JSON-lines files (a directory: its ``history.jsonl``, else every ``*.jsonl``)."""
    events: list[TraceEvent] = []
    for name in paths:
        path = Path(name)
        files = ([path / "history.jsonl"] if (path / "history.jsonl").exists() else sorted(path.glob("*.jsonl"))) \
            if path.is_dir() else [path]
        if not files:
            raise CliError(f"{path} holds no JSON-lines file")
        for file in files:
            try:
                lines = file.read_bytes().splitlines()
            except OSError as exc:
                raise CliError(f"cannot read {file}: {exc.strerror}") from None
            for number, raw in enumerate(lines, 1):
                if raw.strip():
                    events.append(_parse(raw, f"{file}:{number}"))
    return events


def _parse(raw: bytes, where: str) -> TraceEvent:
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise CliError(f"{where}: not JSON") from None
    if isinstance(item, dict) and "type" in item and "src" in item and "msg_id" in item:
        try:
            return _event.decode(raw)
        except msgspec.ValidationError as exc:
            raise CliError(f"{where}: not a trace event: {exc}") from None
    if isinstance(item, dict) and "type" in item:
        return from_history(item)
    raise CliError(f"{where}: neither a trace event nor a history record")


def from_history(record: dict[str, object]) -> TraceEvent:
    """A history record (``services/faults/history.py``) as a trace event: its bus events as they
    were, what the run did (attach, detach, fault, mark, writes) as messages from ``operator``."""
    kind = str(record.get("type"))
    at = float(record.get("at") or record.get("at_requested") or record.get("start") or 0.0)  # type: ignore[arg-type]
    skip = {"type", "at", "src", "name", "at_requested", "start"}
    fields = {_pascal(k): str(v) for k, v in record.items() if k not in skip and v not in ("", None, 0, 0.0, [], {})}
    fields = dict(list(fields.items())[:8])
    if kind == "Event":
        return TraceEvent(time=at, src=str(record.get("src") or "?"), dest="*", type=str(record.get("name")), msg_id=0,
                          fields=fields)
    if kind == "Probe":
        return TraceEvent(time=at, src="probe", dest=str(record.get("instance_id", "?")), type=f"Probe {record.get('status')}",
                          msg_id=0, fields=fields)
    dest = {"Attach": "ecs", "Detach": "ecs", "Fault": str(record.get("target", "*")), "Call": "oss"}.get(kind, "*")
    return TraceEvent(time=at, src="operator", dest=dest, type=kind, msg_id=0, fields=fields)


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


# -- live -------------------------------------------------------------------------------------
async def _listen(args: argparse.Namespace) -> list[TraceEvent]:
    from services.runtime.bus import BusError
    from services.runtime.tap import Tap

    duration = args.duration if args.duration is not None else (None if args.follow else 5.0)
    events: list[TraceEvent] = []
    record: IO[bytes] | None = open(args.record, "ab") if args.record else None
    out = sys.stdout
    try:
        async with Tap.for_cluster(args.cluster_file) as tap:
            # said once the tap's subscription is acknowledged: from here on, nothing is missed
            if args.follow:
                print(f"following the bus of {args.cluster_file or 'the cluster'} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            else:
                print(f"listening to the bus for {duration:g} s" + (f" or {args.count} messages" if args.count else ""),
                      file=sys.stderr, flush=True)
            deadline = None if duration is None else time.monotonic() + duration
            while args.count is None or len(events) < args.count:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                event = await tap.get(timeout=left)
                if event is None:
                    continue
                events.append(event)
                if record is not None:
                    record.write(encode(event))
                    record.flush()
                if args.follow and (not args.trace_id or any(event.trace_id.startswith(p) for p in args.trace_id)) \
                        and (not args.types or event.type in args.types):
                    print(f"{event.trace_id[:8] or '-':8}  {sequence.line(event, fields=args.fields)}", file=out, flush=True)
    except (BusError, OSError) as exc:  # the broker refused or is not there: one line
        raise CliError(str(exc)) from None
    finally:
        if record is not None:
            record.close()
    return events


def _write(text: str, out: str | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    with contextlib.suppress(FileNotFoundError):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(f"wrote {out}", file=sys.stderr)


def _plain(doc: str | None) -> str:
    """The module's docstring, after its first line, as --help prints it (no reST markup)."""
    text = (doc or "").split("\n", 2)[-1]
    return re.sub(r":(?:mod|func|class):`~?([^`]*)`", r"\1", text).replace("``", "")
