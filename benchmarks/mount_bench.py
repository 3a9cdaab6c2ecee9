"""Workloads on a mounted union: mount, `find`, `ls -lR`, `cat` of a big file.

Every contender mounts the same lower dirs (see `mount_data`) with a fresh upper and
work dir per rep, and each workload gets its own fresh mount: "cold" workloads drop
the kernel's caches (`sync; echo 3 > /proc/sys/vm/drop_caches`) after mounting, "warm"
ones run the same command once, untimed, on the mount first. Kernel overlayfs is the
baseline. For FUSE contenders the daemon's CPU seconds during the timed run and its
peak RSS (VmHWM) afterwards are recorded as metrics: the CPU column only counts the
harness and the command it ran (find, ls, cat), not the daemon answering them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import mount_data
from benchmarks.data import Dataset
from benchmarks.harness import Case, CommandError, Contender, Rep, run
from benchmarks.import_bench import imgfs_command

BASELINE = "kernel overlayfs"
BIG_BYTES = 1 << 30
QUICK_BIG_BYTES = 64 << 20
READY_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 30.0
NEEDS_ROOT = "needs root (mount, drop_caches)"
READERS = ("find", "ls", "cat")
"""The workloads' commands (GNU findutils and coreutils): required, and versioned."""


def imgfs_overlay_command() -> list[str]:
    script = Path(sys.executable).parent / "imgfs-overlay"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "unionfs.cli.overlay"]


# -- contenders: how each one mounts and unmounts ----------------------------------------


@dataclass(frozen=True)
class Mounter:
    name: str
    description: str
    requires: tuple[str, ...]
    fuse: bool
    ours: bool = False
    note: str = ""


MOUNTERS = [
    Mounter(
        BASELINE,
        "mount -t overlay overlay -o lowerdir=L1:L2:L3,upperdir=U,workdir=W MNT",
        ("mount", "umount"),
        fuse=False,
    ),
    Mounter(
        "imgfs-overlay",
        "imgfs-overlay -o lowerdir=L1:L2:L3,upperdir=U,workdir=W MNT (builds the merged"
        " index in W at every mount)",
        ("fusermount3",),
        fuse=True,
        ours=True,
    ),
    Mounter(
        "imgfs mount (container)",
        "imgfs create IMAGE (untimed), imgfs mount CONTAINER MNT: the same three layer dirs"
        " from the store, its persisted merged index, the container's fresh upper dir",
        ("fusermount3",),
        fuse=True,
        ours=True,
    ),
    Mounter(
        "fuse-overlayfs",
        "fuse-overlayfs -o lowerdir=L1:L2:L3,upperdir=U,workdir=W MNT",
        ("fuse-overlayfs", "fusermount3"),
        fuse=True,
    ),
    Mounter(
        "unionfs-fuse",
        "unionfs -o cow,allow_other,use_ino,suid,dev U=RW:L1=RO:L2=RO:L3=RO MNT",
        ("unionfs", "fusermount3"),
        fuse=True,
        note="unionfs-fuse has its own whiteout format (.unionfs/ meta files): it shows"
        " overlayfs whiteouts as the char devices 0:0 they are on disk and does not honour"
        " opaque dirs, so it lists more entries than the others (read workloads only)",
    ),
]


def _lowerdir(stack: mount_data.Stack) -> str:
    return ":".join(str(d) for d in stack.lower_dirs)


def _mount_command(m: Mounter, stack: mount_data.Stack, rep: Rep) -> list[str]:
    mnt, upper, work = rep.state["mnt"], rep.state["upper"], rep.state["work"]
    overlay_opts = f"lowerdir={_lowerdir(stack)},upperdir={upper},workdir={work}"
    if m.name == BASELINE:
        return ["mount", "-t", "overlay", "overlay", "-o", overlay_opts, str(mnt)]
    if m.name == "imgfs-overlay":
        return [*imgfs_overlay_command(), "-o", overlay_opts, str(mnt)]
    if m.name == "imgfs mount (container)":
        return [*imgfs_command(), "--root", str(stack.store), "mount", rep.state["cid"], str(mnt)]
    if m.name == "fuse-overlayfs":
        return ["fuse-overlayfs", "-o", overlay_opts, str(mnt)]
    if m.name == "unionfs-fuse":
        branches = ":".join([f"{upper}=RW"] + [f"{d}=RO" for d in stack.lower_dirs])
        return ["unionfs", "-o", "cow,allow_other,use_ino,suid,dev", branches, str(mnt)]
    raise ValueError(m.name)


