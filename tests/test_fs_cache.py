"""What the kernel caches for imgfs-overlay must follow every change, as kernel overlayfs shows.

The daemon leaves opendir to the kernel, which then caches directory listings; it asks the
kernel to cache symlink targets and POSIX ACLs, and then applies the umask itself (except
under a default ACL). Each test does the same things on kernel overlayfs and on
imgfs-overlay (with and without the readdir trampoline of fs/sessionhook.py) and compares
what they show.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounts import IMGFS_OVERLAY, unmount

from unionfs.fs.operations import SELINUX_ENABLED

from conftest import require, require_root

MANY = 400
"""Entries in the big directories: their listings take several readdir calls."""


def _layers(tmp: Path) -> list[Path]:
    low0, low1 = tmp / "l0", tmp / "l1"
    for d in ("big", "merged", "keep", "sub/deep", "acl"):
        (low1 / d).mkdir(parents=True)
    for i in range(MANY):
        (low1 / "big" / f"lower-file-with-a-long-name-{i:04}").write_text(str(i))
        (low1 / "merged" / f"m{i:04}-{'x' * 40}").write_text(str(i))
    for name in ("a", "b", "c"):
        (low1 / "keep" / name).write_text(name)
        (low1 / "sub" / "deep" / name).write_text(name)
    os.symlink("a", low1 / "keep" / "link")
    (low0 / "merged").mkdir(parents=True)
    for i in range(MANY // 2):
        (low0 / "merged" / f"n{i:04}-{'y' * 40}").write_text(str(i))
    return [low0, low1]


@contextmanager
def _mounted(kind: str, lowers: list[Path], tmp: Path, env: dict[str, str]) -> Iterator[Path]:
    upper, work, mnt = tmp / f"{kind}-u", tmp / f"{kind}-w", tmp / f"{kind}-m"
    for d in (upper, work, mnt):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if kind == "kernel":
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    else:
        run_env = {**os.environ, **env}
        subprocess.run([IMGFS_OVERLAY, "-o", opts, str(mnt)], check=True, timeout=60, env=run_env)
    try:
        yield mnt
    finally:
        if kind == "kernel":
            subprocess.run(["umount", str(mnt)], check=True)
        else:
            unmount(mnt)


@pytest.fixture(params=["trampoline", "opendir"])
def mounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(kernel overlayfs mount, imgfs-overlay mount) of the same layers, fresh uppers."""
    require_root()
    require(shutil.which("fusermount3") is not None, "needs fusermount3")
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    lowers = _layers(tmp_path)
    env = {"IMGFS_DIRHOOK": "1" if request.param == "trampoline" else "0"}
    with (
        _mounted("kernel", lowers, tmp_path, {}) as kern,
        _mounted("imgfs", lowers, tmp_path, env) as ours,
    ):
        yield kern, ours


