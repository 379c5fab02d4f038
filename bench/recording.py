"""The rows a benchmark returns, the table they print as, and BENCHMARKS.md, where they are kept.

Every benchmark (``ramsim bench`` and each ``python bench/<name>.py``) returns a list of
:class:`Row`: what was measured, its value, the baseline measured in the same run beside it,
the target and the verdict (``PASS``/``MISS``; empty when the row has no target; or why the row
was not measured, e.g. ``skipped (--quick)``). :func:`append` adds one dated section to
``BENCHMARKS.md`` (created with a short header when missing): a heading with the date and the
command, the machine line (with the load average), and a Markdown table whose every row
carries its date, so a row copied elsewhere still says when it was measured. Nothing here
measures anything; :func:`parse_table` reads a table back (tests, comparisons between runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("date", "benchmark", "measure", "value", "baseline (same run)", "target", "verdict")
HEADER = """# Benchmarks

Rows appended by `ramsim bench` (bench/README.md says what each benchmark measures and how).
Each section is one run: its date, its command, the machine it ran on and that machine's load
average when it started; each figure sits beside a baseline measured in the same run. Older
sections stay as they were: compare runs on the same machine only.
"""
VERDICTS = ("PASS", "MISS")


@dataclass(frozen=True)
class Row:
    bench: str          # the benchmark's name: attach, gets, assume, refresh, memory, startup, ...
    measure: str        # what, with its unit: "attach -> visible, 1 instance, p50 / p99 ms"
    value: str          # the figure, formatted: "4.61 / 8.61"
    baseline: str = ""  # the baseline of the same run, named: "broker pub/sub 0.27 / 0.43"
    target: str = ""    # "p99 <= 10 ms"
    verdict: str = ""   # PASS | MISS | "" (no target) | why it was not measured

    def cells(self, date: str) -> tuple[str, ...]:
        return (date, self.bench, self.measure, self.value, self.baseline, self.target, self.verdict)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row], date: str) -> str:
    """The rows as a Markdown table, each row dated ``date``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- | --- | --- | ---: | ---: | --- | --- |"]
    lines += ["| " + " | ".join(_cell(c) for c in row.cells(date)) + " |" for row in rows]
    return "\n".join(lines)


def stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def section(rows: list[Row], *, when: datetime, machine: str, command: str) -> str:
    """One run's section of BENCHMARKS.md."""
    return (f"## {stamp(when)}: `{command}`\n\n"
            f"Machine: {machine}\n\n"
            f"{markdown_table(rows, when.astimezone(timezone.utc).strftime('%Y-%m-%d'))}\n")


def append(path: Path, rows: list[Row], *, when: datetime, machine: str, command: str) -> str:
    """Append one run's section to ``path`` (made, with :data:`HEADER`, when missing); return it."""
    text = section(rows, when=when, machine=machine, command=command)
    old = path.read_text() if path.exists() else HEADER
    path.write_text(old.rstrip("\n") + "\n\n" + text)
    return text


def parse_table(text: str) -> list[dict[str, str]]:
    """Every row of every table in ``text`` with :data:`COLUMNS` as its header, as dicts."""
    found: list[dict[str, str]] = []
    header = "| " + " | ".join(COLUMNS) + " |"
    inside = False
    for line in text.splitlines():
        if line.strip() == header:
            inside = True
            continue
        if inside and line.startswith("| ---"):
            continue
        if inside and line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in _split(line.strip()[1:-1])]
            if len(cells) != len(COLUMNS):
                raise ValueError(f"a row with {len(cells)} cells, not {len(COLUMNS)}: {line}")
            found.append(dict(zip(COLUMNS, cells)))
        else:
            inside = False
    return found


def _split(inner: str) -> list[str]:
    """Split a row's inside at its unescaped ``|``."""
    cells, current, escaped = [], "", False
    for ch in inner:
        if ch == "|" and not escaped:
            cells.append(current)
            current = ""
        else:
            current += ch
        escaped = ch == "\\" and not escaped
    cells.append(current)
    return cells
