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
COLORS = {"kill": "#d62728", "restart": "#ff7f0e", "pause": "#9467bd", "link": "#1f77b4", "message": "#2ca02c",
          "clock_skew": "#8c564b", "api_errors": "#e377c2"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "ramsim"
    return plt


def _shade(ax, history: History, end: float) -> None:
    for f in history.of(Fault):
        ax.axvspan(f.start, f.end if f.end is not None else end, color=COLORS.get(f.kind, "grey"), alpha=0.15, lw=0)


def timeline(plt, path: Path, history: History, end: float) -> None:
    faults = history.of(Fault)
    targets = sorted({f.target for f in faults}) or ["(no faults)"]
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.5 * len(targets)))
    for row, target in enumerate(targets):
        for f in (f for f in faults if f.target == target):
            stop = f.end if f.end is not None else end
            ax.barh(row, stop - f.start, left=f.start, height=0.5, color=COLORS.get(f.kind, "grey"), alpha=0.7)
            ax.text(f.start, row + 0.3, f.kind, fontsize=7)
    for m in history.of(Mark):
        ax.axvline(m.at, color="black", lw=0.6, ls="--")
        ax.text(m.at, len(targets) - 0.4, m.text[:28], fontsize=6, rotation=90, va="top")
    refreshes = [e.at for e in history.of(Event) if e.name == "InstanceCredentialsRefreshed"]
    if refreshes:
        ax.plot(refreshes, [-0.6] * len(refreshes), "|", color="green", ms=6, label="credential refreshed")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(range(len(targets)), targets)
    ax.set_xlim(0, end)
    ax.set_ylim(-1, len(targets))
    ax.set_xlabel("simulated seconds since t=0")
    ax.set_title("Timeline: fault windows, steps (dashed), refreshes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def latency_cdf(plt, path: Path, history: History, x: s.Experiment) -> None:
    seen = sightings(history)
    series = {"attach to visible": [v for v in attach_latencies(history, seen) if v != float("inf")],
              "refresh due to visible": [new.at - (old.expiration - x.settings.refresh_before) for old, new in rotations(seen)]}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in series.items():
        if values:
            ordered = sorted(v * 1000 for v in values)
            ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=f"{label} (n={len(ordered)})")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("milliseconds (simulated)")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def app_success(plt, path: Path, history: History, end: float) -> None:
    bucket = max(end / 100, 1.0)
    total: dict[int, int] = defaultdict(int)
    ok: dict[int, int] = defaultdict(int)
    for c in history.of(Call):
        k = int(c.at // bucket)
        total[k] += 1
        ok[k] += c.outcome == "ok"
    fig, ax = plt.subplots(figsize=(11, 3.5))
    _shade(ax, history, end)
    keys = sorted(total)
    ax.plot([k * bucket for k in keys], [100 * ok[k] / total[k] for k in keys], drawstyle="steps-post", color="black")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, end)
    ax.set_xlabel("simulated seconds since t=0")
    ax.set_ylabel(f"% calls ok per {bucket:g}s")
    ax.set_title("Application success rate" + ("" if keys else " (no calls)"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def credentials(plt, path: Path, history: History, end: float) -> None:
    seen = sightings(history)
    instances = sorted(seen)[:SHOWN_INSTANCES]
    fig, ax = plt.subplots(figsize=(11, 1 + 0.25 * max(1, len(instances))))
    _shade(ax, history, end)
    for row, instance_id in enumerate(instances):
        for n, v in enumerate(seen[instance_id]):
            ax.barh(row + (0.2 if n % 2 else -0.2), v.expiration - v.at, left=v.at, height=0.35,
                    color="#1f77b4" if n % 2 else "#17becf", alpha=0.8)
    ax.set_yticks(range(len(instances)), instances, fontsize=6)
    ax.set_xlim(0, end)
    ax.set_xlabel("simulated seconds since t=0 (bar: visible -> expiry; overlap: both valid)")
    ax.set_title(f"Credential lifetimes per instance (first {len(instances)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
