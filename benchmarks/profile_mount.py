"""`python -m benchmarks.profile_mount`: where the imgfs FUSE daemon spends its time on a workload.

Mounts the mount benchmark's layers (`mount_data`) with `imgfs-overlay`, exactly as the
`mount` benchmark does, and samples the daemon with py-spy while one workload runs:
`--rounds` fresh mounts, each profiled, their samples merged. Prints the hottest
functions by self time and by inclusive time, and writes the merged samples in
py-spy's raw (collapsed stack) format, which flamegraph.pl and speedscope read.

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profile_mount ls-warm --rounds 3
    .venv/bin/python -m benchmarks.profile_mount find-cold --data small --native

Needs root (mount, drop_caches, and py-spy reading another process's memory).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import data, mount_bench, mount_data, mounters, workloads
from benchmarks.harness import Rep, rmtree, unmount_under

WORKLOADS = {
    "find-cold": (workloads.find, True),
    "find-warm": (workloads.find, False),
    "ls-warm": (workloads.ls, False),
    "cat-cold": (workloads.cat, True),
    "cat-warm": (workloads.cat, False),
}
CONTENDERS = {m.name: m for m in mounters.MOUNTERS if m.ours}


def py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.is_file():
        return str(found)
    path = shutil.which("py-spy")
    if path is None:
        raise SystemExit("benchmarks.profile_mount: no py-spy (.venv/bin/pip install py-spy)")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_mount", description=__doc__)
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--data", choices=data.DATASETS, default="debian")
    p.add_argument("--quick", action="store_true", help="the 64 MiB big file instead of 1 GiB")
    p.add_argument("--rounds", type=int, default=3, help="fresh mounts profiled (default 3)")
    p.add_argument("--rate", type=int, default=1000, help="samples per second (default 1000)")
    p.add_argument("--native", action="store_true", help="include C/Cython frames (pyfuse3)")
    p.add_argument("--idle", action="store_true", help="include samples of idle threads")
    p.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    p.add_argument(
        "--contender", choices=sorted(CONTENDERS), default="imgfs-overlay", help="which of ours"
    )
    p.add_argument("--out", type=Path, default=Path("/tmp"), help="where the raw samples go")
    return p.parse_args(argv)


def profile_round(
    args: argparse.Namespace, stack: mount_data.Stack, workdir: Path, out: Path
) -> float:
    """One fresh mount, the workload's warm-up or cache drop, then the sampled run."""
    mounter = CONTENDERS[args.contender]
    action, cold = WORKLOADS[args.workload]
    rep = Rep(0, workdir)
    workdir.mkdir(parents=True)
    try:
        mounters.prepare_rep(mounter, stack, rep)
        mounters.mount(mounter, stack, rep)
        pid = rep.state["daemon"]
        if cold:
            mounters.drop_caches()
        else:
            action(rep)
        cmd = [py_spy(), "record", "--pid", str(pid), "--rate", str(args.rate)]
        cmd += ["--format", "raw", "--output", str(out)]
        cmd += (["--native"] if args.native else []) + (["--idle"] if args.idle else [])
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # py-spy attaches before the workload starts
            t0 = time.perf_counter()
            action(rep)
            wall = time.perf_counter() - t0
            time.sleep(0.05)
        finally:
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=60)
        if not out.is_file():
            raise SystemExit(f"benchmarks.profile_mount: py-spy failed: {err.decode()[-500:]}")
        return wall
    finally:
        mounters.unmount(mounter, stack, rep)
        unmount_under(workdir)
        rmtree(workdir)


def read_raw(path: Path) -> collections.Counter[tuple[str, ...]]:
    """py-spy raw output: `frame;frame;... COUNT` per line, outermost frame first."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def function_of(frame: str) -> str:
    """`handler (unionfs/fs/operations.py:250)` → `handler (unionfs/fs/operations.py)`."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})"


def hot_spots(
    stacks: collections.Counter[tuple[str, ...]],
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    total = sum(stacks.values())
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in stacks.items():
        funcs = [function_of(f) for f in frames]
        self_time[funcs[-1]] += count
        for f in set(funcs):
            inclusive[f] += count
    return total, self_time.most_common(), inclusive.most_common()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("benchmarks.profile_mount: needs root")
    dataset = data.prepare(args.data)
    big = mount_bench.QUICK_BIG_BYTES if args.quick else mount_bench.BIG_BYTES
    stack = mount_data.prepare(dataset, big)
    scratch = data.cache_dir() / "profile-scratch"
    unmount_under(scratch)
    rmtree(scratch)
    merged: collections.Counter[tuple[str, ...]] = collections.Counter()
    walls = []
    stem = f"imgfs-{args.workload}-{dataset.name}"
    try:
        for i in range(args.rounds):
            raw = args.out / f"{stem}-{i}.txt"
            raw.unlink(missing_ok=True)
            walls.append(profile_round(args, stack, scratch / f"round-{i}", raw))
            merged.update(read_raw(raw))
            raw.unlink()
    finally:
        unmount_under(scratch)
        rmtree(scratch)
    out = args.out / f"{stem}.txt"
    out.write_text("".join(f"{';'.join(k)} {v}\n" for k, v in merged.most_common()))
    total, by_self, by_total = hot_spots(merged)
    busy = total / args.rate
    print(
        f"{args.contender}, {args.workload} on {dataset.name}: {args.rounds} rounds, wall"
        f" {', '.join(f'{w:.3f}' for w in walls)} s; {total} samples at {args.rate}/s"
        f" = {busy:.2f} s of daemon time{' (idle included)' if args.idle else ''}"
    )
    for title, rows in (("self", by_self), ("inclusive", by_total)):
        print(f"\ntop {args.top} by {title} time:")
        for func, count in rows[: args.top]:
            per_round = count / args.rate / args.rounds
            print(f"  {100 * count / total:5.1f}%  {per_round:7.3f} s  {func}")
    print(f"\nmerged samples (py-spy raw / collapsed stacks): {out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
