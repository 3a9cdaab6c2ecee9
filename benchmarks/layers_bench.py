"""How the union scales with the number of layers: mount time, and 10,000 lstats of
bottom-layer paths and of missing paths on a fresh mount, for images of 1 to 100
layers (see `layers_data`), every contender side by side.

A missing name, or a name in the bottom layer, is looked up in every layer above it
by a union that searches its layers one by one (kernel overlayfs, fuse-overlayfs,
unionfs-fuse); imgfs answers from its merged index. The stats are each mount's first
lookups (the kernel's dentry cache of the union is empty; the layer dirs' own dentries
stay cached, as on a busy host).
"""

from __future__ import annotations

import os

from benchmarks import layers_data
from benchmarks.data import Dataset
from benchmarks.harness import Case
from benchmarks.mounters import BASELINE, MOUNTERS, NEEDS_ROOT, contender
from benchmarks.workloads import lstat_all, with_full_paths

LAYER_COUNTS = (1, 8, 32, 100)
QUICK_LAYER_COUNTS = (1, 100)


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def mount_workload(n: int) -> str:
    return f"mount ({_layers(n)})"


def stats_workload(kind: str, n: int) -> str:
    return f"{layers_data.STATS:,} stats of {kind} paths ({_layers(n)})"


def cases(data: Dataset, quick: bool) -> list[Case]:
    counts = QUICK_LAYER_COUNTS if quick else LAYER_COUNTS
    skip = None if os.geteuid() == 0 else NEEDS_ROOT
    scaling = layers_data.prepare(data, counts) if skip is None else None
    notes = [
        f"layers: {data.name} as layer 0, layers 1..N-1 each add one file to the same"
        f" {layers_data.MERGED_DIRS} directories"
        + (f" ({', '.join('/' + d for d in scaling.merged_dirs)})" if scaling else "")
        + "; every rep mounts afresh (imgfs mount: the image's merged index already built)."
        " Stats: lstat in a Python loop of the harness, the mount's first lookups; bottom ="
        " the rootfs's entries shuffled (each once, then again), missing = distinct names in"
        " the merged directories.",
    ]
    out = []
    for n in counts:
        stack = scaling.stacks[n] if scaling else None
        mounts = [contender(m, stack, skip=skip) for m in MOUNTERS]
        out.append(Case("layers", mount_workload(n), mounts, BASELINE, notes=notes))
        notes = []
        for kind in ("bottom-layer", "missing"):
            paths = (
                (scaling.bottom_paths if kind == "bottom-layer" else scaling.missing_paths)
                if scaling
                else []
            )
            stats = [
                contender(m, stack, lstat_all, with_full_paths(paths), skip=skip) for m in MOUNTERS
            ]
            out.append(Case("layers", stats_workload(kind, n), stats, BASELINE))
    return out
