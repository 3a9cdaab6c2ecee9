"""Layer unpacking: metadata fidelity, overlayfs whiteout format, compression, hostile tars."""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unionfs.errors import BadInput
from unionfs.layers.compression import Compression, detect, open_decompressed
from unionfs.layers.unpack import UnpackStats, unpack_tar

import tarfactory as tf
from conftest import require, require_root


@pytest.fixture(autouse=True)
def _needs_root(request: pytest.FixtureRequest) -> None:
    """Tests marked `root` skip as non-root, but fail in CI where they must run."""
    if request.node.get_closest_marker("root"):
        require_root()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def unpack_into(dest: Path, data: bytes | io.RawIOBase | io.BufferedIOBase) -> UnpackStats:
    """Unpack into `dest`, checking that every fd opened by the unpacker is closed."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    before = _open_fds()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return unpack_tar(stream, fd)  # type: ignore[arg-type]
    finally:
        os.close(fd)
        assert _open_fds() <= before, "unpack_tar leaked file descriptors"


def _snapshot(base: Path, skip: Path) -> dict[str, tuple[int, ...]]:
    """Metadata of everything under `base` except `skip` and its contents."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path == skip:
                continue
            s = os.lstat(path)
            result[str(path)] = (s.st_mode, s.st_ino, s.st_nlink, s.st_size, s.st_mtime_ns)
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
    return result


@dataclass
class Sandbox:
    """A layer dir next to canaries that a hostile tar might try to reach."""

    base: Path
    dest: Path
    canary_dir: Path
    canary_file: Path

    def unpack(self, data: bytes) -> UnpackStats:
        return unpack_into(self.dest, data)

    def snapshot(self) -> dict[str, tuple[int, ...]]:
        return _snapshot(self.base, self.dest)


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    canary_dir = tmp_path / "canary_dir"
    canary_dir.mkdir()
    canary_file = tmp_path / "canary_file"
    canary_file.write_bytes(b"canary")
    dest = tmp_path / "dest"
    dest.mkdir()
    return Sandbox(tmp_path, dest, canary_dir, canary_file)


def assert_rejected(box: Sandbox, data: bytes, entry: str, reason: str = "") -> BadInput:
    """The tar is refused with an error naming `entry`, and nothing outside dest changed."""
    before = box.snapshot()
    passwd = os.lstat("/etc/passwd")
    with pytest.raises(BadInput) as info:
        box.unpack(data)
    message = str(info.value)
    assert repr(entry) in message, message
    assert reason in message, message
    assert box.snapshot() == before
    assert os.listdir(box.canary_dir) == []
    assert box.canary_file.read_bytes() == b"canary"
    after = os.lstat("/etc/passwd")
    assert (after.st_nlink, after.st_mtime_ns) == (passwd.st_nlink, passwd.st_mtime_ns)
    return info.value


# --- metadata --------------------------------------------------------------------


@pytest.mark.root
def test_regular_file_keeps_content_owner_setuid_and_ns_times(box: Sandbox) -> None:
    times = {"mtime": "1700000000.123456789", "atime": "1600000000.5"}
    box.unpack(tf.build([tf.reg("bin/su", b"#!su", mode=0o4755, uid=1234, gid=5678, pax=times)]))
    s = os.lstat(box.dest / "bin/su")
    assert stat.S_ISREG(s.st_mode)
    assert stat.S_IMODE(s.st_mode) == 0o4755
    assert (s.st_uid, s.st_gid) == (1234, 5678)
    assert s.st_mtime_ns == 1_700_000_000_123_456_789
    assert s.st_atime_ns == 1_600_000_000_500_000_000
    assert (box.dest / "bin/su").read_bytes() == b"#!su"


@pytest.mark.root
def test_setgid_file_owned_by_group(box: Sandbox) -> None:
    box.unpack(tf.build([tf.reg("usr/bin/wall", b"w", mode=0o2755, gid=5)]))
    s = os.lstat(box.dest / "usr/bin/wall")
    assert stat.S_IMODE(s.st_mode) == 0o2755
    assert s.st_gid == 5


