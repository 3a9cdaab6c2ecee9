"""The C fast path (native/fastpath.c, fs/fastpath.py) answers exactly as Python would.

Lookups and attributes of pure lower entries are answered in C, and Python adopts those
inodes when it needs them. Each test makes the C side hand out inodes first (a stat of
every path), then checks what the mount shows: against the same mount with the fast path
off, and against kernel overlayfs through changes to exactly those inodes (copy-up,
whiteouts, renames, new entries below them) and after the kernel forgot them.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from mounts import (
    fastpath_counters,
    fastpath_mount,
    kernel_overlay_mount,
    require_fuse,
    tree_of,
)

from conftest import require

FILES = 300
_CAPS = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)


def _layers(tmp: Path) -> list[Path]:
    """Two lower layers: a deep tree with every kind of entry below, and one above that
    adds, whites out and hides (opaque) some of it."""
    low0, low1 = tmp / "l0", tmp / "l1"
    rng = random.Random(7)
    dirs = ["usr/share/doc", "usr/lib/x", "etc/conf.d", "var/lib/dpkg/info", "opq/in"]
    for d in dirs:
        (low1 / d).mkdir(parents=True)
    for i in range(FILES):
        f = low1 / rng.choice(dirs) / f"file{i:03}"
        f.write_bytes(os.urandom(rng.randrange(0, 9000)))
        os.utime(f, ns=(rng.randrange(10**18), rng.randrange(10**18)))
        os.chmod(f, rng.choice([0o644, 0o600, 0o755, 0o4755]))
        os.chown(f, rng.randrange(3), rng.randrange(3))
    os.link(low1 / "usr/lib/x" / os.listdir(low1 / "usr/lib/x")[0], low1 / "etc/hardlink")
    os.symlink("../usr/share/doc", low1 / "etc/doclink")
    os.mkfifo(low1 / "var/fifo")
    os.mknod(low1 / "var/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(low1 / "etc/conf.d", "user.note", b"lower")
    (low1 / "usr/lib/x/capable").write_bytes(b"\x7fELF")
    # a file capability (VFS_CAP_REVISION_2, effective; CAP_NET_BIND_SERVICE)
    os.setxattr(low1 / "usr/lib/x/capable", "security.capability", _CAPS)
    os.chmod(low1 / "var/lib", 0o700)
    (low0 / "usr/share/doc").mkdir(parents=True)
    (low0 / "usr/share/doc/added").write_text("upper layer")
    gone = sorted(os.listdir(low1 / "usr/share/doc"))[0]
    os.mknod(low0 / "usr/share/doc" / gone, stat.S_IFCHR, os.makedev(0, 0))
    (low0 / "opq").mkdir()
    os.setxattr(low0 / "opq", "trusted.overlay.opaque", b"y")
    (low0 / "opq/only").write_text("opaque")
    for low in (low0, low1):  # list every dir once now, so later listings (each mount
        _paths(low)  # builds its own index) leave the atimes alone (relatime)
    return [low0, low1]


def _paths(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, n), root) for n in dirnames + filenames]
    return out


def _stat_paths(root: Path, paths: list[str]) -> dict[str, tuple[int, ...]]:
    """Every attribute the kernel got for each path. Only lstat, no listing: the kernel
    looks each name up (a listing would hand it the entries through readdirplus)."""
    out: dict[str, tuple[int, ...]] = {}
    for rel in paths:
        st = os.lstat(root / rel)
        out[rel] = (
            st.st_mode, st.st_ino, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
            st.st_size, st.st_blocks, st.st_blksize,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip
    return out


def _reads(root: Path, paths: list[str]) -> dict[str, object]:
    """Each path's content (files) and security.capability (the xattr every exec asks
    for), or the errno."""
    out: dict[str, object] = {}
    for rel in paths:
        path = root / rel
        try:
            caps: object = os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError as e:
            caps = e.errno
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[rel] = (caps, data)
    return out


def _forget_all() -> None:
    """Make the kernel forget the mounts' inodes (dentries and inodes are dropped)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def test_c_answers_as_python_does(tmp_path: Path) -> None:
    require_fuse()
    lowers = _layers(tmp_path)
    with (
        fastpath_mount(lowers, tmp_path, "c", fast=True) as (fast, stats),
        fastpath_mount(lowers, tmp_path, "py", fast=False) as (slow, no_stats),
    ):
        paths = _paths(slow)
        assert len(paths) > FILES // 2
        _forget_all()
        first = _stat_paths(slow, paths)
        assert _stat_paths(fast, paths) == first  # lookups in C, below the root's children
        _forget_all()  # forgets of inodes only the C side held; then C lookups again
        assert _stat_paths(fast, paths) == first
        # listings hand Python entries the C side holds (adopted); a walk also sends
        # getattrs of directories (their atime is stale after a readdir)
        assert _stat_paths(fast, _paths(fast)) == _stat_paths(slow, _paths(slow))
        assert _stat_paths(fast, paths) == first
        # opens, reads and security.capability of lower files (C) against Python's
        _forget_all()
        assert _reads(fast, paths) == _reads(slow, paths)
        assert _reads(fast, paths)["usr/lib/x/capable"][0] == _CAPS
    counts = fastpath_counters(stats)
    assert not no_stats.exists()  # IMGFS_FASTPATH=0: nothing installed (the daemons stop
    # at once, and the other one has written its file)
    assert counts["lookups"] > len(paths), counts
    assert counts["getattrs"] > 0, counts
    assert counts["forgets"] > 0, counts
    assert counts["listings"] > 0, counts
    assert counts["opens"] > FILES // 2, counts


def _rename_dir(m: Path) -> None:
    os.rename(m / "var/lib/dpkg", m / "var/dpkg-moved")


