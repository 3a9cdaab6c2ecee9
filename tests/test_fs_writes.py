"""Write paths the daemon shortcuts must show what kernel overlayfs shows.

Creations build their node from the new entry's stat (no xattr reads), remember whether
the parent has a default ACL and the new file's xattr names; small copy-ups run without
a lock; rmdir lists the upper dir once. Each test does the same on kernel overlayfs and
on imgfs-overlay and compares.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from mounts import (
    IMGFS_OVERLAY,
    fastpath_counters,
    fastpath_mount,
    kernel_overlay_mount,
    overlay_mount,
    require_fuse,
)
from test_fs_cache import _mounted, _tree

from conftest import require, require_root

CAPS = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw


def _layer(tmp: Path) -> Path:
    low = tmp / "low"
    (low / "d" / "sub").mkdir(parents=True)
    (low / "d" / "sub" / "f").write_text("f")
    (low / "d" / "small").write_text("small")
    (low / "d" / "big").write_bytes(os.urandom(3 << 20))
    (low / "d" / "gone").write_text("gone")
    return low


def _state(m: Path) -> list[tuple[str, str, int, bytes]]:
    """(path, mode, links, end of content and xattr names) of everything."""
    out = []
    for rel, _, _ in _tree(m):
        p = m / rel
        st = os.lstat(p)
        what = b""
        if stat.S_ISREG(st.st_mode):
            names = sorted(map(os.fsencode, os.listxattr(p)))
            what = p.read_bytes()[-64:] + b"|" + b",".join(names)
        out.append((rel, stat.filemode(st.st_mode), st.st_nlink, what))
    return out


def _work(m: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    d = m / "d"
    # copy-ups: small (no lock) and big (worker thread), then appends
    for name in ("small", "big"):
        with open(d / name, "ab") as f:
            f.write(b"+")
    # creations: the entry's inode number is the one a later lookup gives
    fd = os.open(d / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o4755)
    ino = os.fstat(fd).st_ino
    os.write(fd, b"new")
    os.close(fd)
    seen["new ino stable"] = os.lstat(d / "new").st_ino == ino
    os.mkdir(d / "nd")
    seen["nd ino stable"] = os.stat(d / "nd").st_ino == os.lstat(d / "nd").st_ino
    # a created file's xattrs: set a capability, chown and a write drop it
    os.setxattr(d / "new", "security.capability", CAPS)
    seen["new caps"] = os.getxattr(d / "new", "security.capability")
    with open(d / "new", "ab") as f:
        f.write(b"w")
    seen["new caps after write"] = sorted(os.listxattr(d / "new"))
    os.setxattr(d / "new", "security.capability", CAPS)
    os.chown(d / "new", 1, 1)
    seen["new caps after chown"] = sorted(os.listxattr(d / "new"))
    seen["new mode after chown"] = stat.filemode(os.lstat(d / "new").st_mode)
    # over a whiteout: a file where a lower file was, an opaque dir where a lower dir was
    os.unlink(d / "gone")
    (d / "gone").write_text("back")
    shutil.rmtree(d / "sub")
    os.mkdir(d / "sub")
    seen["sub"] = sorted(os.listdir(d / "sub"))
    with open(d / "sub" / "x", "w") as f:
        f.write("x")
    os.unlink(d / "sub" / "x")
    os.rmdir(d / "sub")  # its upper dir held a file and nothing else now
    seen["sub gone"] = not os.path.lexists(d / "sub")
    # a default ACL set, then removed, after creations in the dir were answered
    old = os.umask(0o077)
    try:
        (d / "nd" / "a").write_text("a")
        subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::r-x", str(d / "nd")], check=True)
        (d / "nd" / "b").write_text("b")
        os.mkdir(d / "nd" / "bd")
        subprocess.run(["setfacl", "-k", str(d / "nd")], check=True)
        (d / "nd" / "c").write_text("c")
    finally:
        os.umask(old)
    return seen


def test_writes_as_kernel_overlayfs(tmp_path: Path) -> None:
    require_root()
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    require(shutil.which("setfacl") is not None, "needs setfacl (apt install acl)")
    low = _layer(tmp_path)
    results = []
    with (
        _mounted("kernel", [low], tmp_path, {}) as kern,
        _mounted("imgfs", [low], tmp_path, {}) as ours,
    ):
        for m in (kern, ours):
            seen = _work(m)
            results.append((seen, _state(m)))
    assert results[1][0] == results[0][0]
    assert results[1][1] == results[0][1]


def test_deleting_freshly_written_files_raises_no_daemon_errors(tmp_path: Path) -> None:
    """The writeback cache flushes the times of a written file when it is unlinked (a
    SETATTR for an inode that has no name any more): the daemon must take it quietly
    (it used to answer EIO after logging a traceback for every such file, which made
    `rm -rf` of an untarred tree ten times slower)."""
    require_root()
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "m"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    log = tmp_path / "daemon.log"
    env = dict(os.environ, IMGFS_MOUNT_SERVER="0")
    with open(log, "wb") as err:
        daemon = subprocess.Popen(
            [
                IMGFS_OVERLAY,
                "-f",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                str(mnt),
            ],
            stderr=err,
            env=env,
        )
        try:
            deadline = 100
            while not os.path.ismount(mnt) and deadline:
                deadline -= 1
                subprocess.run(["sleep", "0.05"], check=True)
            assert os.path.ismount(mnt)
            tree = mnt / "tree"
            for i in range(20):
                (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
                (tree / f"d{i % 4}" / f"f{i}").write_bytes(b"x" * (i * 1000 + 1))
            shutil.rmtree(tree)
            assert not tree.exists()
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            daemon.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "failed" not in text, text[-2000:]


def test_written_files_keep_on_disk_the_times_the_mount_showed(tmp_path: Path) -> None:
    """With the writeback cache the kernel keeps a file's mtime: it stamps writes to its
    coarse clock (or not at all within a tick of the file's creation) and sends a SETATTR
    when it changed the times. The upper dir must end up with the times the mount showed,
    or diff, commit, export and the next mount disagree with what programs saw."""
    require_root()
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    low = _layer(tmp_path)
    shown: dict[str, int] = {}
    with _mounted("imgfs", [low], tmp_path, {}) as m:
        for i in range(50):  # new files, written at once
            with open(m / f"new{i}", "w") as f:
                f.write("x" * i)
            shown[f"new{i}"] = os.stat(m / f"new{i}").st_mtime_ns
        for name in ("small", "big"):  # copied up by the append
            with open(m / "d" / name, "ab") as f:
                f.write(b"+")
            shown[f"d/{name}"] = os.stat(m / "d" / name).st_mtime_ns
        os.utime(m / "new1", ns=(1, 2_000_000_001))
        shown["new1"] = os.stat(m / "new1").st_mtime_ns
        with open(m / "new2", "r+b") as f:  # a write after the file was synced to disk
            os.fsync(f.fileno())
            f.write(b"y")
        shown["new2"] = os.stat(m / "new2").st_mtime_ns
    on_disk = {rel: os.stat(tmp_path / "imgfs-u" / rel).st_mtime_ns for rel in shown}
    assert on_disk == shown
    assert shown["new1"] == 2_000_000_001


def _read_through_old_fds(m: Path) -> dict[str, object]:
    """Files opened read-only before another fd writes them (a copy-up), read again once
    the page cache let go of them: kernel overlayfs re-opens such fds on the copy."""
    seen: dict[str, object] = {}

    def reopened(name: str, write: Callable[[Path], None]) -> None:
        fd = os.open(m / "r" / name, os.O_RDONLY)
        try:
            seen[f"{name} before"] = os.pread(fd, 4, 0)
            write(m / "r" / name)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            seen[f"{name} after"] = (size, os.pread(fd, 4, 0), os.pread(fd, 8, max(size - 8, 0)))
        finally:
            os.close(fd)

    def overwrite_and_append(path: Path) -> None:
        with open(path, "r+b") as f:
            f.write(b"NEW!")
            f.seek(0, os.SEEK_END)
            f.write(b"tail")
            os.fsync(f.fileno())

    reopened("small", overwrite_and_append)
    reopened("big", overwrite_and_append)  # copied up in a worker thread
    reopened("linked", lambda p: overwrite_and_append(p.with_name("linked2")))
    reopened("cut", lambda p: p.write_bytes(b"shrt"))  # O_TRUNC
    reopened("meta", lambda p: os.chmod(p, 0o600))  # a copy-up that writes no data
    return seen


@pytest.mark.parametrize("fast", [True, False], ids=["c", "python"])
def test_reads_through_fds_opened_before_a_copy_up_as_kernel_overlayfs(
    tmp_path: Path, fast: bool
) -> None:
    """The C fast path opens pure lower files itself, Python the rest (a lower hard link
    here, or everything with the fast path off): both re-point their fds at the copy."""
    require_fuse()
    low = tmp_path / "low"
    (low / "r").mkdir(parents=True)
    (low / "r" / "small").write_bytes(b"old." * 4096)
    (low / "r" / "big").write_bytes(b"OLD." * (1 << 19))
    (low / "r" / "linked").write_bytes(b"lnk." * 4096)
    os.link(low / "r" / "linked", low / "r" / "linked2")
    (low / "r" / "cut").write_bytes(b"long" * 4096)
    (low / "r" / "meta").write_bytes(b"meta" * 4096)
    with (
        kernel_overlay_mount([low], tmp_path) as kmnt,
        fastpath_mount([low], tmp_path, "ours", fast) as (ours, stats),
    ):
        want = _read_through_old_fds(kmnt)
        assert _read_through_old_fds(ours) == want
    assert want["small after"] == (4 * 4096 + 4, b"NEW!", b"old.tail")
    assert want["linked after"] == (4 * 4096 + 4, b"NEW!", b"lnk.tail")
    if fast:
        assert fastpath_counters(stats)["opens"] >= 4  # all but the hard link


def _deleted_but_open(m: Path) -> dict[str, object]:
    """Files used through fds after their last name went (unlinked, or renamed over):
    the tmpfile pattern, and what the writeback cache sends for such inodes."""
    seen: dict[str, object] = {}
    for name in ("new", "lower", "over"):
        path = m / "r" / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"first")
            if name == "over":
                (m / "r" / "fifo-src").rename(path)  # another type now holds the name
            else:
                os.unlink(path)
            os.write(fd, b" second")
            os.fchmod(fd, 0o600)
            os.setxattr(fd, "user.note", b"kept")
            os.ftruncate(fd, 9)
            st = os.fstat(fd)
            seen[name] = (
                stat.filemode(st.st_mode),
                st.st_nlink,
                st.st_size,
                os.getxattr(fd, "user.note"),
                os.pread(fd, 64, 0),
            )
        finally:
            os.close(fd)  # must not fail (EIO when the kernel saw a type change)
    seen["tree"] = sorted(os.listdir(m / "r"))
    seen["over is"] = stat.filemode(os.lstat(m / "r" / "over").st_mode)
    return seen


def test_deleted_files_still_open_as_kernel_overlayfs(tmp_path: Path) -> None:
    require_fuse()
    low = tmp_path / "low"
    (low / "r").mkdir(parents=True)
    (low / "r" / "lower").write_bytes(b"from the lower layer")
    (low / "r" / "over").write_bytes(b"replaced while open")
    os.mkfifo(low / "r" / "fifo-src")
    with (
        kernel_overlay_mount([low], tmp_path) as kmnt,
        overlay_mount([low], tmp_path, "ours") as (ours, _),
    ):
        want = _deleted_but_open(kmnt)
        assert _deleted_but_open(ours) == want
    assert want["new"] == ("-rw-------", 0, 9, b"kept", b"first sec")
    assert want["over"] == ("-rw-------", 0, 9, b"kept", b"first sec"), want
