"""Mount lifecycle with the real daemon: stale mounts, signals, foreground mode, imgfs-overlay."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_containers import (
    daemon_pid,
    is_mounted,
    mount_entry,
    mountpoint,  # noqa: F401 - a fixture
    pid_alive,
    ps_rows,
    require_fuse,
    wait_until,
)

from unionfs.errors import ImgfsError
from unionfs.fs import lifecycle
from unionfs.fs.spec import MountSpec

from conftest import ImgfsRunner

MakeMountpoint = Callable[..., Path]


@pytest.fixture
def box(imgfs: ImgfsRunner, busybox_tar_file: Path) -> str:
    """A container `box` of the built-in busybox image; returns its ID."""
    imgfs("import", str(busybox_tar_file), "busybox")
    return imgfs("create", "--name", "box", "busybox").stdout.strip()


def test_kill_9_leaves_a_stale_mount_that_umount_cleans(
    imgfs: ImgfsRunner,
    box: str,
    root: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
) -> None:
    require_fuse()
    mnt = mountpoint()
    imgfs("mount", "box", str(mnt))
    try:
        (mnt / "kept").write_text("before the crash\n")
        pid = daemon_pid(root, box)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid))
        with pytest.raises(OSError) as e:
            os.stat(mnt)
        assert e.value.errno == errno.ENOTCONN
        [row] = ps_rows(imgfs)  # stale mounts show without -a: they need attention
        assert row["Status"] == "stale" and row["Mountpoint"] == str(mnt)
        assert "stale" in imgfs("ps").stdout.splitlines()[1]

        out = imgfs("umount", str(mnt)).stdout
        assert "stale" in out
        assert not is_mounted(mnt)
        assert os.listdir(mnt) == []  # a plain directory again
        assert ps_rows(imgfs, "-a")[0]["Status"] == "unmounted"
        assert not (root / "containers" / box / "mount.json").exists()
        assert (root / "containers" / box / "upper" / "kept").read_text() == "before the crash\n"

        # Killed again: the next mount of the container cleans the stale mount by itself.
        imgfs("mount", "box", str(mnt))
        os.kill(daemon_pid(root, box), signal.SIGKILL)
        wait_until(lambda: ps_rows(imgfs)[0]["Status"] == "stale")
        other = mountpoint("other")
        imgfs("mount", "box", str(other))
        assert not is_mounted(mnt) and is_mounted(other)
        assert (other / "kept").read_text() == "before the crash\n"
        imgfs("umount", str(other))
    finally:
        for m in (mnt, mnt.parent / "other"):
            if is_mounted(m):
                imgfs("umount", str(m), check=False)


def test_sigterm_unmounts_cleanly(
    imgfs: ImgfsRunner,
    box: str,
    root: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
) -> None:
    require_fuse()
    mnt = mountpoint()
    imgfs("mount", "box", str(mnt))
    try:
        pid = daemon_pid(root, box)
        (mnt / "f").write_text("data\n")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid))
        assert not is_mounted(mnt)
        assert os.listdir(mnt) == []
        assert not (root / "containers" / box / "mount.json").exists()
        assert ps_rows(imgfs, "-a")[0]["Status"] == "unmounted"
        assert (root / "containers" / box / "upper" / "f").read_text() == "data\n"
    finally:
        if is_mounted(mnt):
            imgfs("umount", str(mnt), check=False)


def test_foreground_mount_stops_on_ctrl_c(
    imgfs: ImgfsRunner,
    box: str,
    root: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
) -> None:
    require_fuse()
    mnt = mountpoint()
    env = dict(os.environ, IMGFS_ROOT=str(root))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionfs", "mount", "-f", "box", str(mnt)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: (root / "containers" / box / "mount.json").exists() or bool(proc.poll()))
        assert proc.poll() is None, proc.communicate()
        assert daemon_pid(root, box) == proc.pid
        assert "bin" in os.listdir(mnt)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert not is_mounted(mnt)
        assert not (root / "containers" / box / "mount.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            imgfs("umount", str(mnt), check=False)


def test_daemon_errors_reach_the_caller(tmp_path: Path, mountpoint: MakeMountpoint) -> None:  # noqa: F811
    """A daemon that can't set the mount up reports why, and leaves nothing behind."""
    require_fuse()
    mnt = mountpoint()
    state = tmp_path / "state" / "mount.json"
    spec = MountSpec(lower_dirs=[tmp_path / "no-such-layer"], mountpoint=mnt)
    with pytest.raises(ImgfsError, match="no-such-layer does not exist"):
        lifecycle.mount(spec, state_file=state)
    assert not state.exists() and not is_mounted(mnt)


# -- imgfs-overlay -------------------------------------------------------------------


def overlay_cmd() -> list[str]:
    script = Path(sys.executable).parent / "imgfs-overlay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "unionfs.cli.overlay"]