def _first(d: Path) -> Path:
    return d / min(n for n in os.listdir(d) if n.startswith("file"))


def _write(m: Path) -> None:
    with open(_first(m / "usr/lib/x"), "ab") as f:
        f.write(b"appended")


CHANGES: list[tuple[str, Callable[[Path], object]]] = [
    ("chmod a lower file", lambda m: os.chmod(_first(m / "etc/conf.d"), 0o640)),
    ("append to a lower file", _write),
    ("unlink a lower file", lambda m: os.unlink(_first(m / "usr/share/doc"))),
    ("create in a lower dir", lambda m: (m / "usr/lib/x/new").write_text("new")),
    ("mkdir in a lower dir", lambda m: os.mkdir(m / "var/lib/dpkg/info/newdir")),
    ("rename a lower dir", _rename_dir),
    ("remove a lower tree", lambda m: shutil.rmtree(m / "var/dpkg-moved/info")),
    ("hard link a lower hard link", lambda m: os.link(m / "etc/hardlink", m / "etc/hl2")),
    ("setxattr on a lower dir", lambda m: os.setxattr(m / "etc/conf.d", "user.note", b"changed")),
    ("chown a lower dir", lambda m: os.chown(m / "usr/share", 5, 6)),
    ("mkdir over a whiteout", lambda m: os.mkdir(m / "usr/share/doc/added-dir")),
]  # fmt: skip


def _view(root: Path) -> dict[str, tuple]:
    """tree_of without mtimes: the two mounts see each change at a different moment."""
    return {k: v if k.startswith("<") else v[:4] + v[5:] for k, v in tree_of(root).items()}


def _probe(root: Path, paths: list[str]) -> dict[str, object]:
    """What an lstat of each path gives (an errno, or type, mode, owner and file size),
    looked up name by name: no listing first that would tell the kernel the answers."""
    out: dict[str, object] = {}
    for rel in paths:
        try:
            st = os.lstat(root / rel)
        except OSError as e:
            out[rel] = e.errno
            continue
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, size)
    return out


def test_changes_to_inodes_the_c_side_handed_out_match_kernel(tmp_path: Path) -> None:
    """Every change goes to an inode the kernel got from the C side (stat of every path
    first), so Python must adopt it, and the C side must stop answering for what the
    change made impure. Kernel overlayfs, given the same calls, is the oracle."""
    require_fuse()
    lowers = _layers(tmp_path)
    with (
        kernel_overlay_mount(lowers, tmp_path) as kmnt,
        fastpath_mount(lowers, tmp_path, "c", fast=True) as (ours, stats),
    ):
        assert tree_of(ours) == tree_of(kmnt)  # mtimes too: nothing has changed yet
        for what, change in CHANGES:
            _forget_all()
            before = _paths(kmnt)
            _stat_paths(ours, before)  # the C side hands out what it can
            change(kmnt)
            change(ours)
            paths = sorted({*before, *_paths(kmnt)})
            assert _probe(ours, paths) == _probe(kmnt, paths), what
            _forget_all()  # now lookups of gone and moved names, from the C side or not
            assert _probe(ours, paths) == _probe(kmnt, paths), f"{what}, after forgetting"
            assert _view(ours) == _view(kmnt), what
    counts = fastpath_counters(stats)
    assert counts["lookups"] > FILES // 2 and counts["passed_to_python"] > 0, counts


def test_inode_map_keeps_every_inode_through_deletions() -> None:
    """The C map (open addressing with backward-shift deletion) against a dict."""
    from unionfs.fs.fastpath import lib

    require(lib is not None, "unionfs._fastpath is not built")
    rng = random.Random(3)
    model: set[int] = set()
    base = 1 << 40  # far from any inode a daemon in this process could hold
    for _ in range(20000):
        ino = base + rng.randrange(3000)
        if rng.random() < 0.6:
            lib.imgfs_fast_py_set(ino, 0, 0, 0)
            model.add(ino)
        else:
            lib.imgfs_fast_py_drop(ino)
            model.discard(ino)
    for i in range(3000):
        assert lib.imgfs_fast_known(base + i) == (0 if base + i in model else -1), i
    for ino in model:
        lib.imgfs_fast_py_drop(ino)
    assert all(lib.imgfs_fast_known(base + i) == -1 for i in range(3000))


def test_capability_probe_of_upper_files_follows_their_xattrs(tmp_path: Path) -> None:
    """The C side answers ENODATA for security.capability of an upper file whose xattrs
    Python knows; setting, removing or a chown must reach it at once."""
    require_fuse()
    lowers = _layers(tmp_path)

    def caps(path: Path) -> object:
        try:
            return os.getxattr(path, "security.capability", follow_symlinks=False)
        except OSError as e:
            return e.errno

    with fastpath_mount(lowers, tmp_path, "c", fast=True) as (mnt, _):
        new = mnt / "usr/lib/x/new"
        new.write_bytes(b"data")
        copied = _first(mnt / "usr/lib/x")
        with open(copied, "ab") as f:  # a copy-up: Python knows the copy's xattrs
            f.write(b"more")
        for path in (new, copied):
            assert caps(path) == errno.ENODATA
            os.setxattr(path, "security.capability", _CAPS)
            assert caps(path) == _CAPS
            os.removexattr(path, "security.capability")
            assert caps(path) == errno.ENODATA
            os.setxattr(path, "security.capability", _CAPS)
            os.chown(path, 1, 1)  # the kernel drops the capability with the owner
            assert caps(path) == errno.ENODATA
            with open(path, "ab") as f:
                f.write(b"x")
            assert caps(path) == errno.ENODATA
        assert caps(mnt / "usr/lib/x/capable") == _CAPS  # lower, never copied up
