"""Real mounts for tests: the imgfs-overlay command over layer dirs, always unmounted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from difftest.mounts import kernel_options, mount_kernel
from difftest.mounts import mounted as unmounted_after

from unionfs.layers.unpack import unpack_tar

from conftest import ImgfsRunner, require, require_root

IMGFS_OVERLAY = str(Path(sys.executable).with_name("imgfs-overlay"))


def unpack_layer(data: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True)
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        unpack_tar(io.BytesIO(data), fd)
    finally:
        os.close(fd)
    return dest


def unmount(mnt: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@contextmanager
def kernel_overlay_mount(lowers: list[Path], tmp: Path, name: str = "k") -> Iterator[Path]:
    """Kernel overlayfs over `lowers` with a fresh upper dir and the differential tests'
    options (redirect_dir, index: lower hard links stay one inode, as in imgfs)."""
    options, errors = kernel_options(tmp / f"{name}-probe")
    require(options is not None, f"kernel overlayfs unusable here: {errors}")
    upper, work, mnt = tmp / f"{name}-upper", tmp / f"{name}-work", tmp / name
    for d in (upper, work, mnt):
        d.mkdir()
    with unmounted_after(mount_kernel(lowers, upper, work, mnt, str(options))):
        yield mnt


def fastpath_counters(stats: Path) -> dict[str, int]:
    """The C fast path's counters, which the daemon writes to IMGFS_FASTPATH_STATS as it
    stops (fusermount3 -u does not wait for it)."""
    deadline = time.monotonic() + 30
    while not stats.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.exists(), "the fast path was not installed"
    return json.loads(stats.read_text())


@contextmanager
def overlay_mount(
    lowers: list[Path], tmp: Path, name: str = "m", env: dict[str, str] | None = None
) -> Iterator[tuple[Path, Path]]:
    """Mount `lowers` (top first) with a fresh upper dir; yields (mountpoint, upper dir).
    `env`: settings for the daemon (added to this process's environment)."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    upper, work, mnt = tmp / f"{name}-upper", tmp / f"{name}-work", tmp / name
    for d in (upper, work, mnt):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    run_env = {**os.environ, **(env or {})}
    subprocess.run([IMGFS_OVERLAY, "-o", opts, str(mnt)], check=True, timeout=60, env=run_env)
    try:
        yield mnt, upper
    finally:
        unmount(mnt)


@contextmanager
def fastpath_mount(
    lowers: list[Path], tmp: Path, name: str, fast: bool
) -> Iterator[tuple[Path, Path]]:
    """An imgfs-overlay mount with the C fast path on or off; yields (mountpoint, the
    file its fast path counters go to: see fastpath_counters)."""
    stats = tmp / f"{name}-stats.json"
    env = {"IMGFS_FASTPATH": "1" if fast else "0", "IMGFS_FASTPATH_STATS": str(stats)}
    with overlay_mount(lowers, tmp, name, env) as (mnt, _):
        yield mnt, stats


def require_fuse() -> None:
    require_root()
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require(shutil.which("fusermount3") is not None, "needs fusermount3 (apt install fuse3)")


def tree_of(root: Path, *, with_root: bool = False) -> dict[str, tuple]:
    """Everything a rootfs is compared by: type, mode, owner, mtime, content, link target,
    device number and xattrs of every entry, plus the hard-link groups (names sharing an
    inode). The root's own metadata only `with_root` (a layer unpacked from a tar without
    a `./` entry has the root of the moment it was unpacked)."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        first = with_root and dirpath == str(root)
        for name in ["", *dirnames, *filenames] if first else dirnames + filenames:
            path = Path(dirpath) / name if name else Path(dirpath)
            rel = str(path.relative_to(root))
            st = path.lstat()
            try:
                xattrs = {
                    k: os.getxattr(path, k, follow_symlinks=False)
                    for k in os.listxattr(path, follow_symlinks=False)
                }
            except OSError:
                xattrs = {}
            meta = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid)
            meta += (st.st_mtime_ns, tuple(sorted(xattrs.items())))
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = (*meta, os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                tree[rel] = (*meta, hashlib.sha256(path.read_bytes()).hexdigest())
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                tree[rel] = (*meta, st.st_rdev)
            else:
                tree[rel] = meta
    tree["<hard links>"] = tuple(sorted(tuple(sorted(g)) for g in inodes.values() if len(g) > 1))
    return tree


@contextmanager
def mounted(imgfs: ImgfsRunner, target: str, where: Path, *options: str) -> Iterator[Path]:
    require_fuse()
    where.mkdir(exist_ok=True)
    imgfs("mount", *(["-o", ",".join(options)] if options else []), target, str(where))
    try:
        yield where
    finally:
        imgfs("umount", str(where), check=False)
