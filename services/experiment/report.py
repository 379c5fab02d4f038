"""I/O shell: an experiment's report in ``--out DIR``: report.json, report.md, history.jsonl and the plots.

``report.json`` holds the verdict, every check's result, the metrics and each fault's window.
Every time in it is simulated seconds since t=0; a sim report holds no wall-clock time and no
absolute path, so one seed gives the same bytes (keys sorted, floats as msgspec writes them).
A live engine may pass ``extra`` (its wall-clock start, say); the sim passes the simulator's
event counters. ``report.md`` is the same for a person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from services.experiment import spec as s
from services.experiment.checks import Outcome
from services.faults.history import Fault, History, encode_jsonl


def document(x: s.Experiment, outcome: Outcome, history: History, *, engine: str, seed: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    faults = [{"kind": f.kind, "target": f.target, "start": f.start, "end": f.end} for f in history.of(Fault)]
    return {
        "name": x.name, "description": x.description, "engine": engine, "seed": seed,
        "settings": msgspec.to_builtins(x.settings, enc_hook=float),
        "topology": {"hosts": x.topology.hosts, "instances": x.total_instances(), "roles": sorted(x.topology.roles)},
        "verdict": msgspec.to_builtins(outcome.verdict, enc_hook=float),
        "checks": msgspec.to_builtins(outcome.checks, enc_hook=float),
        "metrics": outcome.metrics,
        "faults": faults,
        "records": len(history),
        **({engine: extra} if extra else {}),
    }


def markdown(doc: dict[str, Any], plots: list[str], replay: str) -> str:
    v = doc["verdict"]
    lines = [f"# {doc['name']}", "", doc["description"] or "", "",
             f"**Verdict: {'as expected' if v['matches'] else 'NOT as expected'}** (expected {v['expected']}"
             + (f", failing {', '.join(v['expected_failing'])}" if v["expected_failing"] else "") + f"): {v['explanation']}.", "",
             f"Engine: {doc['engine']}, seed {doc['seed']}. Replay: `{replay}`", "",
             "## Checks", "", "| check | kind | result | detail |", "|---|---|---|---|"]
    for c in doc["checks"]:
        lines.append(f"| {c['name']} | {c['kind']} | {'pass' if c['passed'] else '**FAIL**'} | {c['detail']} |")
    for c in doc["checks"]:
        if c.get("examples"):
            lines += ["", f"{c['name']}:"] + [f"- {e}" for e in c["examples"]]
    lines += ["", "## Faults", "", "| kind | target | start (s) | healed (s) |", "|---|---|---|---|"]
    lines += [f"| {f['kind']} | {f['target']} | {f['start']:.3f} | {'-' if f['end'] is None else format(f['end'], '.3f')} |"
              for f in doc["faults"]] or ["| (none) | | | |"]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(doc["metrics"].items())]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write(out: Path, x: s.Experiment, outcome: Outcome, history: History, *, engine: str, seed: int, replay: str,
          extra: dict[str, Any] | None = None, plots: bool = True) -> dict[str, Any]:
    """Write the report files into ``out``; returns report.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    doc = document(x, outcome, history, engine=engine, seed=seed, extra=extra)
    (out / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=2) + b"\n")
    (out / "history.jsonl").write_bytes(encode_jsonl(history))
    made: list[str] = []
    if plots:
        from services.experiment import plots as p  # matplotlib only when plotting
        made = p.draw(out, x, history)
    (out / "report.md").write_text(markdown(doc, made, replay))
    return doc
