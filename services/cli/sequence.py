"""Pure core: a trace's messages as a sequence: text lines, a Mermaid ``sequenceDiagram``, an SVG.

A sequence (Lamport) diagram, as Maelstrom draws a distributed protocol: each node is a
lifeline, time flows down, each message is an arrow from its sender to its receiver, labelled
with its type and key fields. Direct messages go to their ``dest``; a push on a host's topic
goes to that host's metadata agent; a broadcast event goes to the :data:`EVENTS` lifeline (every
subscriber hears it). Replies are dashed, errors red. Messages are drawn in the order they were
seen (one tap connection sees them in the order the broker routed them), not sorted by the
senders' clocks, which are not one clock.

The SVG is written here, with no library and no browser: a header box and a dashed line per
lifeline (``<g class="lifeline">``), one ``<g class="message">`` (a line with an arrowhead and a
label) per message. Everything here is a function of its input.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

from protocol import topics
from protocol.trace import TraceEvent

EVENTS = "(events)"  # the lifeline broadcasts go to
UNTRACED = "(untraced)"
COLUMN = 170   # px between lifelines
ROW = 34       # px between messages
TOP = 60       # px above the first message (the headers)
MARGIN = 20
LABEL_CHARS = 44
ORDER = ("cli", "operator", "app", "gateway", "ram", "sts", "ecs", "oss")  # lifelines left to right, then the rest by first use


def receiver(event: TraceEvent) -> str:
    """Who a message went to: its ``dest``, a host's agent for a push to a host, or :data:`EVENTS`."""
    if event.dest != "*":
        return event.dest
    levels = event.topic.split("/")
    if len(levels) == 6 and topics.matches(topics.host_instances(), event.topic):
        return f"metadata-{levels[3]}"
    return EVENTS


def is_reply(event: TraceEvent) -> bool:
    return event.in_reply_to is not None


def by_trace(events: Iterable[TraceEvent]) -> dict[str, list[TraceEvent]]:
    """Events grouped by trace id, traces in the order first seen (untraced ones under :data:`UNTRACED`)."""
    grouped: dict[str, list[TraceEvent]] = {}
    for event in events:
        grouped.setdefault(event.trace_id or UNTRACED, []).append(event)
    return grouped


def lifelines(events: Sequence[TraceEvent]) -> list[str]:
    """The nodes of ``events``: the well-known ones in :data:`ORDER`, then others as first seen, events last."""
    seen: list[str] = []
    for event in events:
        for node in (event.src, receiver(event)):
            if node not in seen:
                seen.append(node)
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(seen, key=lambda n: (n == EVENTS, rank.get(n, len(rank)), seen.index(n)))


def key_fields(event: TraceEvent, limit: int = 4) -> str:
    return " ".join(f"{k}={v}" for k, v in list(event.fields.items())[:limit])


def clock(t: float) -> str:
    """A (simulated) epoch time as ``HH:MM:SS.mmm`` UTC."""
    if t <= 0:
        return "--:--:--.---"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def text(events: Sequence[TraceEvent], *, fields: int = 4) -> list[str]:
    """One line per message: ``time  src → dest  Type  Key=value ...``, traces headed by their id."""
    lines: list[str] = []
    for trace_id, group in by_trace(events).items():
        lines.append(f"trace {trace_id} ({len(group)} message{'s' if len(group) != 1 else ''})")
        lines += ["  " + line(e, fields=fields) for e in group]
    return lines


def line(event: TraceEvent, *, fields: int = 4) -> str:
    arrow = "⇠" if is_reply(event) else "→"
    detail = key_fields(event, fields)
    return f"{clock(event.time)}  {event.src} {arrow} {receiver(event)}  {event.type}" + (f"  {detail}" if detail else "")


def _label(event: TraceEvent, chars: int = LABEL_CHARS) -> str:
    detail = key_fields(event, 2)
    label = f"{event.type} {detail}".strip()
    return label if len(label) <= chars else label[: chars - 1] + "…"


