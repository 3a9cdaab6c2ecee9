"""Real mounts for tests: the imgfs-overlay command over layer dirs, always unmounted."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unionfs.layers.unpack import unpack_tar

from conftest import require, require_root

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
def overlay_mount(lowers: list[Path], tmp: Path, name: str = "m") -> Iterator[tuple[Path, Path]]:
    """Mount `lowers` (top first) with a fresh upper dir; yields (mountpoint, upper dir)."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    upper, work, mnt = tmp / f"{name}-upper", tmp / f"{name}-work", tmp / name
    for d in (upper, work, mnt):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    subprocess.run([IMGFS_OVERLAY, "-o", opts, str(mnt)], check=True, timeout=60)
    try:
        yield mnt, upper
    finally:
        unmount(mnt)
