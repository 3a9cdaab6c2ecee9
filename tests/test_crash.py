"""kill -9 of the daemon under a writer: what was fsynced survives, the mountpoint recovers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from test_containers import (
    container_dir,
    mountpoint,  # noqa: F401 - a fixture
    require_fuse,
)

from conftest import ImgfsRunner

WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
try:
    while True:
        os.write(fd, b"line %06d\n" % n)
        os.fsync(fd)
        n += 1
        print(n, flush=True)
except OSError:
    pass
"""


def test_kill_9_under_a_writer(
    imgfs: ImgfsRunner,
    busybox_tar_file: Path,
    root: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    require_fuse()
    imgfs("import", str(busybox_tar_file), "busybox")
    cid = imgfs("create", "--name", "victim", "busybox").stdout.strip()
    mnt = mountpoint()
    imgfs("mount", "victim", str(mnt))
    pid = json.loads((container_dir(root, cid) / "mount.json").read_text())["pid"]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(mnt / "root" / "log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    synced = 0
    deadline = time.monotonic() + 30
    while synced < 200 and time.monotonic() < deadline:
        synced = int(writer.stdout.readline() or synced)
    os.kill(pid, signal.SIGKILL)
    for line in writer.stdout:  # lines fsynced before the kill reached us
        synced = max(synced, int(line))
    writer.wait(timeout=30)
    assert synced >= 200
    [row] = [json.loads(line) for line in imgfs("ps", "-a", "--format", "json").stdout.splitlines()]
    assert row["Status"] == "stale"
    imgfs("umount", str(mnt))
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    data = (container_dir(root, cid) / "upper" / "root" / "log").read_bytes()
    lines = data.splitlines()
    assert len(lines) >= synced
    assert lines[:synced] == [b"line %06d" % i for i in range(synced)]
    # The container mounts again and shows the file.
    imgfs("mount", "victim", str(mnt))
    try:
        assert (mnt / "root" / "log").read_bytes() == data
    finally:
        imgfs("umount", str(mnt))