def _prepare_rep(m: Mounter, stack: mount_data.Stack, rep: Rep) -> None:
    """Untimed: the rep's dirs, and for `imgfs mount` a fresh container."""
    for key in ("mnt", "upper", "work"):
        rep.state[key] = rep.workdir / key
        rep.state[key].mkdir()
    if m.name == "imgfs mount (container)":
        out = run([*imgfs_command(), "--root", stack.store, "create", stack.image])
        rep.state["cid"] = out.strip()


def _mount(m: Mounter, stack: mount_data.Stack, rep: Rep) -> None:
    """Run the mount command and wait until the mountpoint answers as the new mount."""
    mnt: Path = rep.state["mnt"]
    log = rep.workdir / "mount.log"
    cmd = _mount_command(m, stack, rep)
    rep.state["mounting"] = True
    with open(log, "wb") as f:  # not a pipe: a daemon that keeps stderr would block us
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=300)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise CommandError(f"{Path(cmd[0]).name} exited {proc.returncode}: " + " | ".join(tail))
    parent_dev = os.stat(mnt.parent).st_dev
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            if os.stat(mnt).st_dev != parent_dev:
                os.listdir(mnt)
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise CommandError(f"{m.name}: {mnt} did not answer within {READY_TIMEOUT:.0f} s")
        time.sleep(0.001)
    if m.fuse:
        rep.state["daemon"] = daemon_pid(mnt)


