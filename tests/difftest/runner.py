"""Driving the oracle and our mount in lock step, and shrinking a failing run to a repro."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import excluded
from .layers import Layers, build_layers
from .mounts import Mount, Watchdog, mount_kernel, mount_ours, mounted, unmount
from .ops import Generator, Op, apply, lower_hardlink_at, release_held, to_json
from .tree import diff, lower_hardlink_paths, snapshot


def parse_seeds(text: str) -> list[int]:
    """Seeds from "16" (seeds 0..15), "100-199" (a range) or "3,17,42" (exactly these)."""
    text = text.strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if "-" in text[1:]:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return list(range(int(text)))


@dataclass
class Config:
    """Environment knobs (see the module docstring of tests/test_differential.py)."""

    ours: str
    seeds: list[int] | None  # None: each test's default seeds
    ops: int | None
    check_every: int
    shrink_seconds: float
    replay: Path | None
    timeout: float

    @classmethod
    def from_env(cls, ours: str) -> Config:
        env = os.environ
        seeds = parse_seeds(env["IMGFS_DIFF_SEEDS"]) if env.get("IMGFS_DIFF_SEEDS") else None
        replay = env.get("IMGFS_DIFF_REPLAY")
        return cls(
            ours=ours,
            seeds=seeds,
            ops=int(env["IMGFS_DIFF_OPS"]) if env.get("IMGFS_DIFF_OPS") else None,
            check_every=int(env.get("IMGFS_DIFF_CHECK_EVERY", "25")),
            shrink_seconds=float(env.get("IMGFS_DIFF_SHRINK", "60")),
            replay=Path(replay) if replay else None,
            timeout=float(env.get("IMGFS_DIFF_TIMEOUT", "30")),
        )


@dataclass
class Mismatch:
    where: str  # "op": outcomes differ; "tree": whole-tree comparison differs; "hang"
    position: int  # index into the list of operations run (the last one run)
    op: Op | None
    oracle: object = None
    ours: object = None
    detail: list[str] = field(default_factory=list)

    @property
    def signature(self) -> tuple[str, str | None]:
        return self.where, self.op.kind if self.op and self.where == "op" else None

    def describe(self) -> list[str]:
        if self.where == "op":
            return [f"at {self.op}:", f"  oracle: {self.oracle}", f"  ours:   {self.ours}"]
        after = f"after {self.op}" if self.op else "before any operation"
        if self.where == "hang":
            return [f"{after}: {self.detail[0]}"]
        return [f"whole-tree comparison {after}:", *(f"  {line}" for line in self.detail)]


class Rig:
    """One run's directories: the layers, an upper/work pair per mount, mount points.

    Mount points sit directly in `tmp`, beside the canary, so a relative symlink that climbs
    out of a mount reaches the same canary from every mount.
    """

    def __init__(self, tmp: Path, name: str, seed: int, ours: str, options: str, canary: Path):
        self.tmp, self.name, self.seed, self.ours, self.options = tmp, name, seed, ours, options
        self.base = tmp / name
        self.layers: Layers = build_layers(seed, self.base / "layers", canary)
        template = self.base / "upper-template"  # one empty upper, copied for each mount
        template.mkdir(mode=0o755)
        os.chmod(template, 0o755)
        for who in ("oracle", "ours"):
            shutil.copytree(template, self.base / f"upper-{who}", symlinks=True)
            (self.base / f"work-{who}").mkdir()
            (tmp / f"{name}.{who}").mkdir()

    def upper(self, who: str) -> Path:
        return self.base / f"upper-{who}"

    def mnt(self, who: str) -> Path:
        return self.tmp / f"{self.name}.{who}"

    @contextlib.contextmanager
    def mounted(self) -> Iterator[tuple[Mount, Mount]]:
        """Both mounts; always unmounted on the way out, whatever happened."""
        lowers = self.layers.dirs
        with contextlib.ExitStack() as stack:
            oracle = stack.enter_context(
                mounted(
                    mount_kernel(
                        lowers,
                        self.upper("oracle"),
                        self.base / "work-oracle",
                        self.mnt("oracle"),
                        self.options,
                    )
                )
            )
            ours = stack.enter_context(
                mounted(
                    mount_ours(
                        self.ours,
                        lowers,
                        self.upper("ours"),
                        self.base / "work-ours",
                        self.mnt("ours"),
                        self.options,
                    )
                )
            )
            yield oracle, ours

    def mount_upper_again(self, who: str) -> contextlib.AbstractContextManager[Mount]:
        """Kernel overlayfs over the same layers and `who`'s upper dir, with a fresh workdir."""
        work = self.base / f"work-{who}-again"
        mnt = self.tmp / f"{self.name}.{who}-again"
        work.mkdir()
        mnt.mkdir()
        return mounted(mount_kernel(self.layers.dirs, self.upper(who), work, mnt, self.options))

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        for p in self.tmp.glob(f"{self.name}.*"):
            with contextlib.suppress(OSError):
                p.rmdir()


