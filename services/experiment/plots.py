"""I/O shell: an experiment's plots (matplotlib, Agg backend; PNGs in the report's directory).

* ``timeline.png``: fault windows shaded per target, timeline steps and ECS events marked;
* ``latency_cdf.png``: CDFs of attach-to-visible and of refresh latency (due -> visible);
* ``app_success.png``: the workload's success rate per time bucket, fault windows shaded;
* ``credentials.png``: per instance (the first 40), each credential's life from visible to
  expiry as a bar: rotations show as bars that overlap (the old one still valid).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from services.experiment import spec as s
from services.experiment.checks import attach_latencies, rotations, sightings
from services.faults.history import Call, Event, Fault, History, Mark

SHOWN_INSTANCES = 40
SHOWN_STEPS = 24  # timeline steps the timeline's legend spells out
COLORS = {"kill": "#d62728", "restart": "#ff7f0e", "pause": "#9467bd", "link": "#1f77b4", "message": "#2ca02c",
          "clock_skew": "#8c564b", "api_errors": "#e377c2"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "ramsim"
    return plt


def _save(fig, path: Path) -> None:
    """Lay out (a legend outside the axes may leave tight_layout short of room: it warns, and
    bbox_inches="tight" still keeps everything in the picture) and write the PNG."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _span(f: Fault, end: float) -> tuple[float, float]:
    """A fault window, at least 0.4% of the run wide (a kill healed in 1 s must still show)."""
    stop = f.end if f.end is not None else end
    return f.start, max(stop, f.start + end * 0.004)


def _shade(ax, history: History, end: float) -> None:
    for f in history.of(Fault):
        ax.axvspan(*_span(f, end), color=COLORS.get(f.kind, "grey"), alpha=0.15, lw=0)


def _fault_handles(history: History, alpha: float) -> list:
    """Legend entries: one patch per fault kind in the run."""
    from matplotlib.patches import Patch
    kinds = sorted({f.kind for f in history.of(Fault)})
    return [Patch(color=COLORS.get(k, "grey"), alpha=alpha, label=f"{k} window") for k in kinds]


def timeline(plt, path: Path, history: History, end: float) -> None:
    faults = history.of(Fault)
    targets = sorted({f.target for f in faults}) or ["(no faults)"]
    steps = min(len(history.of(Mark)), SHOWN_STEPS + 1)
    fig, ax = plt.subplots(figsize=(12, max(2.6 + 0.5 * len(targets), 1.2 + 0.16 * (steps + 8))))
    for row, target in enumerate(targets):
        for f in (f for f in faults if f.target == target):
            start, stop = _span(f, end)
            ax.barh(row, stop - start, left=start, height=0.5, color=COLORS.get(f.kind, "grey"), alpha=0.7)
    handles = _fault_handles(history, 0.7)
    marks = history.of(Mark)
    for n, m in enumerate(marks, 1):  # numbered above the axes; the legend says what each number was
        ax.axvline(m.at, color="black", lw=0.6, ls="--")
        ax.text(m.at, 1.01, str(n), transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
    if marks:
        handles.append(ax.plot([], [], color="black", lw=0.6, ls="--", label="timeline step (numbered):")[0])
        for n, m in list(enumerate(marks, 1))[:SHOWN_STEPS]:
            handles.append(ax.plot([], [], " ", label=f"{n}  t={m.at:g}s {m.text[:64]}")[0])
        if len(marks) > SHOWN_STEPS:
            handles.append(ax.plot([], [], " ", label=f"... {len(marks) - SHOWN_STEPS} more (history.jsonl: Mark)")[0])
    refreshes = [e.at for e in history.of(Event) if e.name == "InstanceCredentialsRefreshed"]
    if refreshes:
        handles.append(ax.plot(refreshes, [-0.6] * len(refreshes), "|", color="green", ms=6, label="credential refreshed")[0])
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlim(0, end)
    ax.set_ylim(-1, len(targets))
    ax.set_xlabel("simulated seconds since t=0")
    ax.set_ylabel("fault target")
    ax.set_title("Timeline: fault windows, steps (dashed), refreshes", pad=16)
    _save(fig, path)
    plt.close(fig)


def latency_cdf(plt, path: Path, history: History, x: s.Experiment) -> None:
    seen = sightings(history)
    series = {"attach to visible": [v for v in attach_latencies(history, seen) if v != float("inf")],
              "refresh due to visible": [new.at - (old.expiration - x.settings.refresh_before) for old, new in rotations(seen)]}
    from matplotlib.ticker import FuncFormatter
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = 0
    for label, values in series.items():
        if values:
            ordered = [max(v * 1000, 0.01) for v in sorted(values)]  # a log axis: at least 10 us
            p99 = ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]
            line = ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post",
                           label=f"{label} (n={len(ordered)}, p99 {p99:,.1f} ms)")[0]
            ax.axvline(p99, color=line.get_color(), lw=0.6, ls=":")
            drawn += 1
    ax.axhline(0.99, color="grey", lw=0.6, ls="--", label="0.99 (p99)")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.10g}")
    ax.xaxis.set_major_formatter(plain)
    low, high = ax.get_xlim()
    if drawn and high / low < 30:  # less than a decade or so: label the minor ticks too, plainly
        ax.xaxis.set_minor_formatter(plain)
    else:
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("latency, milliseconds (simulated; log scale)")
    ax.set_ylabel("fraction at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Latency CDFs" + ("" if drawn else " (nothing measured)"))
    _save(fig, path)
    plt.close(fig)