def _tree(root: Path) -> list[tuple[str, str, str]]:
    """(path, type, link target or size) of everything under root, sorted (the order of a
    listing is each filesystem's own)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = stat.filemode(st.st_mode)
            what = os.readlink(p) if stat.S_ISLNK(st.st_mode) else str(st.st_size)
            if stat.S_ISDIR(st.st_mode):
                what = ""
            out.append((os.path.relpath(p, root), kind, what))
    return sorted(out)


def _listing(root: Path, rel: str) -> list[str]:
    return sorted(os.listdir(root / rel))


def _both(mounts: tuple[Path, Path], fn: Callable[[Path], object]) -> None:
    for m in mounts:
        fn(m)


CHANGES: list[tuple[str, Callable[[Path], object]]] = [
    ("create", lambda m: (m / "keep" / "new").write_text("new")),
    ("unlink lower", lambda m: os.unlink(m / "keep" / "b")),
    ("unlink new", lambda m: os.unlink(m / "keep" / "new")),
    ("mkdir", lambda m: os.mkdir(m / "keep" / "dir")),
    ("rename in dir", lambda m: os.rename(m / "keep" / "a", m / "keep" / "a2")),
    ("rename across", lambda m: os.rename(m / "keep" / "c", m / "sub" / "c")),
    ("rename dir over", lambda m: os.rename(m / "keep" / "dir", m / "sub" / "newdir")),
    ("rename over", lambda m: os.rename(m / "sub" / "c", m / "sub" / "deep" / "a")),
    ("symlink", lambda m: os.symlink("target", m / "sub" / "sl")),
    ("hard link", lambda m: os.link(m / "keep" / "a2", m / "sub" / "hl")),
    ("mknod", lambda m: os.mkfifo(m / "sub" / "fifo")),
    ("rmdir", lambda m: os.rmdir(m / "sub" / "newdir")),
    ("replace symlink", lambda m: (os.symlink("b", m / "keep" / "l2"),
                                   os.rename(m / "keep" / "l2", m / "keep" / "link"))),
    ("unlink in big", lambda m: os.unlink(m / "big" / "lower-file-with-a-long-name-0200")),
    ("create in merged", lambda m: (m / "merged" / "zz").write_text("z")),
]  # fmt: skip


def test_listings_follow_every_change(mounts: tuple[Path, Path]) -> None:
    kern, ours = mounts
    for m in mounts:  # fill the kernel's caches: listings, entries, link targets
        _tree(m)
        _tree(m)
    assert _tree(ours) == _tree(kern)
    for what, change in CHANGES:
        _both(mounts, change)
        for rel in ("keep", "sub", "sub/deep", "big", "merged", ""):
            assert _listing(ours, rel) == _listing(kern, rel), f"after {what}: {rel}"
        assert _tree(ours) == _tree(kern), f"after {what}"


def test_remove_big_dirs_while_listing_them(mounts: tuple[Path, Path]) -> None:
    """`rm -rf` unlinks while it reads: a listing must stay the same between readdir calls
    (the lower-only dir turns into a merged one at the first whiteout)."""
    for m in mounts:
        os.listdir(m / "big")  # cached listing, then changed under it
        for rel in ("big", "merged", "sub"):
            subprocess.run(["rm", "-rf", str(m / rel)], check=True)
            assert not (m / rel).exists()
        (m / "big").mkdir()
        assert os.listdir(m / "big") == []
    kern, ours = mounts
    assert _tree(ours) == _tree(kern)


def test_partly_read_listings_do_not_block_later_ones(mounts: tuple[Path, Path]) -> None:
    """A directory read only in part (its listing kept for the next offset) shows later
    changes to the next reader from the start."""
    kern, ours = mounts
    for m in mounts:
        with os.scandir(m / "merged") as it:
            next(it)
        (m / "merged" / "late").write_text("x")
        os.unlink(m / "merged" / f"n0001-{'y' * 40}")
    assert _listing(ours, "merged") == _listing(kern, "merged")


def test_fsync_of_a_directory(mounts: tuple[Path, Path]) -> None:
    for m in mounts:
        for rel in ("keep", ""):
            fd = os.open(m / rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _modes(root: Path) -> list[tuple[str, str, str]]:
    out = []
    for rel, _, _ in _tree(root):
        p = root / rel
        acl = subprocess.run(
            ["getfacl", "-p", "-c", str(p)], capture_output=True, text=True, check=True
        ).stdout
        out.append((rel, stat.filemode(os.lstat(p).st_mode), " ".join(acl.split())))
    return out


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_umask_and_acls_as_kernel_overlayfs(
    mounts: tuple[Path, Path], umask: int, request: pytest.FixtureRequest
) -> None:
    """Without the trampoline the kernel applies the umask even under a default ACL (the
    daemon cannot ask for FUSE_CAP_DONT_MASK): only dirs without one are compared then."""
    require(shutil.which("setfacl") is not None, "needs setfacl (apt install acl)")
    kern, ours = mounts
    for m in mounts:
        for d in ("keep", "acl"):  # a lower dir with a default ACL, and one without
            os.makedirs(m / d, exist_ok=True)
        (m / "up").mkdir()  # a new one with a default ACL
        for d in ("acl", "up"):
            subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::r-x,o::---", str(m / d)], check=True)
        old = os.umask(umask)
        try:
            for d in ("keep", "acl", "up"):
                (m / d / "file").write_text("x")
                os.close(os.open(m / d / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o751))
                os.mkdir(m / d / "dir")
                os.mkdir(m / d / "dir7", 0o777)
                os.mkfifo(m / d / "fifo")
                os.symlink("file", m / d / "sym")
        finally:
            os.umask(old)
        # through the mount: chmod and setfacl keep mode and ACL in step
        os.chmod(m / "keep" / "a", 0o640)
        subprocess.run(["setfacl", "-m", "u:nobody:rw", str(m / "keep" / "a")], check=True)
        os.chmod(m / "keep" / "file", 0o600)
        subprocess.run(["setfacl", "-m", "g::rwx", str(m / "keep" / "file")], check=True)
        os.chmod(m / "acl" / "file", 0o700)
    if "opendir" in request.node.callspec.id:
        keep = {"acl", "up"}
        mine = [e for e in _modes(ours) if e[0].split("/")[0] not in keep]
        assert mine == [e for e in _modes(kern) if e[0].split("/")[0] not in keep]
    else:
        assert _modes(ours) == _modes(kern)


def _xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}


def test_xattrs_after_copy_up_as_kernel_overlayfs(tmp_path: Path) -> None:
    """The daemon answers getxattr of a file it copied up from the names it saw then; a
    write (which drops security.capability), setxattr, removexattr and chown change them."""
    require_root()
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    low = tmp_path / "low"
    low.mkdir()
    caps = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw
    for name in ("plain", "tagged", "capped", "both"):
        (low / name).write_text(name)
    os.setxattr(low / "tagged", "user.tag", b"1")
    os.setxattr(low / "capped", "security.capability", caps)
    os.setxattr(low / "both", "security.capability", caps)
    os.setxattr(low / "both", "user.tag", b"2")
    seen: list[dict[str, object]] = []
    with (
        _mounted("kernel", [low], tmp_path, {}) as kern,
        _mounted("imgfs", [low], tmp_path, {}) as ours,
    ):
        for m in (kern, ours):
            out: dict[str, object] = {}
            for name in ("plain", "tagged", "capped", "both"):
                p = m / name
                with open(p, "ab") as f:  # copy-up, then a write
                    f.write(b"x")
                out[f"{name} written"] = _xattrs(p)
                for probe in ("security.selinux", "security.capability", "user.tag"):
                    try:
                        out[f"{name} {probe}"] = os.getxattr(p, probe)
                    except OSError as e:
                        out[f"{name} {probe}"] = e.errno
            os.setxattr(m / "plain", "user.new", b"n")
            os.removexattr(m / "tagged", "user.tag")
            os.setxattr(m / "capped", "security.capability", caps)
            os.chown(m / "capped", 1, 1)  # drops the capability again
            for name in ("plain", "tagged", "capped"):
                out[f"{name} changed"] = _xattrs(m / name)
            seen.append(out)
    # the one intended difference: a label the entry lacks is "not supported" (see
    # UnionOperations._absent), which lets `ls -l` stop asking for every entry
    if not SELINUX_ENABLED:
        for key, value in seen[0].items():
            if key.endswith("security.selinux") and value == errno.ENODATA:
                assert seen[1][key] == errno.EOPNOTSUPP, key
                seen[1][key] = value
    assert seen[1] == seen[0]


def test_trampoline_finds_what_it_patches_in_this_pyfuse3() -> None:
    """A pyfuse3 upgrade that renames what fs/sessionhook.py patches must fail here, not
    leave every mount silently on the slower path."""
    import pyfuse3

    from unionfs.fs import sessionhook as hook

    assert pyfuse3.__file__ is not None
    wanted = {hook._SESSION, hook._OPS, hook._ANCHOR, hook._READDIRPLUS, hook._FSYNCDIR, hook._INIT}
    assert wanted == hook._REQUIRED
    wanted |= set(hook._FAST.values())  # the C fast path's (fs/fastpath.py)
    assert wanted == hook._WANTED
    assert set(hook._symbols(pyfuse3.__file__, hook._WANTED)) == wanted
    assert hook.install() is False  # no session: nothing is touched