def compare_trees(
    oracle: Mount, ours: Mount, watchdog: Watchdog, lower_inos: set[int]
) -> list[str]:
    a = snapshot(oracle.root, kernel=True)
    try:
        with watchdog.guard(ours, "whole-tree snapshot"):
            b = snapshot(ours.root, ours.kind == "kernel")
    except OSError as e:
        return [f"walking our mount failed: {e!r}"]
    hidden = lower_hardlink_paths(a, lower_inos) if excluded("lower_hardlink_nlink") else set()
    return diff(a, b, nlink_hidden=hidden)


@dataclass
class Plan:
    """Where a run's operations come from: drawn live for a seed, or a saved list."""

    seed: int
    count: int
    focus_symlinks: bool = False
    ops: list[Op] | None = None  # replay exactly these instead of drawing

    def source(self, layers: Layers) -> Iterator[tuple[Op | None, Generator | None]]:
        if self.ops is not None:
            for op in self.ops:
                yield op, None
            return
        gen = Generator(self.seed, layers, self.focus_symlinks)
        for _ in range(self.count):
            yield None, gen


def run_ops(
    oracle: Mount, ours: Mount, plan: Plan, layers: Layers, cfg: Config, watchdog: Watchdog
) -> tuple[list[Op], Mismatch | None]:
    """Apply each operation to both mounts; stop at the first difference."""
    done: list[Op] = []
    inos = layers.lower_hardlink_inos
    # Which stat results are of a lower hard link's inode, for both mounts: the oracle's view.
    lower = lower_hardlink_at(oracle.root, inos) if excluded("lower_hardlink_nlink") else None

    def stop(m: Mismatch) -> tuple[list[Op], Mismatch]:
        return done, m

    def tree_check(pos: int, op: Op | None) -> Mismatch | None:
        lines = compare_trees(oracle, ours, watchdog, inos)
        if watchdog.fired:
            return Mismatch("hang", pos, op, detail=[watchdog.fired])
        return Mismatch("tree", pos, op, detail=lines) if lines else None

    if m := tree_check(-1, None):  # the layers themselves already look different
        return stop(m)
    try:
        for op, gen in plan.source(layers):
            if gen is not None:
                op = gen.next(oracle.root)
            assert op is not None
            done.append(op)
            pos = len(done) - 1
            a = apply(op, oracle.root, kernel=True, lower=lower)
            with watchdog.guard(ours, str(op)):
                b = apply(op, ours.root, ours.kind == "kernel", lower=lower)
            if watchdog.fired:
                return stop(Mismatch("hang", pos, op, detail=[watchdog.fired]))
            if a != b:
                return stop(Mismatch("op", pos, op, a, b))
            checking = cfg.check_every and (pos + 1) % cfg.check_every == 0
            if checking and (m := tree_check(pos, op)):
                return stop(m)
        return done, tree_check(len(done) - 1, done[-1] if done else None)
    finally:
        release_held(oracle.root)  # files held open across operations
        release_held(ours.root)


@dataclass
class Run:
    rig: Rig
    ops: list[Op]  # the operations run (up to the first difference)
    mismatch: Mismatch | None
    upper_lines: list[str] = field(default_factory=list)  # see run(check_upper=True)


def run(
    tmp: Path,
    name: str,
    plan: Plan,
    cfg: Config,
    options: str,
    canary: Path,
    check_upper: bool = False,
) -> Run:
    """Build the seed's layers, mount both, run the plan, compare, unmount (always).

    With `check_upper`, after a clean run ours is unmounted and kernel overlayfs mounted
    over the layers and our upper dir (fresh workdir); differences between that tree and
    the oracle's go to `upper_lines`.
    """
    rig = Rig(tmp, name, plan.seed, cfg.ours, options, canary)
    watchdog = Watchdog(cfg.timeout)
    try:
        with rig.mounted() as (oracle, ours):
            ops, mismatch = run_ops(oracle, ours, plan, rig.layers, cfg, watchdog)
            result = Run(rig, ops, mismatch)
            if mismatch or not check_upper:
                return result
            oracle_tree = snapshot(oracle.root, kernel=True)
            unmount(ours)
            with rig.mount_upper_again("ours") as again:
                again_tree = snapshot(again.root, kernel=True)
    finally:
        watchdog.close()
    inos = rig.layers.lower_hardlink_inos
    ignored: set[str] = set()
    if cfg.ours == "kernel" and excluded("index_in_workdir"):
        ignored = lower_hardlink_paths(oracle_tree, inos) | lower_hardlink_paths(again_tree, inos)
    hidden: set[str] = set()
    if excluded("lower_hardlink_nlink"):
        hidden = lower_hardlink_paths(oracle_tree, inos)
    labels = ("oracle", "kernel-over-our-upper")
    result.upper_lines = diff(oracle_tree, again_tree, ignored, labels=labels, nlink_hidden=hidden)
    return result


