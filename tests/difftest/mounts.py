"""Mounting the oracle (kernel overlayfs) and ours (imgfs-overlay, or kernel overlayfs again).

Every mount is undone in a `finally`, with a lazy unmount when the plain one fails. A
watchdog aborts the FUSE connection (or kills the daemon this test started) when one
operation on our mount hangs, so a deadlocked daemon fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Tried in order; the first that mounts is the oracle's (and kernel "ours"'s) option set.
# index=on needs upper/work on a filesystem with file handles (ext4, xfs, btrfs, tmpfs).
KERNEL_OPTIONS = ("redirect_dir=on,index=on,metacopy=off", "redirect_dir=on")
OURS_KINDS = ("imgfs", "kernel")


class MountError(Exception):
    pass


def ours_kind() -> str:
    kind = os.environ.get("IMGFS_DIFF_OURS", "imgfs")
    if kind not in OURS_KINDS:
        raise ValueError(f"IMGFS_DIFF_OURS must be one of {OURS_KINDS}, not {kind!r}")
    return kind


def imgfs_overlay_bin() -> Path:
    """The fuse-overlayfs-compatible command, installed next to this Python."""
    return Path(sys.executable).parent / "imgfs-overlay"


def _layer_option(lowers: Sequence[Path], upper: Path, work: Path) -> str:
    paths = [*lowers, upper, work]
    for p in paths:
        if "," in str(p) or ":" in str(p):
            raise MountError(f"path unusable in mount options: {p}")
    return f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"


def _dmesg_tail() -> str:
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
        return "\n".join(proc.stdout.splitlines()[-5:])
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass
class Mount:
    root: str
    kind: str  # "kernel" or "imgfs"
    dev: int = 0

    @property
    def fuse(self) -> bool:
        return self.kind == "imgfs"


def mount_kernel(lowers: Sequence[Path], upper: Path, work: Path, mnt: Path, options: str) -> Mount:
    opts = f"{_layer_option(lowers, upper, work)},{options}"
    cmd = ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise MountError(f"{' '.join(cmd)}: {proc.stderr.strip()}\n{_dmesg_tail()}")
    return Mount(str(mnt), "kernel", os.stat(mnt).st_dev)


def mount_imgfs(lowers: Sequence[Path], upper: Path, work: Path, mnt: Path) -> Mount:
    cmd = [str(imgfs_overlay_bin()), "-o", _layer_option(lowers, upper, work), str(mnt)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        unmount(Mount(str(mnt), "imgfs"))
        raise MountError(f"{' '.join(cmd)} did not detach within 60 s") from e
    if proc.returncode != 0:
        unmount(Mount(str(mnt), "imgfs"))
        raise MountError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):  # it should detach only once mounted; allow a little slack
        if time.monotonic() > deadline:
            raise MountError(f"{' '.join(cmd)} exited 0 but {mnt} is not a mount point")
        time.sleep(0.05)
    return Mount(str(mnt), "imgfs", os.stat(mnt).st_dev)


def mount_ours(kind: str, lowers: Sequence[Path], upper: Path, work: Path, mnt: Path, options: str):
    if kind == "kernel":
        return mount_kernel(lowers, upper, work, mnt, options)
    return mount_imgfs(lowers, upper, work, mnt)


def _daemon_pids(mnt: str) -> list[int]:
    """imgfs-overlay processes (started by this test) serving `mnt`, found by their argv."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in argv and any(b"imgfs-overlay" in a for a in argv):
            pids.append(int(entry))
    return pids


def abort(mount: Mount) -> str:
    """Make a hung FUSE mount fail its requests: abort the connection or kill its daemon."""
    if not mount.fuse:
        return "not a FUSE mount"
    if os.major(mount.dev) == 0:
        ctl = Path(f"/sys/fs/fuse/connections/{os.minor(mount.dev)}/abort")
        if ctl.exists():
            ctl.write_text("1")
            return f"aborted through {ctl}"
    pids = _daemon_pids(mount.root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return f"killed daemon pids {pids}" if pids else "found no daemon to kill"


def unmount(mount: Mount) -> None:
    """Unmount, falling back to a lazy unmount; never raises for an already-gone mount."""
    mnt = mount.root
    if not os.path.ismount(mnt):
        return
    plain = ["fusermount3", "-u", mnt] if mount.fuse else ["umount", mnt]
    lazy = ["fusermount3", "-u", "-z", mnt] if mount.fuse else ["umount", "-l", mnt]
    for cmd in (plain, lazy, ["umount", "-l", mnt]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            abort(mount)
        if not os.path.ismount(mnt):
            return
    raise MountError(f"could not unmount {mnt}")


@contextlib.contextmanager
def mounted(mount: Mount) -> Iterator[Mount]:
    try:
        yield mount
    finally:
        unmount(mount)


class Watchdog:
    """Aborts our FUSE mount when one guarded step runs longer than `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired: str | None = None
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._mount: Mount | None = None
        self._what = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, mount: Mount, what: str) -> Iterator[None]:
        if not mount.fuse:
            yield
            return
        with self._lock:
            self._deadline = time.monotonic() + self.timeout
            self._mount, self._what = mount, what
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                mount, what = self._mount, self._what
                if late:
                    self._deadline = None
            if late and mount is not None:
                how = abort(mount)
                self.fired = f"{what} hung for more than {self.timeout:g} s ({how})"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


_probed: dict[str, tuple[str | None, list[str]]] = {}


def kernel_options(scratch: Path) -> tuple[str | None, list[str]]:
    """The first of KERNEL_OPTIONS kernel overlayfs accepts here (probed once per process),
    and why the ones before it failed."""
    if "result" in _probed:
        return _probed["result"]
    errors = []
    chosen = None
    for i, options in enumerate(KERNEL_OPTIONS):
        base = scratch / f"probe{i}"
        dirs = [base / n for n in ("l0", "l1", "u", "w", "m")]
        for d in dirs:
            d.mkdir(parents=True)
        (dirs[1] / "d").mkdir()
        (dirs[1] / "d" / "f").write_text("x")
        try:
            mount = mount_kernel(dirs[:2], dirs[2], dirs[3], dirs[4], options)
            with mounted(mount):
                os.rename(dirs[4] / "d", dirs[4] / "e")  # a lower dir: EXDEV without redirect_dir
                os.link(dirs[4] / "e" / "f", dirs[4] / "g")
        except (MountError, OSError, subprocess.SubprocessError) as e:
            errors.append(f"-o {options}: {e}")
            continue
        chosen = options
        break
    _probed["result"] = (chosen, errors)
    return chosen, errors
