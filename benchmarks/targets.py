"""The goals issue #6 set for imgfs, checked against a run's results.

Most goals are a median ratio to kernel overlayfs in the same run (time: at most the
limit; throughput, MB/s or IOPS: at least the limit, as rate / kernel's rate). Two kinds
are not: how imgfs's own numbers scale from 1 to 100 layers, and the daemon's peak RSS
(in MB). A goal whose workload did not run (e.g. `--quick` skips the 8 and 32 layer
images; busybox has no dpkg) is listed as not measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from benchmarks.harness import CaseResult

BENCHMARKS = ("mount", "layers")
"""The goals are about a mounted union: our contenders in these benchmarks."""
RSS_BENCHMARK = "mount"
"""The daemon RSS goal is about the Debian image: the mount benchmark's workloads."""


@dataclass(frozen=True)
class Target:
    label: str
    workload: str
    """A regex matched against the case's workload name (sizes differ with --quick)."""
    limit: float
    kind: str = "time"
    """time: ratio ≤ limit; rate: ratio of rates ≥ limit; scaling: this case / `versus`
    case for the same contender ≤ limit; rss: peak RSS in MB < limit."""
    versus: str = ""


TARGETS = [
    Target("find, cold", r"find \(cold\)", 2.0),
    Target("find, warm", r"find \(warm\)", 3.0),
    Target("ls -lR, warm", r"ls -lR \(warm\)", 6.0),
    Target("lstat every path, cold", r"lstat every path \(cold\)", 2.5),
    Target("lstat every path, warm", r"lstat every path \(warm\)", 1.0),
    Target("sequential read of the big file, cold (MB/s)", r"cat .* \(cold\)", 0.6, "rate"),
    Target("sequential read of the big file, warm (MB/s)", r"cat .* \(warm\)", 0.9, "rate"),
    Target("random 4k reads (IOPS)", r"fio randread", 0.04, "rate"),
    Target("append 1 byte to 1000 lower files", r"append 1 byte", 1.0),
    Target("copy-up: 1-byte write into the big file", r"copy-up", 0.6),
    Target("untar /usr/share (--quick: /usr/share/doc)", r"untar ", 2.5),
    Target("rm -rf of it", r"rm -rf ", 2.5),
    Target("chroot 300× /bin/true", r"chroot \d+× /bin/true", 1.2),
    Target("chroot dpkg -l", r"chroot dpkg -l", 2.0),
    Target("100 layers: 10k stats of bottom-layer paths", r"bottom-layer paths \(100 ", 1.5),
    Target("100 layers: 10k stats of missing paths", r"missing paths \(100 ", 1.2),
    Target("mount time, 1 layer (image indexed)", r"mount \(1 layer\)", 10.0),
    Target("mount time, 100 layers (image indexed)", r"mount \(100 layers\)", 10.0),
    Target(
        "own mount time, 100 layers / 1 layer",
        r"mount \(100 layers\)",
        1.2,
        "scaling",
        r"mount \(1 layer\)",
    ),
    Target(
        "own 10k stats of bottom-layer paths, 100 layers / 1 layer",
        r"bottom-layer paths \(100 ",
        1.2,
        "scaling",
        r"bottom-layer paths \(1 layer\)",
    ),
    Target(
        "own 10k stats of missing paths, 100 layers / 1 layer",
        r"missing paths \(100 ",
        1.2,
        "scaling",
        r"missing paths \(1 layer\)",
    ),
    Target("daemon peak RSS (MB, largest over the mount workloads)", "", 150.0, "rss"),
]


@dataclass(frozen=True)
class Verdict:
    target: Target
    contender: str
    value: float | None
    """The ratio (or MB); None: not measured in this run."""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.target.kind == "rate":
            return self.value >= self.target.limit
        if self.target.kind == "rss":
            return self.value < self.target.limit
        return self.value <= self.target.limit

    @property
    def goal(self) -> str:
        sign = {"rate": "≥", "rss": "<"}.get(self.target.kind, "≤")
        unit = " MB" if self.target.kind == "rss" else "×"
        return f"{sign} {self.target.limit:g}{unit}"

    def as_json(self) -> dict[str, object]:
        return {
            "target": self.target.label,
            "kind": self.target.kind,
            "goal": self.goal,
            "contender": self.contender,
            "value": self.value,
            "met": self.met,
        }


def _case(results: list[CaseResult], pattern: str) -> CaseResult | None:
    return next((r for r in results if re.search(pattern, r.case.workload)), None)


def _own_median(r: CaseResult | None, name: str) -> float | None:
    o = r.outcome(name) if r else None
    return o.median_s if o and not o.error else None


def _value(t: Target, results: list[CaseResult], name: str) -> float | None:
    if t.kind == "rss":
        peaks = [
            o.median_metrics().get("daemon_peak_rss_bytes")
            for r in results
            if r.case.benchmark == RSS_BENCHMARK
            for o in r.outcomes
            if o.contender.name == name
        ]
        found = [p for p in peaks if p]
        return max(found) / 1e6 if found else None
    r = _case(results, t.workload)
    if t.kind == "scaling":
        this, other = _own_median(r, name), _own_median(_case(results, t.versus), name)
        return this / other if this and other else None
    o = r.outcome(name) if r else None
    ratio = r.ratio(o) if r and o and not o.error else None
    if ratio is None:
        return None
    return 1 / ratio if t.kind == "rate" else ratio


def evaluate(results: list[CaseResult]) -> list[Verdict]:
    """Every goal for each of our contenders that took part in the run."""
    unions = [r for r in results if r.case.benchmark in BENCHMARKS]
    ours = list(
        dict.fromkeys(o.contender.name for r in unions for o in r.outcomes if o.contender.ours)
    )
    return [Verdict(t, name, _value(t, results, name)) for t in TARGETS for name in ours]


def time_limit(workload: str) -> float | None:
    """The goal for a workload as a time-like ratio (for the chart), if it has one."""
    for t in TARGETS:
        if t.kind in ("time", "rate") and t.workload and re.search(t.workload, workload):
            return 1 / t.limit if t.kind == "rate" else t.limit
    return None


def table(verdicts: list[Verdict]) -> str:
    lines = ["| Goal (issue #6) | Target | Contender | Measured | Met |", "|---|---:|---|---:|---|"]
    for v in verdicts:
        if v.value is None:
            shown, met = "–", "not measured"
        else:
            unit = " MB" if v.target.kind == "rss" else "×"
            shown, met = (
                f"{v.value:.{0 if v.target.kind == 'rss' else 2}f}{unit}",
                ("met" if v.met else "**not met**"),
            )
        lines.append(f"| {v.target.label} | {v.goal} | {v.contender} | {shown} | {met} |")
    return "\n".join(lines)