def _unmount(m: Mounter, stack: mount_data.Stack, rep: Rep) -> None:
    """Unmount (lazily if it is busy) and wait for the daemon to exit; remove the container."""
    mnt = rep.state.get("mnt")
    if mnt is not None and rep.state.pop("mounting", False):
        if m.name == "imgfs mount (container)":
            cmd = [*imgfs_command(), "--root", str(stack.store), "umount", str(mnt)]
        elif m.fuse:
            cmd = ["fusermount3", "-u", str(mnt)]
        else:
            cmd = ["umount", str(mnt)]
        pid = rep.state.get("daemon") or (daemon_pid(mnt) if m.fuse else None)
        done = subprocess.run(cmd, capture_output=True, timeout=UNMOUNT_TIMEOUT)
        if done.returncode != 0 and _is_mountpoint(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if pid is not None:
            _wait_gone(pid, UNMOUNT_TIMEOUT)
    cid = rep.state.pop("cid", None)
    if cid is not None:
        run([*imgfs_command(), "--root", stack.store, "rm", "-f", cid])


def _is_mountpoint(path: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(path) for line in text.splitlines())


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _proc_cpu_s(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)


# -- the FUSE daemon's pid, CPU time and peak RSS ------------------------------------------


def daemon_pid(mnt: Path) -> int | None:
    """The process serving the FUSE mount at `mnt`: it holds /dev/fuse open and has the
    mountpoint on its command line (every contender's daemon keeps its argv)."""
    want = os.fsencode(str(mnt))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if want not in argv and not any(a.endswith(b"," + want) for a in argv):
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == "/dev/fuse" for fd in fds):
                return int(entry)
        except OSError:
            continue
    return None


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process (None once it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _daemon_metrics(rep: Rep, since: str | None) -> dict[str, float]:
    """Daemon CPU seconds (since the mark `since`, else since it started) and peak RSS."""
    pid = rep.state.get("daemon")
    if pid is None:
        return {}
    out: dict[str, float] = {}
    cpu = _proc_cpu_s(pid)
    if cpu is not None:
        out["daemon_cpu_s"] = round(cpu - (rep.state.get(since, 0.0) if since else 0.0), 3)
    hwm = _vm_hwm_bytes(pid)
    if hwm is not None:
        out["daemon_peak_rss_bytes"] = hwm
    return out


def _mark_daemon_cpu(rep: Rep) -> None:
    pid = rep.state.get("daemon")
    cpu = _proc_cpu_s(pid) if pid is not None else None
    if cpu is not None:
        rep.state["cpu0"] = cpu


# -- workloads -----------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _find(rep: Rep) -> None:
    out = subprocess.run(
        ["find", str(rep.state["mnt"])], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    if out.returncode != 0:
        raise CommandError(f"find exited {out.returncode}")
    rep.state["entries"] = out.stdout.count(b"\n") - 1  # without the mountpoint itself


def _to_null(cmd: list[str]) -> None:
    """Run a reader with its output thrown away; a failure says what it printed on stderr."""
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(f"{cmd[0]} exited {proc.returncode}: " + " | ".join(tail))


def _ls(rep: Rep) -> None:
    _to_null(["ls", "-lR", str(rep.state["mnt"])])


def _cat(rep: Rep) -> None:
    _to_null(["cat", str(rep.state["mnt"] / mount_data.BIG_NAME)])


@dataclass(frozen=True)
class Workload:
    name: str
    action: Callable[[Rep], None]
    cold: bool
    reads_big: bool = False


def _workloads(big_label: str) -> list[Workload]:
    return [
        Workload("find (cold)", _find, cold=True),
        Workload("find (warm)", _find, cold=False),
        Workload("ls -lR (warm)", _ls, cold=False),
        Workload(f"cat {big_label} (cold)", _cat, cold=True, reads_big=True),
        Workload(f"cat {big_label} (warm)", _cat, cold=False, reads_big=True),
    ]


def _mount_contender(m: Mounter, stack: mount_data.Stack, skip: str | None) -> Contender:
    """The mount itself is the timed action; the semantics check runs after it."""

    def inspect(rep: Rep) -> dict[str, float]:
        problems = stack.check(rep.state["mnt"])
        return {**_daemon_metrics(rep, None), "overlay_semantics_ok": float(not problems)}

    return Contender(
        m.name,
        lambda rep: _mount(m, stack, rep),
        setup=lambda rep: _prepare_rep(m, stack, rep),
        teardown=lambda rep: _unmount(m, stack, rep),
        description=m.description,
        requires=(*m.requires, *READERS),
        inspect=inspect,
        ours=m.ours,
        skip=skip,
    )


def _workload_contender(
    m: Mounter, stack: mount_data.Stack, w: Workload, skip: str | None
) -> Contender:
    def setup(rep: Rep) -> None:
        _prepare_rep(m, stack, rep)
        _mount(m, stack, rep)
        if w.cold:
            drop_caches()
        else:
            w.action(rep)
        _mark_daemon_cpu(rep)

    def inspect(rep: Rep) -> dict[str, float]:
        metrics = _daemon_metrics(rep, "cpu0")
        if "entries" in rep.state:
            metrics["entries"] = rep.state["entries"]
        return metrics

    return Contender(
        m.name,
        w.action,
        setup=setup,
        teardown=lambda rep: _unmount(m, stack, rep),
        description=m.description,
        requires=(*m.requires, *READERS),
        inspect=inspect,
        ours=m.ours,
        skip=skip,
    )


def cases(data: Dataset, quick: bool) -> list[Case]:
    big = QUICK_BIG_BYTES if quick else BIG_BYTES
    label = mount_data.size_label(big)
    skip = None if os.geteuid() == 0 else NEEDS_ROOT
    stack = mount_data.prepare(data, big) if skip is None else None
    notes = [f"{data.name}: {data.description}"]
    if stack is not None:
        notes.append(stack.summary() + f" (expected: {stack.entries:,} entries for find)")
    notes += [
        "Each workload gets a fresh mount with a fresh upper/work dir per rep; cold = drop"
        " caches after mounting, warm = the same command ran once (untimed) on that mount.",
        "CPU = user+sys of the command (find/ls/cat) and the harness; daemon_cpu_s (below the"
        " table) is what the FUSE daemon spent answering it, daemon_peak_rss_bytes its VmHWM"
        " (for imgfs it includes the mmapped merged index).",
        "imgfs mount uses the store's persisted merged index (built once at `imgfs create`);"
        " imgfs-overlay builds it in the workdir at every mount, so its mount time includes"
        " the index build.",
    ]
    notes += [f"{m.name}: {m.note}" for m in MOUNTERS if m.note]

    def contender(m: Mounter, w: Workload | None) -> Contender:
        if stack is None:
            return Contender(m.name, lambda rep: None, requires=m.requires, skip=skip)
        if w is None:
            return _mount_contender(m, stack, skip)
        return _workload_contender(m, stack, w, skip)

    out = [Case("mount", "mount", [contender(m, None) for m in MOUNTERS], BASELINE, notes=notes)]
    for w in _workloads(label):
        out.append(
            Case(
                "mount",
                w.name,
                [contender(m, w) for m in MOUNTERS],
                BASELINE,
                bytes=big if w.reads_big else None,
            )
        )
    return out