@pytest.mark.root
def test_directory_modes_and_mtimes_survive_their_children(box: Sandbox) -> None:
    members = [
        tf.directory("tmp", mode=0o1777, mtime=1_000_000),
        tf.directory("sg", mode=0o2750, gid=7, mtime=2_000_000),
        tf.directory("ro", mode=0o555, mtime=3_000_000),
        tf.reg("tmp/a", b"a"),
        tf.directory("sg/sub", mode=0o700, uid=9, mtime=4_000_000),
        tf.reg("sg/sub/b", b"b"),
        tf.reg("ro/c", b"c"),
    ]
    box.unpack(tf.build(members))
    expected = {
        "tmp": (0o1777, 0, 0, 1_000_000),
        "sg": (0o2750, 0, 7, 2_000_000),
        "ro": (0o555, 0, 0, 3_000_000),
        "sg/sub": (0o700, 9, 0, 4_000_000),
    }
    for name, (mode, uid, gid, mtime) in expected.items():
        s = os.lstat(box.dest / name)
        assert stat.S_ISDIR(s.st_mode)
        assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (mode, uid, gid), name
        assert s.st_mtime_ns == mtime * 10**9, name
    assert (box.dest / "ro/c").read_bytes() == b"c"


@pytest.mark.root
def test_root_entry_sets_layer_root_metadata(box: Sandbox) -> None:
    box.unpack(tf.build([tf.directory("./", mode=0o750, uid=3, mtime=5_000), tf.reg("./f")]))
    s = os.lstat(box.dest)
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_mtime_ns) == (0o750, 3, 5_000 * 10**9)
    assert os.listdir(box.dest) == ["f"]


@pytest.mark.root
def test_layer_root_without_entry_is_0755_root(box: Sandbox) -> None:
    os.chmod(box.dest, 0o700)
    box.unpack(tf.build([tf.reg("f")]))
    s = os.lstat(box.dest)
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o755, 0, 0)


@pytest.mark.root
def test_implicit_parents_are_0755_root(box: Sandbox) -> None:
    old = os.umask(0o077)
    try:
        box.unpack(tf.build([tf.reg("a/b/c/file", b"x", uid=5, gid=6)]))
    finally:
        os.umask(old)
    for name in ("a", "a/b", "a/b/c"):
        s = os.lstat(box.dest / name)
        assert stat.S_ISDIR(s.st_mode)
        assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o755, 0, 0)
    s = os.lstat(box.dest / "a/b/c/file")
    assert (s.st_uid, s.st_gid) == (5, 6)


@pytest.mark.root
def test_symlink_owner_and_time(box: Sandbox) -> None:
    pax = {"mtime": "1500000000.000000042"}
    box.unpack(tf.build([tf.symlink("etc/localtime", "/usr/share/zoneinfo/UTC", uid=4, pax=pax)]))
    path = box.dest / "etc/localtime"
    s = os.lstat(path)
    assert stat.S_ISLNK(s.st_mode)
    assert os.readlink(path) == "/usr/share/zoneinfo/UTC"
    assert s.st_uid == 4
    assert s.st_mtime_ns == 1_500_000_000_000_000_042


def test_hardlink_shares_the_inode(box: Sandbox) -> None:
    box.unpack(
        tf.build([tf.reg("bin/gzip", b"gz", mode=0o755), tf.hardlink("bin/gunzip", "bin/gzip")])
    )
    a, b = os.lstat(box.dest / "bin/gzip"), os.lstat(box.dest / "bin/gunzip")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == 2


def test_hardlink_to_symlink_links_the_symlink_itself(box: Sandbox) -> None:
    data = tf.build([tf.symlink("s", str(box.canary_file)), tf.hardlink("h", "s")])
    box.unpack(data)
    s, h = os.lstat(box.dest / "s"), os.lstat(box.dest / "h")
    assert stat.S_ISLNK(h.st_mode)
    assert (h.st_ino, h.st_nlink) == (s.st_ino, 2)
    assert os.lstat(box.canary_file).st_nlink == 1
    assert box.canary_file.read_bytes() == b"canary"


def test_fifo(box: Sandbox) -> None:
    box.unpack(tf.build([tf.fifo("run/initctl", mode=0o600)]))
    s = os.lstat(box.dest / "run/initctl")
    assert stat.S_ISFIFO(s.st_mode)
    assert stat.S_IMODE(s.st_mode) == 0o600