def shrink(
    tmp: Path, seed: int, ops: list[Op], first: Mismatch, cfg: Config, options: str, canary: Path
) -> tuple[list[Op] | None, Mismatch, int, float]:
    """Delta-debug `ops` (cut after the mismatch) to a short list still failing the same way.

    Returns the shorter list (None if replaying all of them on fresh mounts did not fail the
    same way), its mismatch, the number of replays and the seconds spent.
    """
    start = time.monotonic()
    deadline = start + cfg.shrink_seconds
    current, found = ops[: first.position + 1], first
    replays = 0

    def fails(candidate: list[Op]) -> Mismatch | None:
        nonlocal replays
        replays += 1
        plan = Plan(seed, len(candidate), ops=candidate)
        result = run(tmp, f"shrink{replays}", plan, cfg, options, canary)
        result.rig.remove()
        m = result.mismatch
        return m if m and m.signature == first.signature else None

    if not fails(current):  # the difference must recur on fresh mounts before shrinking
        return None, first, replays, time.monotonic() - start
    chunks = 2
    while len(current) > 1 and time.monotonic() < deadline:
        size = -(-len(current) // chunks)
        for i in range(0, len(current), size):
            if time.monotonic() >= deadline:
                break
            candidate = current[:i] + current[i + size :]
            m = fails(candidate)
            if m:
                current, found = candidate[: m.position + 1], m
                chunks = max(chunks - 1, 2)
                break
        else:
            if chunks >= len(current):
                break
            chunks = min(len(current), chunks * 2)
    return current, found, replays, time.monotonic() - start


def report(
    title: str,
    seed: int,
    cfg: Config,
    ops: list[Op],
    mismatch: Mismatch,
    test: str,
    save: Path,
    shrunk: tuple[list[Op] | None, Mismatch, int, float] | None,
) -> str:
    """The failure message: the difference, the operations before it, how to replay, and
    the shrunk repro (also saved as JSON under `save`, and printed, for IMGFS_DIFF_REPLAY)."""
    lines = [f"{title} (seed {seed}, ours={cfg.ours})", *mismatch.describe()]
    tail = ops[max(0, mismatch.position - 14) : mismatch.position + 1]
    lines += ["", f"last operations run ({len(tail)} of {mismatch.position + 1}):"]
    lines += [f"  {op}" for op in tail]
    full = save / f"ops-seed{seed}.json"
    full.write_text(to_json(ops[: mismatch.position + 1]))
    env = f"IMGFS_DIFF_OURS={cfg.ours} IMGFS_DIFF_SEEDS={seed}-{seed}"
    cmd = f".venv/bin/python -m pytest tests/test_differential.py -k '{test}'"
    lines += ["", f"replay: {env} IMGFS_DIFF_OPS={len(ops)} {cmd}"]
    lines += [f"    or: {env} IMGFS_DIFF_REPLAY={full} {cmd}"]
    if shrunk is None:
        lines += [
            "",
            "not shrunk (IMGFS_DIFF_SHRINK=0, or this session already shrank 3 failures): "
            "run the replay command above on its own to shrink it",
        ]
    elif shrunk[0] is None:
        lines += [
            "",
            f"not shrunk: replaying these {mismatch.position + 1} operations on fresh mounts "
            "did not give the same difference (timing-dependent, or state from outside?)",
        ]
    else:
        small, m, replays, seconds = shrunk
        assert small is not None
        repro = save / f"repro-seed{seed}.json"
        repro.write_text(to_json(small))
        lines += [
            "",
            f"minimal repro: {len(small)} of {mismatch.position + 1} operations "
            f"(shrunk by {replays} replays in {seconds:.1f} s):",
            *(f"  {op}" for op in small),
            *m.describe(),
            f"replay it: {env} IMGFS_DIFF_REPLAY={repro} {cmd}",
        ]
        if len(small) <= 30:
            lines.append(f"{repro.name}: {to_json(small).replace(chr(10), '')}")
    return "\n".join(lines)