def overlay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*overlay_cmd(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def overlay_daemons(merged: Path) -> list[int]:
    """Live imgfs-overlay processes serving `merged`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            any(b"imgfs-overlay" in a or b"unionfs.cli.overlay" in a for a in cmdline)
            and (os.fsencode(merged) in cmdline)
            and pid_alive(int(entry))
        ):
            pids.append(int(entry))
    return pids


def make_layers(tmp_path: Path) -> dict[str, Path]:
    dirs = {n: tmp_path / n for n in ("l1", "l2", "upper", "work")}
    for d in dirs.values():
        d.mkdir()
    (dirs["l2"] / "a").write_text("bottom a\n")
    (dirs["l2"] / "b").write_text("bottom b\n")
    (dirs["l2"] / "sub").mkdir()
    (dirs["l2"] / "sub" / "deep").write_text("deep\n")
    (dirs["l1"] / "b").write_text("top b\n")
    return dirs


def test_imgfs_overlay_read_write(tmp_path: Path, mountpoint: MakeMountpoint) -> None:  # noqa: F811
    require_fuse()
    d = make_layers(tmp_path)
    merged = mountpoint("merged")
    opts = f"lowerdir={d['l1']}:{d['l2']},upperdir={d['upper']},workdir={d['work']}"
    # Options podman passes: accepted (identity mappings) or ignored.
    extra = "uidmapping=0:0:4294967295,gidmapping=0:0:4294967295,squash_to_root,noacl,fast_ino=1"
    result = overlay("-o", opts, "-o", extra + ",nosuid,allow_other", str(merged))
    assert result.returncode == 0, result.stderr
    try:
        assert result.stderr == ""
        assert mount_entry(merged) == ("fuse.imgfs", "imgfs-overlay")
        assert sorted(os.listdir(merged)) == ["a", "b", "sub"]
        assert (merged / "b").read_text() == "top b\n"
        assert (merged / "sub" / "deep").read_text() == "deep\n"
        (merged / "new").write_text("new\n")
        (merged / "a").write_text("changed a\n")
        assert (d["work"] / "imgfs-index").is_file()
        daemons = overlay_daemons(merged)
        assert len(daemons) == 1
    finally:
        subprocess.run(["fusermount3", "-u", str(merged)], check=False)
    assert not is_mounted(merged)
    wait_until(lambda: not any(pid_alive(p) for p in daemons))
    assert (d["upper"] / "new").read_text() == "new\n"
    assert (d["upper"] / "a").read_text() == "changed a\n"
    assert (d["l2"] / "a").read_text() == "bottom a\n"


def test_imgfs_overlay_read_only(tmp_path: Path, mountpoint: MakeMountpoint) -> None:  # noqa: F811
    require_fuse()
    d = make_layers(tmp_path)
    merged = mountpoint("merged")
    result = overlay("-o", f"lowerdir={d['l1']}:{d['l2']}", str(merged))
    assert result.returncode == 0, result.stderr
    try:
        assert (merged / "a").read_text() == "bottom a\n"
        with pytest.raises(OSError) as e:
            (merged / "x").write_text("x")
        assert e.value.errno == errno.EROFS
        assert "ro" in Path("/proc/self/mountinfo").read_text().split(f" {merged} ")[1].split()[0]
    finally:
        subprocess.run(["fusermount3", "-u", str(merged)], check=False)
    assert not is_mounted(merged)
    assert os.listdir(d["work"]) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "no lowerdir"),
        (["-o", "lowerdir={tmp}/nope"], "does not exist"),
        (["-o", "lowerdir={l1}::{l2}"], "empty entry"),
        (["-o", "lowerdir={l1},upperdir={upper}"], "upperdir and workdir must be given together"),
        (["-o", "lowerdir={l1},uidmapping=0:1000:1"], "uidmapping=0:1000:1 is not supported"),
        (["-o", "lowerdir={l1},gidmapping=0:0"], "invalid gidmapping"),
        (["-o", "lowerdir={l1},frobnicate=3"], "unknown option 'frobnicate=3'"),
        (["-o", "lowerdir={l1},plugins=/x.so"], "plugins= is not supported"),
        (["-o", "lowerdir={l1}", "--mountpoint-missing"], "does not exist"),
    ],
)
def test_imgfs_overlay_bad_options(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    options: list[str],
    message: str,
) -> None:
    d = make_layers(tmp_path)
    merged = mountpoint("merged")
    fill = {"tmp": str(tmp_path), **{k: str(v) for k, v in d.items()}}
    args = [o.format(**fill) for o in options]
    if "--mountpoint-missing" in args:
        args.remove("--mountpoint-missing")
        merged = tmp_path / "no-such-mountpoint"
        require_fuse()  # the mountpoint is checked just before mounting
    result = overlay(*args, str(merged))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgfs-overlay: "), result.stderr
    assert message in lines[0], lines[0]
    assert not is_mounted(merged)
