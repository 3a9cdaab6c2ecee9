"""Pausing a mounted container's writes (what commit uses for a consistent snapshot)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from test_containers import (
    container_dir,
    mountpoint,  # noqa: F401 - a fixture
    require_fuse,
)

from unionfs.fs.control import writes_paused

from conftest import ImgfsRunner


def test_writes_wait_while_paused_and_nothing_is_lost(
    imgfs: ImgfsRunner,
    busybox_tar_file: Path,
    root: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    require_fuse()
    imgfs("import", str(busybox_tar_file), "busybox")
    cid = imgfs("create", "--name", "snap", "busybox").stdout.strip()
    upper = container_dir(root, cid) / "upper"
    mnt = mountpoint()
    imgfs("mount", "snap", str(mnt))
    try:
        with open(mnt / "root" / "before", "w") as f:
            f.write("cached by the kernel until synced\n")
        done: list[float] = []

        def writer() -> None:
            (mnt / "root" / "during").write_text("held\n")
            done.append(time.monotonic())

        with writes_paused(upper, mnt) as active:
            assert active
            # The pause synced the mount first: what was written is in the upper dir.
            assert (upper / "root" / "before").read_text().startswith("cached")
            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(0.5)
            assert not done and not (upper / "root" / "during").exists()
            resumed = time.monotonic()
        thread.join(timeout=30)
        assert done and done[0] >= resumed
        assert (upper / "root" / "during").read_text() == "held\n"
    finally:
        imgfs("umount", str(mnt))
    # Not mounted: nothing to pause.
    with writes_paused(upper, mnt) as active:
        assert not active
