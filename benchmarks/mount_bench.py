"""Workloads on a mounted union (see `workloads`): every contender (see `mounters`)
mounts the same lower dirs (see `mount_data`) with a fresh upper and work dir per rep,
and each workload gets its own fresh mount. Kernel overlayfs is the baseline. For FUSE
contenders the daemon's CPU seconds during the timed run and its peak RSS (VmHWM)
before unmounting are recorded as metrics: the CPU column only counts the harness and
the command it ran, not the daemon answering it.
"""

from __future__ import annotations

import os

from benchmarks import mount_data, workload_data
from benchmarks.data import Dataset
from benchmarks.harness import Case, Rep
from benchmarks.mounters import BASELINE, MOUNTERS, NEEDS_ROOT, contender
from benchmarks.workloads import TOOLS, Workload, workloads

BIG_BYTES = 1 << 30
QUICK_BIG_BYTES = 64 << 20


def cases(data: Dataset, quick: bool) -> list[Case]:
    big = QUICK_BIG_BYTES if quick else BIG_BYTES
    skip = None if os.geteuid() == 0 else NEEDS_ROOT
    stack = mount_data.prepare(data, big) if skip is None else None
    notes = [f"{data.name}: {data.description}"]
    loads: list[Workload] = []
    if stack is not None:
        inputs = workload_data.prepare(data, stack, quick)
        loads = workloads(stack, inputs, quick)
        notes += [
            stack.summary() + f" (expected: {stack.entries:,} entries for find)",
            f"lstat every path: {len(inputs.paths):,} paths (the merged tree) stat-ed by a"
            f" Python loop in the harness; untar: {inputs.untar_what},"
            f" {inputs.untar_entries:,} entries, {inputs.untar_bytes / 1e6:.1f} MB, into a new"
            " dir of the mount (rm -rf removes it again, untarred untimed before).",
        ]
    notes += [
        "Each workload gets a fresh mount with a fresh upper/work dir per rep; cold = drop"
        " caches after mounting, warm = the same command ran once (untimed) on that mount.",
        "CPU = user+sys of the command and the harness; daemon_cpu_s (below the table) is"
        " what the FUSE daemon spent answering it, daemon_peak_rss_bytes its VmHWM before"
        " unmounting (for imgfs it includes the mmapped merged index).",
        "imgfs mount uses the store's persisted merged index (built once at `imgfs create`);"
        " imgfs-overlay builds it in the workdir at every mount, so its mount time includes"
        " the index build.",
        "fio: 4 KiB random reads (psync, --invalidate=0) of the big file, after one `cat` of"
        " it on the mount; × baseline is kernel's IOPS / the contender's.",
    ]
    notes += [f"{m.name}: {m.note}" for m in MOUNTERS if m.note]

    def check(rep: Rep) -> dict[str, float]:
        assert stack is not None
        return {"overlay_semantics_ok": float(not stack.check(rep.state["mnt"]))}

    mount_case = [contender(m, stack, check=check, requires=TOOLS, skip=skip) for m in MOUNTERS]
    out = [Case("mount", "mount", mount_case, BASELINE, notes=notes)]
    for w in loads:
        contenders = [
            contender(m, stack, w.action, w.before, requires=TOOLS, skip=skip) for m in MOUNTERS
        ]
        out.append(Case("mount", w.name, contenders, BASELINE, w.bytes, rate_metric=w.rate_metric))
    return out