@pytest.mark.root
def test_char_and_block_devices(box: Sandbox) -> None:
    box.unpack(
        tf.build(
            [
                tf.device("dev/null", 1, 3, uid=0, gid=0),
                tf.device("dev/loop0", 7, 0, block=True, gid=6),
            ]
        )
    )
    null = os.lstat(box.dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o660
    loop = os.lstat(box.dest / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode)
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev), loop.st_gid) == (7, 0, 6)


def test_unprivileged_unpack_marks_opaque_with_user_xattr(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root, ownership is not preserved and opaque dirs use the userxattr format."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    box.unpack(tf.build([tf.reg("f", uid=1234), tf.opaque("d")]))
    assert os.lstat(box.dest / "f").st_uid == os.getuid()
    assert os.getxattr(box.dest / "d", "user.overlay.opaque") == b"y"


def test_device_needs_root(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", refuse)
    with pytest.raises(BadInput, match=r"'dev/sda'.*needs root"):
        box.unpack(tf.build([tf.device("dev/sda", 8, 0, block=True)]))


@pytest.mark.root
def test_xattrs_on_files_dirs_symlinks_and_fifos(box: Sandbox) -> None:
    members = [
        tf.directory("d", xattrs={"user.dir": "dv", "trusted.t": "tv"}),
        tf.reg("d/f", b"f", mode=0o4755, uid=1, xattrs={"user.mime": "text/é", "trusted.x": "1"}),
        tf.symlink("d/l", "f", xattrs={"trusted.link": "lv"}),
        tf.fifo("d/p", xattrs={"trusted.fifo": "pv"}),
        tf.reg("d/lib", b"", pax={"LIBARCHIVE.xattr.user.a%3Db": "AAEC/w"}),
    ]
    box.unpack(tf.build(members))
    d = box.dest / "d"
    assert os.getxattr(d, "user.dir") == b"dv"
    assert os.getxattr(d, "trusted.t") == b"tv"
    assert os.getxattr(d / "f", "user.mime") == "text/é".encode()
    assert os.getxattr(d / "f", "trusted.x") == b"1"
    assert stat.S_IMODE(os.lstat(d / "f").st_mode) == 0o4755
    assert os.getxattr(d / "l", "trusted.link", follow_symlinks=False) == b"lv"
    assert os.getxattr(d / "p", "trusted.fifo", follow_symlinks=False) == b"pv"
    assert os.getxattr(d / "lib", "user.a=b") == b"\x00\x01\x02\xff"


def test_overlay_xattrs_in_the_tar_are_refused(box: Sandbox) -> None:
    data = tf.build([tf.directory("d", xattrs={"trusted.overlay.redirect": "/etc"})])
    assert_rejected(box, data, "d", "reserved for overlayfs")


def test_large_file_stats_and_progress(box: Sandbox) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    seen: list[str] = []
    data = tf.build([tf.directory("d"), tf.reg("d/big", payload), tf.reg("d/small", b"12")])
    fd = os.open(box.dest, os.O_RDONLY | os.O_DIRECTORY)
    stream = io.BytesIO(data)
    try:
        stats = unpack_tar(stream, fd, on_entry=lambda m: seen.append(m.name))
    finally:
        os.close(fd)
    assert stats == UnpackStats(entries=3, bytes=len(payload) + 2, whiteouts=0, opaque_dirs=0)
    assert seen == ["d", "d/big", "d/small"]
    assert (box.dest / "d/big").read_bytes() == payload
    assert stream.tell() == len(data), "the stream must be read to its end"


def test_valid_empty_tar(box: Sandbox) -> None:
    assert box.unpack(tf.build([])) == UnpackStats(0, 0, 0, 0)
    assert os.listdir(box.dest) == []


def test_non_utf8_names_round_trip(box: Sandbox) -> None:
    data = tf.build(
        [tf.reg("caf\udce9", b"latin-1"), tf.reg("naïve", b"utf-8")], fmt=tarfile.GNU_FORMAT
    )
    box.unpack(data)
    assert sorted(os.listdir(bytes(box.dest))) == sorted([b"caf\xe9", "naïve".encode()])


def test_more_directories_than_cached_fds(box: Sandbox) -> None:
    members = [tf.reg(f"d{i:03}/f", b"x") for i in range(600)]
    members += [tf.reg(f"d{i:03}/g", b"y") for i in range(0, 600, 7)]
    members.append(tf.reg("/".join(["deep"] * 300) + "/leaf", b"z"))
    box.unpack(tf.build(members))
    assert (box.dest / "d007/g").read_bytes() == b"y"
    assert (box.dest / Path(*["deep"] * 300) / "leaf").read_bytes() == b"z"


def test_gnu_sparse_file_keeps_content_and_holes(box: Sandbox, tmp_path: Path) -> None:
    require(shutil.which("tar") is not None, "needs GNU tar")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(8 * 1024 * 1024)
        f.write(b"middle")
        f.truncate(16 * 1024 * 1024)
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", archive, "-C", src, "sparse"], check=True
    )
    box.unpack(archive.read_bytes())
    out = box.dest / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert os.lstat(out).st_blocks * 512 <= 1024 * 1024  # holes kept, at 1 MiB granularity


# --- overlayfs format --------------------------------------------------------------


def _is_whiteout(path: Path) -> bool:
    s = os.lstat(path)
    return stat.S_ISCHR(s.st_mode) and s.st_rdev == os.makedev(0, 0)


def _opaque(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
    except OSError:
        return None


@pytest.mark.root
def test_whiteout_becomes_char_device_0_0(box: Sandbox) -> None:
    stats = box.unpack(tf.build([tf.directory("etc"), tf.whiteout("etc/motd"), tf.whiteout("top")]))
    assert _is_whiteout(box.dest / "etc/motd")
    assert _is_whiteout(box.dest / "top")
    assert not (box.dest / "etc/.wh.motd").exists()
    assert stats.whiteouts == 2


@pytest.mark.root
def test_opaque_marker_sets_xattr_creating_the_dir(box: Sandbox) -> None:
    stats = box.unpack(tf.build([tf.directory("var"), tf.opaque("var"), tf.opaque("new/dir")]))
    assert _opaque(box.dest / "var") == b"y"
    assert _opaque(box.dest / "new/dir") == b"y"
    assert _opaque(box.dest / "new") is None
    assert os.listdir(box.dest / "var") == []
    assert stats.opaque_dirs == 2


@pytest.mark.root
def test_whiteout_does_not_replace_same_layer_file(box: Sandbox) -> None:
    box.unpack(tf.build([tf.reg("a", b"mine"), tf.whiteout("a")]))
    assert (box.dest / "a").read_bytes() == b"mine"


@pytest.mark.root
def test_later_entry_replaces_whiteout(box: Sandbox) -> None:
    stats = box.unpack(tf.build([tf.whiteout("a"), tf.reg("a", b"new")]))
    assert (box.dest / "a").read_bytes() == b"new"
    assert stats.whiteouts == 0


@pytest.mark.root
@pytest.mark.parametrize("explicit", [True, False])
def test_directory_over_whiteout_is_opaque(box: Sandbox, explicit: bool) -> None:
    members = [tf.whiteout("d")]
    members += [tf.directory("d", mode=0o750)] if explicit else []
    members.append(tf.reg("d/f", b"f"))
    box.unpack(tf.build(members))
    assert stat.S_ISDIR(os.lstat(box.dest / "d").st_mode)
    assert _opaque(box.dest / "d") == b"y"
    assert os.listdir(box.dest / "d") == ["f"]


@pytest.mark.root
def test_whiteout_of_same_layer_directory_makes_it_opaque(box: Sandbox) -> None:
    box.unpack(tf.build([tf.directory("d"), tf.reg("d/f"), tf.whiteout("d")]))
    assert _opaque(box.dest / "d") == b"y"
    assert os.listdir(box.dest / "d") == ["f"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (".wh..wh.plnk", "reserved whiteout name"),
        ("a/.wh..wh.foo", "reserved whiteout name"),
        ("a/.wh.", "invalid name"),
        (".wh..", "invalid name"),
        ("a/.wh.x/y", "whiteout"),
    ],
)
def test_reserved_whiteout_names_are_rejected(box: Sandbox, name: str, reason: str) -> None:
    assert_rejected(box, tf.build([tf.reg(name)]), name, reason)


# --- replacing entries -------------------------------------------------------------


@pytest.mark.root
def test_directory_over_directory_merges(box: Sandbox) -> None:
    box.unpack(
        tf.build(
            [
                tf.directory("d", mode=0o700),
                tf.reg("d/a"),
                tf.directory("d", mode=0o751, uid=8),
                tf.reg("d/b"),
            ]
        )
    )
    assert sorted(os.listdir(box.dest / "d")) == ["a", "b"]
    s = os.lstat(box.dest / "d")
    assert (stat.S_IMODE(s.st_mode), s.st_uid) == (0o751, 8)


def test_file_replaces_directory_recursively(box: Sandbox) -> None:
    members = [
        tf.reg("d/sub/x"),
        tf.symlink("d/sub/out", str(box.canary_dir)),
        tf.reg("d", b"file"),
    ]
    box.unpack(tf.build(members))
    assert (box.dest / "d").read_bytes() == b"file"
    assert box.canary_dir.is_dir()


def test_directory_replaces_file(box: Sandbox) -> None:
    box.unpack(tf.build([tf.reg("d", b"file"), tf.directory("d"), tf.reg("d/x", b"x")]))
    assert (box.dest / "d/x").read_bytes() == b"x"


def test_file_replaces_symlink_without_following_it(box: Sandbox) -> None:
    before = box.snapshot()
    box.unpack(tf.build([tf.symlink("f", str(box.canary_file)), tf.reg("f", b"pwned")]))
    assert not os.path.islink(box.dest / "f")
    assert (box.dest / "f").read_bytes() == b"pwned"
    assert box.canary_file.read_bytes() == b"canary"
    assert box.snapshot() == before


def test_directory_replaces_symlink_without_following_it(box: Sandbox) -> None:
    box.unpack(tf.build([tf.symlink("d", str(box.canary_dir)), tf.directory("d"), tf.reg("d/x")]))
    assert stat.S_ISDIR(os.lstat(box.dest / "d").st_mode)
    assert os.listdir(box.canary_dir) == []


def test_symlink_replaces_file(box: Sandbox) -> None:
    box.unpack(tf.build([tf.reg("l", b"x"), tf.symlink("l", "target")]))
    assert os.readlink(box.dest / "l") == "target"


def test_hardlink_cannot_replace_the_directory_holding_its_target(box: Sandbox) -> None:
    data = tf.build([tf.reg("d/f"), tf.hardlink("d", "d/f")])
    assert_rejected(box, data, "d", "inside the entry it replaces")


# --- compression -------------------------------------------------------------------

SAMPLE = [
    tf.directory("etc"),
    tf.reg("etc/hostname", b"box\n"),
    tf.reg("bin/sh", os.urandom(70_000), mode=0o755),
]


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


COMPRESSORS = {
    Compression.NONE: lambda data: data,
    Compression.GZIP: gzip.compress,
    Compression.ZSTD: _zstd,
    Compression.XZ: lzma.compress,
    Compression.BZIP2: bz2.compress,
}


def _unpack_compressed(dest: Path, blob: bytes) -> Compression:
    kind, stream = open_decompressed(io.BytesIO(blob))
    with stream:
        unpack_into(dest, stream)
    return kind


@pytest.mark.parametrize("kind", list(Compression))
def test_compressed_layers_unpack(box: Sandbox, kind: Compression) -> None:
    blob = COMPRESSORS[kind](tf.build(SAMPLE))
    assert detect(blob[:6]) is kind
    assert _unpack_compressed(box.dest, blob) is kind
    assert (box.dest / "etc/hostname").read_bytes() == b"box\n"
    assert (box.dest / "bin/sh").read_bytes() == SAMPLE[2][1]


def test_multi_member_gzip_and_multi_frame_zstd(box: Sandbox, tmp_path: Path) -> None:
    data = tf.build(SAMPLE)
    half = len(data) // 2
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    zstd_blob = skippable + _zstd(data[:half]) + zstandard.ZstdCompressor().compress(data[half:])
    assert _unpack_compressed(box.dest, zstd_blob) is Compression.ZSTD
    other = tmp_path / "other"
    other.mkdir()
    gzip_blob = gzip.compress(data[:half]) + gzip.compress(data[half:])
    assert _unpack_compressed(other, gzip_blob) is Compression.GZIP
    assert (other / "bin/sh").read_bytes() == (box.dest / "bin/sh").read_bytes() == SAMPLE[2][1]


@pytest.mark.parametrize("kind", [Compression.NONE, Compression.ZSTD, Compression.GZIP])
def test_open_decompressed_reads_a_pipe(box: Sandbox, kind: Compression) -> None:
    blob = COMPRESSORS[kind](tf.build(SAMPLE))
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as out:
            for i in range(0, len(blob), 3):  # dribble: the first read sees < 6 bytes
                out.write(blob[i : i + 3])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as raw:
            got, stream = open_decompressed(raw)  # type: ignore[arg-type]
            unpack_into(box.dest, stream)  # type: ignore[arg-type]
    finally:
        thread.join()
    assert got is kind
    assert (box.dest / "bin/sh").read_bytes() == SAMPLE[2][1]


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        (Compression.GZIP, b"\x1f\x8b\x08\x00"),
        (Compression.ZSTD, b"\x28\xb5\x2f\xfd"),
        (Compression.ZSTD, b"\x5a\x2a\x4d\x18"),
        (Compression.XZ, b"\xfd7zXZ\x00"),
        (Compression.BZIP2, b"BZh9"),
        (Compression.NONE, b"BZh"),
        (Compression.NONE, b"./etc"),
        (Compression.NONE, b""),
    ],
)
def test_detect(kind: Compression, head: bytes) -> None:
    assert detect(head) is kind


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
def test_corrupt_compressed_data(box: Sandbox, kind: Compression) -> None:
    blob = bytearray(COMPRESSORS[kind](tf.build(SAMPLE)))
    head = {Compression.GZIP: 10, Compression.ZSTD: 6, Compression.XZ: 12, Compression.BZIP2: 4}[
        kind
    ]
    blob[head:] = b"\x55" * (len(blob) - head)  # magic and header intact, garbage after
    with pytest.raises(BadInput, match=rf"corrupt {kind.value} data"):
        _unpack_compressed(box.dest, bytes(blob))