def app_success(plt, path: Path, history: History, end: float) -> None:
    bucket = max(end / 100, 1.0)
    total: dict[int, int] = defaultdict(int)
    ok: dict[int, int] = defaultdict(int)
    for c in history.of(Call):
        k = int(c.at // bucket)
        total[k] += 1
        ok[k] += c.outcome == "ok"
    fig, ax = plt.subplots(figsize=(12, 3.5))
    _shade(ax, history, end)
    keys = sorted(total)
    ax.plot([k * bucket for k in keys], [100 * ok[k] / total[k] for k in keys], drawstyle="steps-post", color="black",
            label="calls ok")
    ax.legend(handles=[*ax.get_legend_handles_labels()[0], *_fault_handles(history, 0.15)], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, end)
    ax.set_xlabel("simulated seconds since t=0")
    ax.set_ylabel(f"% calls ok per {bucket:g}s")
    ax.set_title("Application success rate" + ("" if keys else " (no calls)"))
    _save(fig, path)
    plt.close(fig)


def credentials(plt, path: Path, history: History, end: float) -> None:
    seen = sightings(history)
    instances = sorted(seen)[:SHOWN_INSTANCES]
    fig, ax = plt.subplots(figsize=(12, 2.2 + 0.25 * max(1, len(instances))))
    _shade(ax, history, end)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color="#17becf", alpha=0.8, label="credential (1st, 3rd, ...)"),
                       Patch(color="#1f77b4", alpha=0.8, label="credential (2nd, 4th, ...)"), *_fault_handles(history, 0.15)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    for row, instance_id in enumerate(instances):
        for n, v in enumerate(seen[instance_id]):
            ax.barh(row + (0.2 if n % 2 else -0.2), v.expiration - v.at, left=v.at, height=0.35,
                    color="#1f77b4" if n % 2 else "#17becf", alpha=0.8)
    ax.set_yticks(range(len(instances)), instances, fontsize=6)
    ax.set_ylabel("instance")
    ax.set_xlim(0, end)
    ax.set_xlabel("simulated seconds since t=0 (bar: visible -> expiry; overlap: both valid; gap: none valid)")
    ax.set_title(f"Credential lifetimes per instance (first {len(instances)})")
    _save(fig, path)
    plt.close(fig)


def draw(out: Path, x: s.Experiment, history: History) -> list[str]:
    """Every plot into ``out``; returns the file names."""
    plt = _pyplot()
    end = x.settings.duration
    timeline(plt, out / "timeline.png", history, end)
    latency_cdf(plt, out / "latency_cdf.png", history, x)
    app_success(plt, out / "app_success.png", history, end)
    credentials(plt, out / "credentials.png", history, end)
    return ["timeline.png", "latency_cdf.png", "app_success.png", "credentials.png"]
