"""Containers through the CLI: create, ps, rm, and real FUSE mounts of containers and images."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ImgfsRunner, assert_user_error, require, require_root

ID_RE = re.compile(r"[0-9a-f]{64}")


def require_fuse() -> None:
    require_root()
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require(shutil.which("fusermount3") is not None, "needs fusermount3 (apt install fuse3)")


def mount_entry(path: Path) -> tuple[str, str] | None:
    """(fstype, source) of the topmost mount at `path`, from /proc/self/mountinfo."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            if fields[4] == str(path):
                found = (fields[sep + 1], fields[sep + 2])
    return found


def is_mounted(path: Path) -> bool:
    return mount_entry(path) is not None


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (the daemon's parent is init, which may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes mountpoint dirs; whatever is still mounted on them at the end is unmounted."""
    made: list[Path] = []

    def make(name: str = "mnt") -> Path:
        path = Path(os.path.realpath(tmp_path)) / name
        path.mkdir()
        made.append(path)
        return path

    try:
        yield make
    finally:
        for path in made:
            while is_mounted(path):
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def busybox(imgfs: ImgfsRunner, busybox_tar_file: Path) -> str:
    """The built-in busybox image, imported as `busybox`; returns its ID."""
    return imgfs("import", str(busybox_tar_file), "busybox").stdout.strip()


def container_dir(root: Path, container_id: str) -> Path:
    return root / "containers" / container_id


def daemon_pid(root: Path, container_id: str) -> int:
    return int(json.loads((container_dir(root, container_id) / "mount.json").read_text())["pid"])


def ps_rows(imgfs: ImgfsRunner, *args: str) -> list[dict[str, object]]:
    out = imgfs("ps", "--format", "json", "--no-trunc", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


# -- create / ps / rm --------------------------------------------------------------------


def test_create_ps_rm(imgfs: ImgfsRunner, busybox: str, root: Path) -> None:
    web = imgfs("create", "--name", "web", "busybox").stdout.strip()
    assert ID_RE.fullmatch(web)
    other = imgfs("create", busybox[7:19]).stdout.strip()
    assert ID_RE.fullmatch(other) and other != web

    record = json.loads((container_dir(root, web) / "config.json").read_text())
    assert record["id"] == web and record["name"] == "web"
    assert record["image_id"] == busybox and record["image"] == "busybox"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", record["created"])
    assert len(record["diff_ids"]) == 1
    for sub in ("upper", "work"):
        d = container_dir(root, web) / sub
        assert stat.S_IMODE(d.stat().st_mode) == 0o755 and os.listdir(d) == []
    assert (root / "indexes").is_dir() and os.listdir(root / "indexes")

    # Like docker ps: only "running" (mounted) containers without -a.
    assert imgfs("ps").stdout.splitlines() == [
        "CONTAINER ID   IMAGE   CREATED   STATUS   MOUNTPOINT   NAMES"
    ]
    table = imgfs("ps", "-a").stdout.splitlines()
    header = table[0]
    for column in ("CONTAINER ID", "IMAGE", "CREATED", "STATUS", "MOUNTPOINT", "NAMES"):
        assert column in header
    assert len(table) == 3
    rows = {line.split()[-1]: line for line in table[1:]}
    assert rows["web"].startswith(web[:12] + "   busybox   ")
    assert "unmounted" in rows["web"]
    [generated] = [name for name in rows if name != "web"]
    assert re.fullmatch(r"[a-z]+_[a-z]+\d?", generated)
    assert sorted(imgfs("ps", "-a", "-q").stdout.split()) == sorted([web[:12], other[:12]])
    assert web in imgfs("ps", "-a", "-q", "--no-trunc").stdout.split()
    by_name = {r["Names"]: r for r in ps_rows(imgfs, "-a")}
    assert by_name["web"]["ID"] == web and by_name["web"]["Status"] == "unmounted"
    assert by_name["web"]["ImageID"] == busybox
    assert by_name[generated]["Image"] == busybox[7:19]

    # Names are unique and validated.
    dup = imgfs("create", "--name", "web", "busybox", check=False)
    assert_user_error(dup, '"web" is already in use', web[:12])
    for bad in ("a", "-x", "a b", "x/y", "ünï"):
        assert_user_error(imgfs("create", f"--name={bad}", "busybox", check=False), "invalid")
    assert_user_error(imgfs("create", "nosuchimage", check=False), "no such image")

    # An image a container uses can't be removed without -f.
    assert_user_error(imgfs("rmi", "busybox", check=False), "used by container")

    assert imgfs("rm", "web").stdout == "web\n"
    assert not container_dir(root, web).exists()
    assert_user_error(imgfs("rm", "web", check=False), "no such container: web")
    assert imgfs("rm", other[:5]).stdout == f"{other[:5]}\n"
    assert imgfs("ps", "-a", "-q").stdout == ""
    assert "Deleted: " + busybox in imgfs("rmi", "busybox").stdout


def test_scratch_container(imgfs: ImgfsRunner, root: Path, mountpoint: Callable[..., Path]) -> None:
    require_fuse()
    cid = imgfs("create", "--name", "empty", "scratch").stdout.strip()
    mnt = mountpoint()
    imgfs("mount", "empty", str(mnt))
    try:
        assert os.listdir(mnt) == []
        (mnt / "d").mkdir()
        (mnt / "d" / "f").write_text("hello\n")
    finally:
        imgfs("umount", str(mnt))
    assert (container_dir(root, cid) / "upper" / "d" / "f").read_text() == "hello\n"
    assert os.listdir(mnt) == []


# -- mounts ----------------------------------------------------------------------------


def test_mount_image_read_only(
    imgfs: ImgfsRunner, busybox: str, root: Path, mountpoint: Callable[..., Path]
) -> None:
    require_fuse()
    mnt = mountpoint()
    out = imgfs("mount", "busybox", str(mnt))
    try:
        assert out.stdout.strip() == str(mnt)
        assert mount_entry(mnt) == ("fuse.imgfs", f"imgfs:image:{busybox[7:19]}")
        names = set(os.listdir(mnt))
        assert {"bin", "etc", "usr", "tmp", "root"} <= names
        assert (mnt / "etc" / "hostname").read_text() == "busybox\n"
        assert os.readlink(mnt / "bin" / "sh") == "busybox"
        assert stat.S_IMODE((mnt / "tmp").stat().st_mode) == 0o1777
        with pytest.raises(OSError) as e:
            (mnt / "etc" / "new").write_text("x")
        assert e.value.errno == errno.EROFS
        assert imgfs("ps", "-a").stdout.count("\n") == 1  # no container was created
        # The mountpoint is busy: a second mount there is refused.
        again = imgfs("mount", "busybox", str(mnt), check=False)
        assert_user_error(again, f"image busybox is already mounted at {mnt}")
    finally:
        imgfs("umount", str(mnt))
    assert not is_mounted(mnt) and os.listdir(mnt) == []
    assert not any((root / "mounts").iterdir())


def test_mount_container_read_write(
    imgfs: ImgfsRunner, busybox: str, root: Path, mountpoint: Callable[..., Path]
) -> None:
    require_fuse()
    cid = imgfs("create", "--name", "box", "busybox").stdout.strip()
    mnt = mountpoint()
    imgfs("mount", "box", str(mnt))
    try:
        assert mount_entry(mnt) == ("fuse.imgfs", f"imgfs:{cid[:12]}")
        pid = daemon_pid(root, cid)
        assert pid_alive(pid)
        [row] = ps_rows(imgfs)
        assert row["ID"] == cid and row["Status"] == "mounted" and row["Mountpoint"] == str(mnt)
        line = imgfs("ps").stdout.splitlines()[1]
        assert "mounted" in line and str(mnt) in line and line.endswith("box")
        (mnt / "root" / "hello.txt").write_text("written through FUSE\n")
        (mnt / "etc" / "hostname").write_text("changed\n")
    finally:
        imgfs("umount", str(mnt))
    assert not is_mounted(mnt) and os.listdir(mnt) == []
    wait_until(lambda: not pid_alive(pid))
    assert not (container_dir(root, cid) / "mount.json").exists()
    upper = container_dir(root, cid) / "upper"
    assert (upper / "root" / "hello.txt").read_text() == "written through FUSE\n"
    assert (upper / "etc" / "hostname").read_text() == "changed\n"
    assert ps_rows(imgfs, "-a")[0]["Status"] == "unmounted"


def test_mount_container_read_only(
    imgfs: ImgfsRunner, busybox: str, root: Path, mountpoint: Callable[..., Path]
) -> None:
    """`-o ro` shows the container's changes but lets nothing be written."""
    require_fuse()
    cid = imgfs("create", "--name", "box", "busybox").stdout.strip()
    upper = container_dir(root, cid) / "upper"
    (upper / "hello.txt").write_text("in the upper dir\n")
    mnt = mountpoint()
    imgfs("mount", "-o", "ro", "box", str(mnt))
    try:
        assert (mnt / "etc" / "passwd").read_text().startswith("root:x:0:0:")
        with pytest.raises(OSError) as e:
            (mnt / "x").write_text("x")
        assert e.value.errno == errno.EROFS
        assert (mnt / "hello.txt").read_text() == "in the upper dir\n"
    finally:
        imgfs("umount", str(mnt))


def test_mount_errors(
    imgfs: ImgfsRunner, busybox: str, root: Path, mountpoint: Callable[..., Path], tmp_path: Path
) -> None:
    require_fuse()
    cid = imgfs("create", "--name", "box", "busybox").stdout.strip()
    missing = tmp_path / "missing"
    assert_user_error(imgfs("mount", "box", str(missing), check=False), "does not exist")
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_user_error(imgfs("mount", "box", str(a_file), check=False), "not a directory")
    mnt = mountpoint("a")
    other = mountpoint("b")
    assert_user_error(imgfs("mount", "nosuch", str(mnt), check=False), "no such container or image")
    assert_user_error(imgfs("mount", "-o", "bogus", "box", str(mnt), check=False), "'bogus'")
    assert_user_error(imgfs("umount", str(mnt), check=False), "not mounted")
    assert not (container_dir(root, cid) / "mount.json").exists()

    imgfs("mount", "box", str(mnt))
    try:
        second = imgfs("mount", "box", str(other), check=False)
        assert_user_error(second, f"container box is already mounted at {mnt}")
        assert not is_mounted(other)
        assert_user_error(imgfs("rm", "box", check=False), "is mounted at", "-f")
        assert is_mounted(mnt)
    finally:
        assert imgfs("rm", "-f", "box").stdout == "box\n"  # unmounts, then removes
    assert not is_mounted(mnt) and not container_dir(root, cid).exists()


def test_umount_refuses_other_filesystems(
    imgfs: ImgfsRunner, mountpoint: Callable[..., Path]
) -> None:
    require_fuse()
    mnt = mountpoint()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        result = imgfs("umount", str(mnt), check=False)
        assert_user_error(result, "not an imgfs mount", "tmpfs")
        assert is_mounted(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_rmi_refuses_an_image_that_is_mounted(
    imgfs: ImgfsRunner, busybox: str, mountpoint: Callable[..., Path]
) -> None:
    require_fuse()
    mnt = mountpoint()
    imgfs("mount", "busybox", str(mnt))
    try:
        assert_user_error(imgfs("rmi", "busybox", check=False), "mount at")
        assert (mnt / "bin" / "busybox").is_file()
    finally:
        imgfs("umount", str(mnt))
    imgfs("rmi", "busybox")
