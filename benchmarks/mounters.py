"""The union mounts being compared: how each contender mounts and unmounts a layer stack.

Shared by every benchmark that works on a mounted union (`mount_bench`, `layers_bench`,
`profile_mount`), so all of them mount exactly alike. A FUSE contender's daemon is found
after mounting, for its CPU time and peak RSS (VmHWM), read before it is unmounted.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchmarks.harness import CommandError, Contender, Rep, run
from benchmarks.import_bench import imgfs_command

BASELINE = "kernel overlayfs"
READY_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 30.0
MOUNT_TIMEOUT = 300.0
NEEDS_ROOT = "needs root (mount, drop_caches)"
IMGFS_MOUNT = "imgfs mount (container)"


class Layered(Protocol):
    """A stack of layer dirs, also imported as an image into an imgfs store."""

    @property
    def store(self) -> Path: ...

    @property
    def image(self) -> str: ...

    @property
    def lower_dirs(self) -> list[Path]:
        """Top first, as overlayfs's lowerdir= lists them."""
        ...


def imgfs_overlay_command() -> list[str]:
    script = Path(sys.executable).parent / "imgfs-overlay"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "unionfs.cli.overlay"]


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
        "mount -t overlay overlay -o lowerdir=L1:L2:...,upperdir=U,workdir=W MNT (lower dirs"
        " relative to their common parent, the mount's cwd: 100 layers fit in a page)",
        ("mount", "umount"),
        fuse=False,
    ),
    Mounter(
        "imgfs-overlay",
        "imgfs-overlay -o lowerdir=L1:L2:...,upperdir=U,workdir=W MNT (builds the merged"
        " index in W at every mount)",
        ("fusermount3",),
        fuse=True,
        ours=True,
    ),
    Mounter(
        IMGFS_MOUNT,
        "imgfs create IMAGE (untimed), imgfs mount CONTAINER MNT: the same layer dirs"
        " from the store, its persisted merged index, the container's fresh upper dir",
        ("fusermount3",),
        fuse=True,
        ours=True,
    ),
    Mounter(
        "fuse-overlayfs",
        "fuse-overlayfs -o lowerdir=L1:L2:...,upperdir=U,workdir=W MNT",
        ("fuse-overlayfs", "fusermount3"),
        fuse=True,
    ),
    Mounter(
        "unionfs-fuse",
        "unionfs -o cow,allow_other,use_ino,suid,dev U=RW:L1=RO:L2=RO:... MNT",
        ("unionfs", "fusermount3"),
        fuse=True,
        note="unionfs-fuse has its own whiteout format (.unionfs/ meta files): it shows"
        " overlayfs whiteouts as the char devices 0:0 they are on disk and does not honour"
        " opaque dirs, so it lists more entries than the others",
    ),
]


def mount_command(m: Mounter, stack: Layered, rep: Rep) -> tuple[list[str], Path | None]:
    """The command line and its cwd (kernel overlayfs gets short relative lower dirs)."""
    mnt, upper, work = rep.state["mnt"], rep.state["upper"], rep.state["work"]
    lower = ":".join(str(d) for d in stack.lower_dirs)
    overlay_opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if m.name == BASELINE:
        # mount(2) takes one page of options: 100 absolute layer paths would not fit
        cwd = Path(os.path.commonpath([d.parent for d in stack.lower_dirs]))
        lower = ":".join(os.path.relpath(d, cwd) for d in stack.lower_dirs)
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        return ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], cwd
    if m.name == "imgfs-overlay":
        return [*imgfs_overlay_command(), "-o", overlay_opts, str(mnt)], None
    if m.name == IMGFS_MOUNT:
        cmd = [*imgfs_command(), "--root", str(stack.store), "mount", rep.state["cid"], str(mnt)]
        return cmd, None
    if m.name == "fuse-overlayfs":
        return ["fuse-overlayfs", "-o", overlay_opts, str(mnt)], None
    if m.name == "unionfs-fuse":
        branches = ":".join([f"{upper}=RW"] + [f"{d}=RO" for d in stack.lower_dirs])
        return ["unionfs", "-o", "cow,allow_other,use_ino,suid,dev", branches, str(mnt)], None
    raise ValueError(m.name)