def mermaid(events: Sequence[TraceEvent], *, title: str = "") -> str:
    """A Mermaid ``sequenceDiagram`` of ``events`` (participants get safe ids, their names as aliases)."""
    nodes = lifelines(events)
    ids = {name: f"p{i}" for i, name in enumerate(nodes)}
    out = ["sequenceDiagram"]
    if title:
        out.append(f"    title {_mermaid_text(title)}")
    out += [f"    participant {ids[n]} as {_mermaid_text(n)}" for n in nodes]
    for event in events:
        arrow = "-->>" if is_reply(event) else "->>"
        if event.type == "Error":
            arrow = "--x"
        out.append(f"    {ids[event.src]}{arrow}{ids[receiver(event)]}: {_mermaid_text(_label(event, 80))}")
    return "\n".join(out) + "\n"


def _mermaid_text(value: str) -> str:
    # ';' ends a statement and '#' starts an entity in Mermaid; keep labels on one line
    return " ".join(value.replace(";", ",").replace("#", "no.").split())


def svg(events: Sequence[TraceEvent], *, title: str = "") -> str:
    """A self-contained SVG sequence diagram of ``events``."""
    nodes = lifelines(events)
    x = {name: MARGIN + COLUMN // 2 + i * COLUMN for i, name in enumerate(nodes)}
    width = max(2 * MARGIN + COLUMN * max(len(nodes), 1), 320)
    top = TOP + (24 if title else 0)
    height = top + ROW * (len(events) + 1) + MARGIN
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="sans-serif" font-size="11">',
           "<defs>",
           '<marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
           '<path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker>',
           "</defs>",
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text class="title" x="{MARGIN}" y="{MARGIN + 4}" font-size="14" font-weight="bold">{escape(title)}</text>')
    header = top - 40
    for name in nodes:
        cx = x[name]
        out.append(f'<g class="lifeline" data-node={quoteattr(name)}>'
                   f'<rect x="{cx - COLUMN // 2 + 8}" y="{header}" width="{COLUMN - 16}" height="24" rx="4" fill="#eef3fb" stroke="#4a6fa5"/>'
                   f'<text x="{cx}" y="{header + 16}" text-anchor="middle" font-weight="bold">{escape(name)}</text>'
                   f'<line x1="{cx}" y1="{header + 24}" x2="{cx}" y2="{height - MARGIN}" stroke="#999" stroke-dasharray="4 4"/>'
                   "</g>")
    for i, event in enumerate(events):
        y = top + ROW * (i + 1)
        x1, x2 = x[event.src], x[receiver(event)]
        colour = "#c0392b" if event.type == "Error" else ("#555" if is_reply(event) else "#1f4e8c")
        dash = ' stroke-dasharray="6 3"' if is_reply(event) else ""
        if x1 == x2:  # a node to itself: a small loop
            path = f'<path d="M {x1} {y - 8} h 30 v 12 h -30" fill="none" stroke="{colour}"{dash} marker-end="url(#head)"/>'
            lx, anchor = x1 + 34, "start"
        else:
            path = f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}"{dash} marker-end="url(#head)"/>'
            lx, anchor = (x1 + x2) / 2, "middle"
        tip = escape(f"{clock(event.time)} {event.src} -> {receiver(event)} {event.type} {key_fields(event, 10)}".strip())
        out.append(f'<g class="message" data-type={quoteattr(event.type)} data-src={quoteattr(event.src)} '
                   f'data-dest={quoteattr(receiver(event))}><title>{tip}</title>{path}'
                   f'<text x="{lx}" y="{y - 5}" text-anchor="{anchor}" fill="{colour}" stroke="white" stroke-width="3" '
                   f'paint-order="stroke">{escape(_label(event))}</text>'
                   f'<text x="{MARGIN - 14}" y="{y + 4}" font-size="9" fill="#999">{i + 1}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
