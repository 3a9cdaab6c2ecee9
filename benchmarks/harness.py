"""Cases, contenders and the interleaved runner.

Contenders of one case run in rounds (A B C, then B C A, then C A B, ...) rather than
all reps of A before B: drift in the machine (page cache, thermal state, a noisy
neighbour) then lands on every contender alike, and rotating the order keeps any one
of them from always running right after the heaviest.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass
class Rep:
    """What one run of a contender gets: a fresh empty directory and a scratch dict."""

    index: int
    """0-based among the measured reps; negative for warm-up rounds."""
    workdir: Path
    state: dict[str, Any] = field(default_factory=dict)


Step = Callable[[Rep], None]
Action = Callable[[Rep], int | None]
"""The timed part; may return the bytes it processed (else the case's `bytes` is used)."""


@dataclass
class Contender:
    name: str
    action: Action
    setup: Step | None = None
    teardown: Step | None = None
    description: str = ""
    requires: tuple[str, ...] = ()
    """Executables it runs: missing ones skip the contender, present ones get versioned."""
    inspect: Callable[[Rep], dict[str, float]] | None = None
    """Untimed, after the action: numbers about its output (e.g. the blob's size)."""
    ours: bool = False
    """A failure of ours fails the run; a peer's failure is only reported."""
    skip: str | None = None
    """Why this contender cannot run here (decided by the benchmark module)."""


@dataclass
class Case:
    benchmark: str
    workload: str
    contenders: list[Contender]
    baseline: str
    bytes: int | None = None
    """Bytes each action processes, for MB/s; None where throughput means nothing."""
    notes: list[str] = field(default_factory=list)
    rate_metric: str | None = None
    """A metric that is the workload's rate (fio's `iops`): ratios then compare it, not time."""


@dataclass
class Sample:
    rep: int
    wall_s: float
    cpu_s: float
    """User + system time of the harness and its waited-for children during the action."""
    bytes: int | None
    warmup: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    contender: Contender
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None

    @property
    def measured(self) -> list[Sample]:
        return [s for s in self.samples if not s.warmup]

    @property
    def median_s(self) -> float | None:
        walls = [s.wall_s for s in self.measured]
        return statistics.median(walls) if walls else None

    @property
    def median_cpu_s(self) -> float | None:
        cpus = [s.cpu_s for s in self.measured]
        return statistics.median(cpus) if cpus else None

    def median_metrics(self) -> dict[str, float]:
        keys = sorted({k for s in self.measured for k in s.metrics})
        return {
            k: statistics.median([s.metrics[k] for s in self.measured if k in s.metrics])
            for k in keys
        }

    @property
    def mb_per_s(self) -> float | None:
        """Median of per-sample throughput in 10^6 bytes per second."""
        rates = [s.bytes / s.wall_s / 1e6 for s in self.measured if s.bytes and s.wall_s > 0]
        return statistics.median(rates) if rates else None


@dataclass
class CaseResult:
    case: Case
    outcomes: list[Outcome]

    def outcome(self, name: str) -> Outcome | None:
        return next((o for o in self.outcomes if o.contender.name == name), None)

    def ratio(self, outcome: Outcome) -> float | None:
        """Median wall time relative to the baseline's (2.0 = twice as slow); for a case
        with a rate metric the baseline's rate over this one's (the same reading)."""
        base = self.outcome(self.case.baseline)
        if base is None:
            return None
        if self.case.rate_metric:
            theirs = base.median_metrics().get(self.case.rate_metric)
            ours = outcome.median_metrics().get(self.case.rate_metric)
            return theirs / ours if theirs and ours else None
        if base.median_s is None or outcome.median_s is None:
            return None
        return outcome.median_s / base.median_s if base.median_s > 0 else None


class CommandError(Exception):
    """A contender's command failed; the message carries its exit status and stderr tail."""


def run(
    cmd: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = True,
) -> str:
    """Run a command, returning its stdout; a failure raises with the tail of its stderr."""
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=quiet, text=True
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        prog = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args[:2]))
        raise CommandError(f"{prog} exited {proc.returncode}: " + " | ".join(tail))
    return proc.stdout or ""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def rmtree(path: Path) -> None:
    """Remove a tree even where a rootfs left read-only directories (matters when not root)."""

    def retry(func: Callable[..., Any], p: str, _exc: Any) -> None:
        parent = os.path.dirname(p)
        os.chmod(parent, 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
            shutil.rmtree(p, onerror=retry)
        else:
            func(p)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=retry)


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever a failed contender left mounted below `path`, deepest first."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    unescape = re.compile(r"\\([0-7]{3})")
    points = [unescape.sub(lambda m: chr(int(m[1], 8)), ln.split()[4]) for ln in lines]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def unavailable(contender: Contender) -> str | None:
    if contender.skip:
        return contender.skip
    missing = [t for t in contender.requires if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def run_case(
    case: Case, *, reps: int, warmup: int, scratch: Path, log: TextIO = sys.stderr
) -> CaseResult:
    """Run every available contender `warmup + reps` times, interleaved, in fresh dirs."""
    outcomes = [Outcome(c, skipped=unavailable(c)) for c in case.contenders]
    active = [o for o in outcomes if o.skipped is None]
    for o in outcomes:
        if o.skipped:
            log.write(f"  skip {o.contender.name}: {o.skipped}\n")
    for rnd in range(warmup + reps):
        shift = rnd % len(active) if active else 0
        for outcome in active[shift:] + active[:shift]:
            if outcome.error is None:
                _run_one(case, outcome, rnd, warmup, reps, scratch, log)
    return CaseResult(case, outcomes)


def _run_one(
    case: Case, outcome: Outcome, rnd: int, warmup: int, reps: int, scratch: Path, log: TextIO
) -> None:
    c = outcome.contender
    rep = Rep(rnd - warmup, scratch / f"{slug(c.name)}-{rnd}")
    rmtree(rep.workdir)
    rep.workdir.mkdir(parents=True)
    label = "warm-up" if rep.index < 0 else f"rep {rep.index + 1}/{reps}"
    try:
        if c.setup:
            c.setup(rep)
        os.sync()  # earlier reps' dirty pages must not be flushed on this one's clock
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        got = c.action(rep)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        metrics = c.inspect(rep) if c.inspect else {}
    except Exception as e:  # a contender's failure is a result, not a crash
        outcome.error = f"{type(e).__name__}: {e}"
        log.write(f"  {case.workload} | {c.name} | {label}: FAILED {outcome.error}\n")
    else:
        nbytes = got if got is not None else case.bytes
        outcome.samples.append(Sample(rep.index, wall, cpu, nbytes, rep.index < 0, metrics))
        log.write(f"  {case.workload} | {c.name} | {label}: {wall:.3f} s (cpu {cpu:.2f} s)\n")
    finally:
        try:
            if c.teardown:
                c.teardown(rep)
            unmount_under(rep.workdir)
            rmtree(rep.workdir)
        except Exception as e:
            outcome.error = outcome.error or f"teardown: {type(e).__name__}: {e}"
            log.write(f"  {case.workload} | {c.name} | {label}: teardown FAILED {e}\n")
        log.flush()
