"""The run's ratios to the baseline as a PNG: one group of horizontal bars per workload,
one bar per contender, on a log scale with the baseline (1.0) as a vertical line, and
issue #6's goal for imgfs as a tick where there is one. Everything is drawn as a
time-like ratio (lower is better; for MB/s and IOPS the baseline's rate over the
contender's), so one axis fits every workload.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import CaseResult
from benchmarks.targets import time_limit

COLOURS = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f"]


def write(results: list[CaseResult], path: Path, title: str) -> Path | None:
    """Draw the chart (None when no case has a ratio to draw: e.g. everything skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    for r in results:
        for o in r.outcomes:
            if o.contender.name != r.case.baseline and o.contender.name not in names:
                names.append(o.contender.name)
    rows = [r for r in results if any(r.ratio(o) for o in r.outcomes if not o.skipped)]
    if not rows:
        return None
    colours = [COLOURS[k % len(COLOURS)] for k in range(len(names))]
    bar = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.22 * len(names) * len(rows)))
    for i, r in enumerate(rows):
        y0 = len(rows) - 1 - i
        for k, name in enumerate(names):
            o = r.outcome(name)
            value = r.ratio(o) if o is not None and not o.skipped else None
            if value:
                y = y0 + 0.4 - bar * (k + 0.5)
                ax.barh(y, value, height=bar * 0.9, color=colours[k])
                ax.text(value, y, f" {value:.{2 if value < 10 else 0}f}", va="center", fontsize=6)
        goal = time_limit(r.case.workload)
        if goal:
            ax.plot([goal, goal], [y0 - 0.45, y0 + 0.45], color="black", linestyle=":", lw=1)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r.case.workload for r in reversed(rows)], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(
        "× baseline (time; for MB/s and IOPS: baseline's rate / contender's), log scale;"
        " lower is better; dotted: issue #6 goal"
    )
    patches = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    ax.legend(patches, names, loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
