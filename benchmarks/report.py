"""Results as JSON (every sample, for later analysis), a markdown table (for people) with
issue #6's goals checked, and a PNG chart of the ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import chart, targets
from benchmarks.harness import CaseResult, Outcome

HEADERS = ["Workload", "Contender", "Median", "Range", "CPU", "MB/s", "× baseline"]


def _sample_json(outcome: Outcome) -> list[dict[str, Any]]:
    return [
        {
            "rep": s.rep,
            "warmup": s.warmup,
            "wall_s": round(s.wall_s, 6),
            "cpu_s": round(s.cpu_s, 6),
            "bytes": s.bytes,
            "metrics": s.metrics,
        }
        for s in outcome.samples
    ]


def to_json(results: list[CaseResult], meta: dict[str, Any]) -> dict[str, Any]:
    cases = []
    for r in results:
        contenders = []
        for o in r.outcomes:
            c = o.contender
            contenders.append(
                {
                    "name": c.name,
                    "description": c.description,
                    "ours": c.ours,
                    "skipped": o.skipped,
                    "error": o.error,
                    "median_s": o.median_s,
                    "median_cpu_s": o.median_cpu_s,
                    "mb_per_s": o.mb_per_s,
                    "median_metrics": o.median_metrics(),
                    "ratio_to_baseline": r.ratio(o),
                    "samples": _sample_json(o),
                }
            )
        cases.append(
            {
                "benchmark": r.case.benchmark,
                "workload": r.case.workload,
                "baseline": r.case.baseline,
                "bytes": r.case.bytes,
                "notes": r.case.notes,
                "rate_metric": r.case.rate_metric,
                "contenders": contenders,
            }
        )
    goals = [v.as_json() for v in targets.evaluate(results)]
    return {**meta, "cases": cases, "targets": goals}


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _row(r: CaseResult, o: Outcome) -> list[str]:
    name = o.contender.name + (" (baseline)" if o.contender.name == r.case.baseline else "")
    if o.skipped or (o.error and not o.measured):
        why = f"skipped: {o.skipped}" if o.skipped else f"failed: {o.error}"
        return [r.case.workload, name, why[:80], "", "", "", ""]
    walls = [s.wall_s for s in o.measured]
    spread = f"{_seconds(min(walls))} – {_seconds(max(walls))}" if len(walls) > 1 else ""
    rate, ratio = o.mb_per_s, r.ratio(o)
    return [
        r.case.workload,
        name + (" ⚠ failed later" if o.error else ""),
        _seconds(o.median_s),
        spread,
        _seconds(o.median_cpu_s),
        f"{rate:.0f}" if rate is not None else "",
        f"{ratio:.2f}×" if ratio is not None else "",
    ]


def table(results: list[CaseResult]) -> str:
    rows = [_row(r, o) for r in results for o in r.outcomes]
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def to_markdown(
    results: list[CaseResult], meta: dict[str, Any], chart_name: str | None = None
) -> str:
    m = meta["machine"]
    tools = ", ".join(f"{k} {v}" for k, v in m["tools"].items() if v)
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    out = [
        f"# Benchmarks: {meta['suite']} ({meta['date']})",
        "",
        f"- Machine: {m['cpu_model']}, {m['nproc']} CPUs{mem}, kernel {m['kernel']},"
        f" {m['os']}, scratch on {m['scratch_fs']}; load average {meta['loadavg_before'][0]:.2f}"
        f" before, {meta['loadavg_after'][0]:.2f} after (other work on the machine adds noise)",
        f"- Runs: {meta['reps']} measured reps per contender after {meta['warmup']} warm-up,"
        " interleaved; median wall time, range = min – max, CPU = median user+sys seconds",
        "- MB/s = 10^6 bytes per wall second; × baseline = median / baseline median"
        " (lower is faster)",
        f"- Versions: {tools}",
    ]
    for r in results:
        out += [f"- {note}" for note in r.case.notes]
    out += ["", table(results), ""]
    if metrics := metrics_table(results):
        out += ["Metrics (medians over the measured reps):", "", metrics, ""]
    if verdicts := targets.evaluate(results):
        out += [
            "Issue #6's goals for imgfs (ratios to kernel overlayfs in this run; for MB/s and"
            " IOPS the contender's rate / kernel's):",
            "",
            targets.table(verdicts),
            "",
        ]
    if chart_name:
        out += [f"![ratios to the baseline]({chart_name})", ""]
    return "\n".join(out) + "\n"


def metrics_table(results: list[CaseResult]) -> str:
    """Per-contender numbers besides time (blob size, daemon CPU and RSS, ...), one row each."""
    rows = [(r, o, o.median_metrics()) for r in results for o in r.outcomes]
    keys = sorted({k for _, _, m in rows for k in m})
    if not keys:
        return ""
    lines = [
        "| " + " | ".join(["Workload", "Contender", *keys]) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(keys)) + "|",
    ]
    for r, o, m in rows:
        if m:
            cells = [_metric(k, m[k]) if k in m else "" for k in keys]
            lines.append("| " + " | ".join([r.case.workload, o.contender.name, *cells]) + " |")
    return "\n".join(lines)


def _metric(key: str, value: float) -> str:
    return f"{value / 1e6:.1f} MB" if key.endswith("bytes") else f"{value:g}"


def write(results: list[CaseResult], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    """`<date>-<suite>.json`, `.md` and (when there are ratios to draw) `.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{meta['date']}-{meta['suite']}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    title = f"{meta['suite']} ({meta['date']}, {meta['data']['name']}, {meta['reps']} reps)"
    png = chart.write(results, out_dir / f"{stem}.png", title)
    json_path.write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
    md_path.write_text(to_markdown(results, meta, png.name if png else None))
    return [json_path, md_path] + ([png] if png else [])
