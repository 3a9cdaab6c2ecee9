"""imgfs commit: a container's upper dir becomes an image that shows exactly what the
container showed; deterministic layers, shared parent blobs, snapshots while mounted."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mounts import IMGFS_OVERLAY, unmount, unpack_layer
from test_containers import (
    mountpoint,  # noqa: F401 - a fixture
    require_fuse,
)

from unionfs.changes import commit as commit_module
from unionfs.changes.commit import commit_container
from unionfs.changes.layertar import write_layer_tar
from unionfs.errors import ImgfsError
from unionfs.index import MergedIndex
from unionfs.store.images import ImageStore

from conftest import ImgfsRunner, assert_user_error, require, require_root, snapshot
from tarfactory import build, device, directory, fifo, hardlink, reg, symlink

MTIME = 1_600_000_000
NS_MTIME = {"mtime": "1600000000.123456789"}


def base_members() -> list:
    """A small rootfs with every kind of entry a commit must carry through."""
    return [
        directory("./", mode=0o755),
        directory("bin"),
        reg("bin/sh", b"#!shell\n", mode=0o755),
        directory("data", xattrs={"user.dir": "1"}),
        reg("data/a.txt", b"a\n"),
        reg("data/hl1", b"linked\n", pax=NS_MTIME),
        directory("data/sub", mode=0o750, uid=5, gid=6),
        reg("data/sub/deep.txt", b"deep\n", uid=5, gid=6),
        directory("data/sub2"),
        reg("data/sub2/inner.txt", b"inner\n"),
        directory("other"),
        hardlink("other/hl2", "data/hl1"),
        directory("other2"),
        reg("other2/gone.txt", b"gone\n"),
        directory("keep"),
        reg("keep/a.txt", b"keep a\n"),
        reg("keep/b.txt", b"keep b\n"),
        reg("keep/c.txt", b"keep c\n"),
        reg("keep/d.txt", b"keep d\n"),
        reg("keep/e.txt", b"keep e\n"),
        reg("keep/f.txt", b"keep f\n"),
        reg("keep/tool", b"\x7fELF tool", mode=0o755),
        reg("keep/xattr.txt", b"x\n", xattrs={"user.color": "blue"}),
        reg("keep/x2.txt", b"x2\n", xattrs={"user.gone": "soon", "user.stays": "yes"}),
        symlink("keep/link", "a.txt"),
        fifo("keep/fifo", mode=0o600),
        device("keep/null", 1, 3),
        directory("replace"),
        directory("replace/x"),
        reg("replace/x/y.txt", b"y\n"),
        reg("replace/z.txt", b"z\n"),
        directory("emptydir", mode=0o700),
        directory("root", mode=0o700),
        directory("tmp", mode=0o1777),
    ]


@pytest.fixture
def base_tar(tmp_path: Path) -> Path:
    path = tmp_path / "base.tar"
    path.write_bytes(build(base_members()))
    return path


def change_everything(m: Path) -> None:
    """Changes of every kind, made through a container's mount."""
    (m / "root/new.txt").write_bytes(b"new\n")
    os.utime(m / "root/new.txt", ns=(1, 1_600_000_000_987_654_321))
    os.makedirs(m / "newdir/nested")
    (m / "newdir/nested/f").write_bytes(bytes(range(256)) * 40)
    os.chmod(m / "newdir", 0o2775)
    with open(m / "keep/a.txt", "ab") as f:
        f.write(b"more\n")
    os.chmod(m / "keep/b.txt", 0o600)
    os.chown(m / "keep/c.txt", 1000, 1001)
    os.chmod(m / "keep/tool", 0o4755)  # setuid
    os.unlink(m / "keep/d.txt")
    os.rmdir(m / "emptydir")
    # A lower dir renamed (a redirect), then changed inside: a copied-up child, a deleted
    # one, a new one, and a lower subdir moved out again (a redirect inside a redirect).
    os.rename(m / "data", m / "moved")
    with open(m / "moved/sub/deep.txt", "ab") as f:
        f.write(b"deeper\n")
    os.unlink(m / "moved/a.txt")
    (m / "moved/added.txt").write_text("added\n")
    os.rename(m / "moved/sub2", m / "sub2-out")
    # A dir replaced by a new one (opaque), a file by a dir, a dir by a file.
    shutil.rmtree(m / "replace")
    os.mkdir(m / "replace")
    (m / "replace/only.txt").write_text("only\n")
    os.unlink(m / "keep/f.txt")
    os.mkdir(m / "keep/f.txt")
    shutil.rmtree(m / "other2")
    (m / "other2").write_text("now a file\n")
    # Hard links: to a copied-up file, to a lower file, between new files.
    os.link(m / "keep/a.txt", m / "keep/a-link")
    os.link(m / "keep/e.txt", m / "e-link")
    os.link(m / "newdir/nested/f", m / "newdir/f-link")
    os.symlink("../keep/a.txt", m / "newdir/sym")
    os.symlink("/nowhere/absolute", m / "abs-sym")
    os.mkfifo(m / "newdir/fifo", 0o640)
    os.mknod(m / "newdir/zero", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    os.setxattr(m / "keep/xattr.txt", "user.color", b"red")
    os.setxattr(m / "newdir/nested/f", "user.bin", b"\x00\xff\x80binary")
    os.removexattr(m / "keep/x2.txt", "user.gone")
    # A user's own trusted.overlay.* xattr: no layer can carry it (unpackers refuse it).
    os.setxattr(m / "newdir", "trusted.overlay.mine", b"dropped")


def tree(root: Path, *, mtimes: bool = True, xattrs: bool = True) -> dict[str, object]:
    """Everything a rootfs shows, path by path, and its hard-link groups."""
    entries: dict[str, tuple] = {}
    by_ino: dict[int, list[str]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        names = [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]
        for p in names:
            rel = os.path.relpath(p, root)
            if rel in entries:
                continue
            st = os.lstat(p)
            info: list[object] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)]
            info += [st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    info += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
                by_ino[st.st_ino].append(rel)
            elif stat.S_ISLNK(st.st_mode):
                info.append(os.readlink(p))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.append(st.st_rdev)
            if mtimes:
                info.append(st.st_mtime_ns)
            if xattrs:
                names_ = sorted(os.listxattr(p, follow_symlinks=False))
                info.append(
                    [
                        (n, os.getxattr(p, n, follow_symlinks=False))
                        for n in names_
                        if not n.startswith("trusted.overlay.")
                    ]
                )
            entries[rel] = tuple(info)
    links = sorted(sorted(g) for g in by_ino.values() if len(g) > 1)
    return {"entries": entries, "links": links}


def container_tree(imgfs: ImgfsRunner, name: str, mnt: Path) -> dict[str, object]:
    """What the container shows, from a fresh (read-only) mount of it.

    Not from the mount its changes were made through: with the writeback cache the kernel
    keeps the mtime of a file written through it and may never hand it to the daemon, so
    the upper file keeps the time the daemon wrote it (a few ms later), which is what any
    later mount shows. Commit records the upper dir, so it is compared with that.
    """
    with mounted(imgfs, name, mnt, "-o", "ro"):
        return tree(mnt)


def inspect(imgfs: ImgfsRunner, name: str) -> dict:
    [doc] = json.loads(imgfs("inspect", name).stdout)
    return doc


def blob_count(root: Path) -> int:
    return len(os.listdir(root / "oci/blobs/sha256"))


@contextmanager
def mounted(imgfs: ImgfsRunner, what: str, mnt: Path, *opts: str) -> Iterator[Path]:
    imgfs("mount", *opts, what, str(mnt))
    try:
        yield mnt
    finally:
        imgfs("umount", str(mnt))


# -- the round trip ----------------------------------------------------------------------


def test_round_trip_shows_exactly_what_the_container_showed(
    imgfs: ImgfsRunner,
    root: Path,
    base_tar: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    require_fuse()
    imgfs("import", "-c", 'CMD ["sh"]', str(base_tar), "base")
    base = inspect(imgfs, "base")
    imgfs("create", "--name", "box", "base")
    mnt = mountpoint("box")
    with mounted(imgfs, "box", mnt):
        change_everything(mnt)
        assert os.getxattr(mnt / "newdir", "trusted.overlay.mine") == b"dropped"
        assert os.stat(mnt / "moved/hl1").st_ino == os.stat(mnt / "other/hl2").st_ino
        blobs = blob_count(root)
        # Committed while mounted: the daemon pauses writes for the snapshot.
        live = imgfs("commit", "box", "base:live").stdout.strip()
        assert live.startswith("sha256:") and len(live) == 71
        assert blob_count(root) == blobs + 3  # the new layer, its config, its manifest
        live_view = tree(mnt, mtimes=False)
        (mnt / "root/after.txt").write_text("the container goes on\n")
        os.unlink(mnt / "root/after.txt")

    container_view = container_tree(imgfs, "box", mnt)
    with mounted(imgfs, "box", mnt, "-o", "ro"):  # the pause of a read-only mount works too
        out = imgfs(
            "commit", "-m", "all changes", "-a", "Jane <jane@example.com>",
            "-c", "ENV MODE=changed", "-c", "WORKDIR /root", "box", "base:changed",
        )  # fmt: skip
    image_id = out.stdout.strip()
    assert out.stderr == ""  # no progress when stderr is not a terminal

    changed = inspect(imgfs, "base:changed")
    assert changed["Id"] == image_id
    # The parent's layers are shared, not copied: same descriptors, same blobs.
    assert changed["Manifest"]["Layers"][:-1] == base["Manifest"]["Layers"]
    assert changed["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert len(changed["RootFS"]["Layers"]) == 2
    assert changed["Config"]["Cmd"] == ["sh"]  # the parent's config, plus the changes
    assert changed["Config"]["Env"] == ["MODE=changed"]
    assert changed["Config"]["WorkingDir"] == "/root"
    assert changed["Author"] == "Jane <jane@example.com>"
    last = changed["History"][-1]
    assert last["created_by"] == "imgfs commit" and last["comment"] == "all changes"
    assert last["author"] == "Jane <jane@example.com>" and last["created"] == changed["Created"]
    assert changed["History"][:-1] == base["History"]

    # Committing the same upper again (unmounted) gives the same layer, byte for byte.
    blobs = blob_count(root)
    imgfs("commit", "box", "base:again")
    again = inspect(imgfs, "base:again")
    assert again["RootFS"]["Layers"] == changed["RootFS"]["Layers"]
    assert again["Manifest"]["Layers"] == changed["Manifest"]["Layers"]
    assert blob_count(root) == blobs + 2  # only a config and a manifest are new

    image_mnt = mountpoint("image")
    with mounted(imgfs, "base:changed", image_mnt):
        image_view = tree(image_mnt)
        assert "trusted.overlay.mine" not in os.listxattr(image_mnt / "newdir")
        with pytest.raises(OSError):
            (image_mnt / "x").write_text("read-only")
    assert image_view == container_view
    with mounted(imgfs, "base:live", image_mnt):
        assert tree(image_mnt, mtimes=False) == live_view

    # The committed image is an image like any other: a container of it commits again.
    imgfs("create", "--name", "box2", "base:changed")
    with mounted(imgfs, "box2", mnt):
        (mnt / "moved/third.txt").write_text("third\n")
        os.rename(mnt / "moved", mnt / "moved-again")  # a dir of the new layer, renamed
    second_view = container_tree(imgfs, "box2", mnt)
    imgfs("commit", "box2", "base:third")
    third = inspect(imgfs, "base:third")
    assert third["Manifest"]["Layers"][:-1] == changed["Manifest"]["Layers"]
    with mounted(imgfs, "base:third", image_mnt):
        assert tree(image_mnt) == second_view


def test_scratch_container_commits_to_a_one_layer_image(
    imgfs: ImgfsRunner,
    root: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    require_fuse()
    imgfs("create", "--name", "empty", "scratch")
    mnt = mountpoint("empty")
    with mounted(imgfs, "empty", mnt):
        os.makedirs(mnt / "etc")
        (mnt / "etc/motd").write_text("from scratch\n")
        os.symlink("etc/motd", mnt / "motd")
    view = container_tree(imgfs, "empty", mnt)
    imgfs("commit", "-c", 'CMD ["/motd"]', "empty", "fromscratch")
    doc = inspect(imgfs, "fromscratch")
    assert len(doc["RootFS"]["Layers"]) == len(doc["Manifest"]["Layers"]) == 1
    assert [h["created_by"] for h in doc["History"]] == ["imgfs commit"]
    assert doc["Config"] == {"Cmd": ["/motd"]}
    assert doc["Os"] == "linux" and doc["Architecture"]
    with mounted(imgfs, "fromscratch", mnt):
        assert tree(mnt) == view


# -- a snapshot while a writer writes ---------------------------------------------------


LINE = 16  # divides the page size: no line ever spans two pages of the writeback cache


def line(i: int) -> bytes:
    return b"%015d\n" % i


def test_commit_while_writing_is_a_consistent_snapshot_and_loses_nothing(
    imgfs: ImgfsRunner,
    root: Path,
    base_tar: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    """A writer appends a line to A, fsyncs, appends it to B, fsyncs, in a loop. The commit
    must see whole lines only, and B at most one line behind A (one moment of the
    container); the writer must lose nothing across the pause."""
    require_fuse()
    imgfs("import", str(base_tar), "base")
    imgfs("create", "--name", "busy", "base")
    mnt = mountpoint("busy")
    written = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            fds = [os.open(mnt / "root" / n, os.O_WRONLY | os.O_CREAT | os.O_APPEND) for n in "AB"]
            try:
                while not stop.is_set():
                    for fd in fds:
                        os.write(fd, line(written[0]))
                        os.fsync(fd)
                    written[0] += 1
            finally:
                for fd in fds:
                    os.close(fd)
        except BaseException as e:
            errors.append(e)

    with mounted(imgfs, "busy", mnt):
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while written[0] < 200 and thread.is_alive():
                time.sleep(0.01)
            before = written[0]
            imgfs("commit", "busy", "snap")
            after = written[0]
            while written[0] < after + 200 and thread.is_alive():
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not errors, errors
        total = written[0]
        expected = b"".join(line(i) for i in range(total))
        for n in "AB":
            assert (mnt / "root" / n).read_bytes() == expected  # nothing lost
    assert total > after >= before >= 200

    with mounted(imgfs, "snap", mnt):
        counts = {}
        for n in "AB":
            data = (mnt / "root" / n).read_bytes()
            assert len(data) % LINE == 0, "a torn line"
            counts[n] = len(data) // LINE
            assert data == expected[: len(data)]
    assert before <= counts["B"] <= counts["A"] <= counts["B"] + 1 <= after + 1


# -- other tools --------------------------------------------------------------------------


def test_umoci_unpacks_a_committed_image_as_it_mounts(
    imgfs: ImgfsRunner,
    root: Path,
    base_tar: Path,
    tmp_path: Path,
    mountpoint: Callable[..., Path],  # noqa: F811 - the fixture
) -> None:
    """Debian 12's umoci (0.4.7) predates zstd layers: the whole chain is stored with gzip."""
    require_fuse()
    umoci = shutil.which("umoci")
    require(umoci is not None, "umoci is not installed")
    assert umoci is not None
    imgfs("import", "--compression", "gzip", str(base_tar), "base:gz")
    imgfs("create", "--name", "box", "base:gz")
    mnt = mountpoint("box")
    with mounted(imgfs, "box", mnt):
        change_everything(mnt)
    imgfs("commit", "--compression", "gzip", "box", "committed:gz")
    doc = inspect(imgfs, "committed:gz")
    assert {layer["mediaType"] for layer in doc["Manifest"]["Layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    bundle = tmp_path / "bundle"
    subprocess.run(
        [umoci, "unpack", "--image", f"{root}/oci:docker.io/library/committed:gz", str(bundle)],
        check=True,
        capture_output=True,
    )
    with mounted(imgfs, "committed:gz", mnt):
        # umoci sets the times of directories it changes after their entries are made, in
        # its own order: directory mtimes are left out of this comparison.
        ours = tree(mnt, mtimes=False)
        files_mtimes = _file_mtimes(mnt)
    theirs = tree(bundle / "rootfs", mtimes=False)
    assert theirs == ours
    assert _file_mtimes(bundle / "rootfs") == files_mtimes


def _file_mtimes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.lstat(p).st_mtime_ns
    return out


# -- errors -------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error_and_changes_nothing(
    imgfs: ImgfsRunner, root: Path, base_tar: Path
) -> None:
    imgfs("import", str(base_tar), "base")
    imgfs("create", "--name", "box", "base")
    before = snapshot(root)
    cases = [
        (("commit", "nosuch"), "no such container: nosuch"),
        (("commit", "-c", "FROM x", "box"), "'FROM' is not supported"),
        (("commit", "-c", "EXPOSE 99999", "box"), "invalid port"),
        (("commit", "box", "Bad/Name"), "invalid reference format"),
        (("commit", "box", "base@sha256:" + "a" * 64), "cannot tag with a digest"),
        (("commit", "box", "scratch"), "reserved"),
    ]
    for args, message in cases:
        assert_user_error(imgfs(*args, check=False), message)
        assert snapshot(root) == before, args


def test_a_failing_layer_writer_leaves_the_store_unchanged(
    root: Path, imgfs: ImgfsRunner, base_tar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tar is piped from a thread into the store: the writer's error is the one
    reported (not the reader's "truncated tar"), and nothing of the layer stays."""
    imgfs("import", str(base_tar), "base")
    imgfs("create", "--name", "box", "base")
    before = snapshot(root)

    def broken(upper_dir: Path, index: MergedIndex, out: io.BufferedWriter, progress=None):
        out.write(build([reg("half", b"x" * 100_000)])[:70_000])
        raise ImgfsError("disk on fire")

    monkeypatch.setattr(commit_module, "write_layer_tar", broken)
    with pytest.raises(ImgfsError, match="disk on fire"):
        commit_container(ImageStore(root), "box")
    assert snapshot(root) == before


# -- the layer tar itself ---------------------------------------------------------------


def _overlay(lowers: list[Path], mnt: Path, upper: Path | None = None, work: Path | None = None):
    opts = f"lowerdir={':'.join(map(str, lowers))}"
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    subprocess.run([IMGFS_OVERLAY, "-o", opts, str(mnt)], check=True, timeout=60)


def test_layer_tar_of_a_kernel_format_upper(tmp_path: Path) -> None:
    """An upper dir written the way kernel overlayfs writes it (a relative redirect for a
    rename in the same dir, an absolute one across dirs, whiteouts, an opaque dir), turned
    into a layer: the entries, their order and headers, and the tree it mounts as."""
    require_fuse()
    require(os.path.exists(IMGFS_OVERLAY), "imgfs-overlay is not installed")
    bottom = unpack_layer(
        build([
            directory("d", xattrs={"user.d": "1"}),
            reg("d/x", b"x\n"),
            reg("d/h1", b"h\n"),
            directory("d/sub"),
            reg("d/sub/y", b"y\n", pax={"mtime": "1600000000.5"}),
            directory("e"),
            reg("e/z", b"z\n", uid=7),
            directory("f", mode=0o711),
            hardlink("f/h2", "d/h1"),
            directory("o"),
            reg("o/old", b"old\n"),
            directory("g"),
            directory("g/deep"),
            reg("g/deep/w", b"w\n"),
        ]),
        tmp_path / "bottom",
    )  # fmt: skip
    top = unpack_layer(build([directory("d"), reg("d/top", b"top\n")]), tmp_path / "top")
    lowers = [top, bottom]

    upper = tmp_path / "upper"
    upper.mkdir()
    os.mkdir(upper / "r")  # `mv d r`: relative redirect (same parent)
    os.setxattr(upper / "r", "trusted.overlay.redirect", b"d")
    os.setxattr(upper / "r", "user.d", b"1")
    os.mknod(upper / "d", stat.S_IFCHR, os.makedev(0, 0))
    os.mknod(upper / "r/x", stat.S_IFCHR, os.makedev(0, 0))  # `rm r/x`
    os.mkdir(upper / "r/moved-e")  # `mv e r/moved-e`: absolute redirect
    os.setxattr(upper / "r/moved-e", "trusted.overlay.redirect", b"/e")
    os.mknod(upper / "e", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "r/moved-e/new").write_bytes(b"new\n")
    os.mkdir(upper / "o")  # `rm -r o; mkdir o`
    os.setxattr(upper / "o", "trusted.overlay.opaque", b"y")
    (upper / "o/fresh").write_bytes(b"fresh\n")
    os.mkdir(upper / "g")  # copied up on the way to a change below
    os.mkdir(upper / "g/deep")
    (upper / "g/deep/w").write_bytes(b"w changed\n")
    os.setxattr(upper / "g/deep/w", "trusted.overlay.imgfs.origin", b"999999")
    os.setxattr(upper / "g/deep/w", "trusted.overlay.overlay.mine", b"escaped")
    os.setxattr(upper / "g/deep/w", "user.kept", b"\xff\x00")
    os.link(upper / "g/deep/w", upper / "g/w-link")
    os.symlink("deep/w", upper / "g/sym")
    os.utime(upper / "g/deep/w", ns=(0, 1_700_000_000_000_000_001))
    for p in (upper / "g/deep", upper / "g", upper / "o", upper / "r/moved-e", upper / "r"):
        os.utime(p, ns=(0, 1_650_000_000_000_000_000))

    index = MergedIndex.build(lowers, tmp_path / "index")
    outs = []
    for _ in range(2):
        buf = io.BytesIO()
        write_layer_tar(upper, index, buf)
        outs.append(buf.getvalue())
    index.close()
    assert outs[0] == outs[1]  # deterministic
    data = outs[0]

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "."  # the root, as "./"
    assert names == [".", *sorted(names[1:], key=os.fsencode)]
    by_name = {m.name: m for m in members}
    assert {".wh.d", ".wh.e", "o/.wh..wh..opq", "r/.wh..wh..opq"} <= set(names)
    # The renamed dir is written whole: its lower content (both layers) and its own.
    for n in ("r/h1", "r/top", "r/sub", "r/sub/y", "r/moved-e/z", "r/moved-e/new"):
        assert n in by_name, n
    assert "r/x" not in by_name and "r/.wh.x" not in by_name and "o/old" not in by_name
    assert "r/moved-e/.wh..wh..opq" not in by_name  # already inside an opaque dir
    assert by_name["r/moved-e/z"].uid == 7
    assert by_name["r/sub/y"].pax_headers["mtime"] == "1600000000.5"
    assert by_name["r"].pax_headers["SCHILY.xattr.user.d"] == "1"
    # f/h2 is a lower name of r/h1's inode: written too, so they stay one file.
    assert by_name["f"].isdir() and by_name["f"].mode == 0o711
    assert by_name["f/h2"].isreg() and by_name["r/h1"].islnk()
    assert by_name["r/h1"].linkname == "f/h2"
    assert by_name["g/deep/w"].isreg() and by_name["g/w-link"].islnk()
    assert by_name["g/w-link"].linkname == "g/deep/w"
    w = by_name["g/deep/w"]
    assert w.pax_headers["mtime"] == "1700000000.000000001"
    assert {k for k in w.pax_headers if k.startswith("SCHILY")} == {"SCHILY.xattr.user.kept"}
    for m in members:
        assert m.uname == m.gname == ""
        assert not {"atime", "ctime"} & set(m.pax_headers)

    # And it mounts as the container showed it.
    new = unpack_layer(data, tmp_path / "new")
    work = tmp_path / "work"
    work.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _overlay(lowers, a, upper, work)
    try:
        _overlay([new, *lowers], b)
        try:
            assert tree(b) == tree(a)
        finally:
            unmount(b)
    finally:
        unmount(a)


def test_layer_tar_headers_carry_what_ustar_cannot(tmp_path: Path) -> None:
    """Long names and link targets, names that are not UTF-8, ids and times beyond the
    ustar fields, nanoseconds, xattrs: all through PAX records, and back unchanged."""
    require_root()
    empty = tmp_path / "empty"
    empty.mkdir()
    upper = tmp_path / "upper"
    upper.mkdir()
    deep = upper / ("d" * 120) / ("e" * 120)
    os.makedirs(deep)
    (deep / ("f" * 200)).write_bytes(b"long\n")
    with open(os.fsencode(upper) + b"/caf\xe9-\xff", "wb") as f:
        f.write(b"not utf-8\n")
    os.symlink("t" * 300, upper / "long-target")
    (upper / "big-ids").write_bytes(b"ids\n")
    os.chown(upper / "big-ids", 3_000_000, 4_000_000)
    (upper / "future").write_bytes(b"")
    os.utime(upper / "future", ns=(0, 9_000_000_000 * 10**9 + 5))
    (upper / "past").write_bytes(b"")
    os.setxattr(upper / "past", "user.empty", b"")
    os.setxattr(upper / "past", "user.multi\nline", b"a=b\nc")
    os.utime(upper / "past", ns=(0, -1_500_000_000))
    for d in (deep, deep.parent, upper):
        os.utime(d, ns=(0, 1_700_000_000_000_000_000))

    index = MergedIndex.build([empty], tmp_path / "index")
    buf = io.BytesIO()
    write_layer_tar(upper, index, buf)
    index.close()
    data = buf.getvalue()
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    new = unpack_layer(data, tmp_path / "new")
    assert tree(new) == tree(upper)
    if shutil.which("tar"):  # GNU tar reads it too
        listing = subprocess.run(
            ["tar", "-tf", "-"], input=data, capture_output=True, check=True
        ).stdout
        assert b"d" * 120 + b"/" + b"e" * 120 + b"/" + b"f" * 200 + b"\n" in listing