@pytest.mark.parametrize("kind", [k for k in Compression if k is not Compression.NONE])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_compressed_data(box: Sandbox, kind: Compression, keep: float) -> None:
    blob = COMPRESSORS[kind](tf.build(SAMPLE))
    with pytest.raises(BadInput, match=rf"corrupt {kind.value} data: truncated|truncated tar"):
        _unpack_compressed(box.dest, blob[: int(len(blob) * keep)])


def test_zstd_trailing_garbage(box: Sandbox) -> None:
    with pytest.raises(BadInput, match="corrupt zstd data"):
        _unpack_compressed(box.dest, _zstd(tf.build(SAMPLE)) + b"trailing garbage")


class _FailingReader(io.RawIOBase):
    """A disk that fails after some bytes: an I/O error, not corrupt data."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._data:
            raise OSError(errno.EIO, "Input/output error")
        n = min(len(buffer), len(self._data), 1000)
        buffer[:n], self._data = self._data[:n], self._data[n:]
        return n


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD, Compression.BZIP2])
def test_input_io_errors_are_not_reported_as_corrupt_data(box: Sandbox, kind: Compression) -> None:
    blob = COMPRESSORS[kind](tf.build(SAMPLE))
    got, stream = open_decompressed(_FailingReader(blob[: len(blob) // 2]))  # type: ignore[arg-type]
    assert got is kind
    with pytest.raises(OSError) as info:
        unpack_into(box.dest, stream)  # type: ignore[arg-type]
    assert info.value.errno == errno.EIO


# --- hostile tars ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/evil", "absolute"),
        ("../escape", "'..'"),
        ("a/../../x", "'..'"),
        ("./../x", "'..'"),
        ("a/..", "'..'"),
    ],
)
def test_escaping_names_are_rejected(box: Sandbox, name: str, reason: str) -> None:
    assert_rejected(box, tf.build([tf.reg("ok", b"1"), tf.reg(name, b"pwned")]), name, reason)


def test_escaping_directory_and_symlink_names_are_rejected(box: Sandbox) -> None:
    assert_rejected(box, tf.build([tf.directory("../d")]), "../d", "'..'")
    assert_rejected(box, tf.build([tf.symlink("/abs", "x")]), "/abs", "absolute")


def test_nul_byte_in_name_is_rejected(box: Sandbox) -> None:
    data = tf.build([tf.reg("safe", b"x", pax={"path": "a\x00/../../x"})])
    assert_rejected(box, data, "a\x00/../../x", "NUL")


@pytest.mark.parametrize(
    "member",
    [
        tf.reg("link/file", b"pwned"),
        tf.directory("link/dir"),
        tf.symlink("link/sym", "/"),
        tf.fifo("link/fifo"),
        tf.hardlink("link/hard", "ok"),
        tf.reg("link/deeper/file"),
    ],
    ids=lambda m: m[0].name,
)
def test_write_through_symlink_to_outside_is_rejected(box: Sandbox, member: tf.Member) -> None:
    data = tf.build([tf.reg("ok"), tf.symlink("link", str(box.canary_dir)), member])
    assert_rejected(box, data, member[0].name, "parent 'link' is a symlink")


def test_replaced_directory_is_not_reached_through_a_stale_fd(box: Sandbox) -> None:
    data = tf.build([tf.reg("d/a"), tf.symlink("d", str(box.canary_dir)), tf.reg("d/b")])
    assert_rejected(box, data, "d/b", "symlink")


def test_write_through_relative_symlink_is_rejected(box: Sandbox) -> None:
    data = tf.build([tf.symlink("link", "../canary_dir"), tf.directory("link/sub")])
    assert_rejected(box, data, "link/sub", "symlink")


def test_write_through_symlink_inside_the_layer_is_rejected(box: Sandbox) -> None:
    data = tf.build([tf.directory("d"), tf.symlink("link", "d"), tf.reg("link/file", b"x")])
    assert_rejected(box, data, "link/file", "symlink")
    assert os.listdir(box.dest / "d") == []


@pytest.mark.parametrize("marker", [tf.opaque("link"), tf.whiteout("link/x")])
def test_whiteouts_through_symlinks_are_rejected(box: Sandbox, marker: tf.Member) -> None:
    data = tf.build([tf.symlink("link", str(box.canary_dir)), marker])
    assert_rejected(box, data, marker[0].name, "symlink")
    assert os.listxattr(box.canary_dir) == []


def test_write_below_a_file_is_rejected(box: Sandbox) -> None:
    assert_rejected(box, tf.build([tf.reg("f"), tf.reg("f/x")]), "f/x", "not a directory")


@pytest.mark.root  # the whiteout needs mknod
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("../canary_file", "'..'"),
        ("a/../../canary_file", "'..'"),
        ("missing", "not earlier in this layer"),
        ("dir", "directory"),
        (".", "layer root"),
        ("link/passwd", "symlink"),
        ("gone", "whiteout"),
    ],
)
def test_bad_hardlinks_are_rejected(box: Sandbox, target: str, reason: str) -> None:
    members = [tf.directory("dir"), tf.symlink("link", "/etc"), tf.whiteout("gone")]
    data = tf.build([*members, tf.hardlink("evil", target)])
    assert_rejected(box, data, "evil", reason)


def test_hardlink_through_symlinked_dir_inside_layer_is_rejected(box: Sandbox) -> None:
    data = tf.build([tf.reg("d/f"), tf.symlink("l", "d"), tf.hardlink("h", "l/f")])
    assert_rejected(box, data, "h", "symlink")


def test_unknown_entry_type_is_rejected(box: Sandbox) -> None:
    info, _ = tf.reg("weird")
    info.type = b"Z"
    assert_rejected(box, tf.build([(info, None)]), "weird", "unsupported entry type")


def _tar_with_payload() -> bytes:
    return tf.build(
        [tf.reg("first", b"1" * 3000), tf.reg("second", b"2" * 5000), tf.reg("third", b"3")]
    )


def test_truncated_in_file_data(box: Sandbox) -> None:
    data = _tar_with_payload()
    offset = tf.header_offsets(data)[1]
    with pytest.raises(BadInput, match=r"truncated tar archive.*'second'"):
        box.unpack(data[: offset + 512 + 2000])


def test_truncated_in_data_the_unpacker_skips(box: Sandbox) -> None:
    info, _ = tf.whiteout("w")  # a whiteout's content is never read, only skipped
    data = tf.build([(info, None), tf.reg("a", b"a" * 4000)])
    offset = tf.header_offsets(data)[1]
    with pytest.raises(BadInput, match="truncated tar archive"):
        box.unpack(data[: offset + 512 + 1024])


def test_truncated_in_header(box: Sandbox) -> None:
    data = _tar_with_payload()
    offset = tf.header_offsets(data)[2]
    with pytest.raises(BadInput, match="truncated tar archive: it ends inside the header"):
        box.unpack(data[: offset + 100])


def test_truncated_without_end_of_archive_marker(box: Sandbox) -> None:
    data = _tar_with_payload()
    offset = tf.header_offsets(data)[2]
    with pytest.raises(BadInput, match="without an end-of-archive marker"):
        box.unpack(data[:offset])


def test_corrupt_header_checksum(box: Sandbox) -> None:
    data = bytearray(_tar_with_payload())
    offset = tf.header_offsets(bytes(data))[1]
    data[offset + 10] ^= 0x01  # inside the name field; the checksum no longer matches
    with pytest.raises(BadInput, match="not a valid tar archive"):
        box.unpack(bytes(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the input is empty"),
        (os.urandom(4096), "not a valid tar archive"),
        (b"hello, this is not a tar\n" * 40, "not a valid tar archive"),
        (b"\x00" * 100, "truncated tar archive"),
    ],
)
def test_not_a_tar(box: Sandbox, data: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        box.unpack(data)


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_compressed_garbage(box: Sandbox, kind: Compression) -> None:
    magic = {Compression.GZIP: b"\x1f\x8b", Compression.ZSTD: b"\x28\xb5\x2f\xfd"}[kind]
    with pytest.raises(BadInput, match=f"corrupt {kind.value} data"):
        _unpack_compressed(box.dest, magic + os.urandom(2000))


_FUZZ_BASE = tf.build(
    [
        tf.directory("d"),
        tf.reg("d/f", b"data" * 100, xattrs={"user.k": "v"}),
        tf.symlink("d/l", "/etc"),
        tf.hardlink("d/h", "d/f"),
        tf.whiteout("d/w"),
        tf.opaque("d"),
        tf.fifo("p"),
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_FUZZ_BASE) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_tars_fail_cleanly(mutations: list[tuple[int, int]]) -> None:
    """Whatever the damage, the result is success or BadInput, never a write outside."""
    data = bytearray(_FUZZ_BASE)
    for offset, value in mutations:
        data[offset] = value
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "outside").mkdir()
        dest = base / "dest"
        dest.mkdir()
        before = _snapshot(base, dest)
        with contextlib.suppress(BadInput):
            unpack_into(dest, bytes(data))
        assert _snapshot(base, dest) == before


# --- the kernel as oracle ----------------------------------------------------------


@pytest.fixture
def overlay_mount(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    if os.path.ismount(mnt):
        subprocess.run(["umount", mnt], check=True)


@pytest.mark.root
def test_kernel_overlayfs_accepts_unpacked_layers(tmp_path: Path, overlay_mount: Path) -> None:
    lower = [
        tf.reg("keep", b"k"),
        tf.reg("gone", b"g"),
        tf.reg("opq/old", b"o"),
        tf.reg("sub/x", b"x"),
        tf.reg("sub/y", b"y"),
        tf.reg("redo/old", b"r"),
    ]
    upper = [
        tf.whiteout("gone"),
        tf.opaque("opq"),
        tf.reg("opq/new", b"n"),
        tf.whiteout("sub/x"),
        tf.reg("sub/z", b"z"),
        tf.whiteout("redo"),  # deleted and recreated in the same layer
        tf.reg("redo/new", b"r2"),
    ]
    dirs = []
    for name, members in (("l1", lower), ("l2", upper)):
        layer = tmp_path / name
        layer.mkdir()
        unpack_into(layer, tf.build(members))
        dirs.append(layer)
    options = f"lowerdir={dirs[1]}:{dirs[0]}"
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, overlay_mount],
        capture_output=True,
        text=True,
    )
    require(result.returncode == 0, f"overlayfs not available: {result.stderr.strip()}")
    m = overlay_mount
    assert sorted(os.listdir(m)) == ["keep", "opq", "redo", "sub"]
    assert (m / "keep").read_bytes() == b"k"
    assert os.listdir(m / "opq") == ["new"]
    assert sorted(os.listdir(m / "sub")) == ["y", "z"]
    assert os.listdir(m / "redo") == ["new"]