def prepare_rep(m: Mounter, stack: Layered, rep: Rep) -> None:
    """Untimed: the rep's empty mnt/upper/work dirs, and for `imgfs mount` a fresh container."""
    for key in ("mnt", "upper", "work"):
        rep.state[key] = rep.workdir / key
        rep.state[key].mkdir()
    if m.name == IMGFS_MOUNT:
        out = run([*imgfs_command(), "--root", stack.store, "create", stack.image])
        rep.state["cid"] = out.strip()


def mount(m: Mounter, stack: Layered, rep: Rep) -> None:
    """Run the mount command and wait until the mountpoint answers as the new mount."""
    mnt: Path = rep.state["mnt"]
    log = rep.workdir / "mount.log"
    cmd, cwd = mount_command(m, stack, rep)
    rep.state["mounting"] = True
    with open(log, "wb") as f:  # not a pipe: a daemon that keeps stderr would block us
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        wait_exactly(proc, MOUNT_TIMEOUT)
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


def wait_exactly(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for `proc` to exit, waking when it does. Popen.wait(timeout) polls with
    sleeps that grow to 50 ms, which rounded every mount time up to the next poll (a
    90 ms mount measured 117 ms, one of 3 ms measured 3.5 or 7.5 ms)."""
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            proc.kill()
            proc.wait()
            raise CommandError(f"{Path(str(proc.args[0])).name} did not exit in {timeout:.0f} s")
    finally:
        os.close(fd)
    return proc.wait()


def unmount(m: Mounter, stack: Layered, rep: Rep) -> None:
    """Unmount (lazily if it is busy) and wait for the daemon to exit; remove the container."""
    mnt = rep.state.get("mnt")
    if mnt is not None and rep.state.pop("mounting", False):
        if m.name == IMGFS_MOUNT:
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
    while proc_cpu_s(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


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


def proc_cpu_s(pid: int) -> float | None:
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


def daemon_metrics(rep: Rep, since: str | None) -> dict[str, float]:
    """Daemon CPU seconds (since the mark `since`, else since it started) and peak RSS."""
    pid = rep.state.get("daemon")
    if pid is None:
        return {}
    out: dict[str, float] = {}
    cpu = proc_cpu_s(pid)
    if cpu is not None:
        out["daemon_cpu_s"] = round(cpu - (rep.state.get(since, 0.0) if since else 0.0), 3)
    hwm = _vm_hwm_bytes(pid)
    if hwm is not None:
        out["daemon_peak_rss_bytes"] = hwm
    return out


def mark_daemon_cpu(rep: Rep) -> None:
    """Remember the daemon's CPU seconds so far (`cpu0`), for `daemon_metrics(rep, "cpu0")`."""
    pid = rep.state.get("daemon")
    cpu = proc_cpu_s(pid) if pid is not None else None
    if cpu is not None:
        rep.state["cpu0"] = cpu


# -- a contender on a fresh mount ------------------------------------------------------------


def contender(
    m: Mounter,
    stack: Layered | None,
    action: Callable[[Rep], int | None] | None = None,
    before: Callable[[Rep], None] | None = None,
    check: Callable[[Rep], dict[str, float]] | None = None,
    requires: tuple[str, ...] = (),
    skip: str | None = None,
) -> Contender:
    """`m` on a fresh mount of `stack` per rep. Without an `action` the mount itself is
    timed; otherwise the setup mounts, runs `before` (warm-up, cache drop) and the action
    is timed. Metrics: the daemon's CPU during the timed part and its peak RSS, whatever
    the action put in `rep.state["metrics"]`, and `check`'s numbers."""
    if stack is None:  # cannot run here (`skip` says why): listed, never set up
        return Contender(m.name, lambda rep: None, requires=m.requires, skip=skip)
    layers = stack

    def setup(rep: Rep) -> None:
        rep.state["metrics"] = {}
        prepare_rep(m, layers, rep)
        if action is not None:
            mount(m, layers, rep)
            if before is not None:
                before(rep)
            mark_daemon_cpu(rep)

    def timed(rep: Rep) -> int | None:
        if action is None:
            mount(m, layers, rep)
            return None
        return action(rep)

    def inspect(rep: Rep) -> dict[str, float]:
        metrics = daemon_metrics(rep, "cpu0" if action is not None else None)
        metrics.update(rep.state["metrics"])
        if check is not None:
            metrics.update(check(rep))
        return metrics

    return Contender(
        m.name,
        timed,
        setup=setup,
        teardown=lambda rep: unmount(m, layers, rep),
        description=m.description,
        requires=(*m.requires, *requires),
        inspect=inspect,
        ours=m.ours,
        skip=skip,
    )
