"""imgfs run (namespaces + chroot into the FUSE mount) and runc on an imgfs mount."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ImgfsRunner, Result, assert_user_error, require, require_root


def require_fuse() -> None:
    require_root()
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require(shutil.which("fusermount3") is not None, "needs fusermount3 (apt install fuse3)")


def imgfs_mounts(under: Path) -> list[str]:
    """Mountpoints of imgfs mounts under `under` (this test's dirs) in this namespace."""
    found = []
    prefix = os.path.realpath(under) + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            if fields[sep + 1] == "fuse.imgfs" and fields[4].startswith(prefix):
                found.append(fields[4])
    return found


def with_etc_files(busybox_tar: bytes) -> bytes:
    """The busybox rootfs plus /etc/hosts and /etc/resolv.conf, as real images have them
    (imgfs run bind-mounts its own over them; missing ones are created in the upper dir)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(busybox_tar)) as src,
        tarfile.open(fileobj=out, mode="w") as dst,
    ):
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name in ("etc/hosts", "etc/resolv.conf"):
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            dst.addfile(info, io.BytesIO(b""))
    return out.getvalue()


@pytest.fixture
def busybox(imgfs: ImgfsRunner, busybox_tar: bytes, tmp_path: Path) -> str:
    require_fuse()
    tar = tmp_path / "busybox.tar"
    tar.write_bytes(with_etc_files(busybox_tar))
    return imgfs("import", "-c", 'CMD ["sh"]', str(tar), "busybox").stdout.strip()


@pytest.fixture
def run(imgfs: ImgfsRunner, tmp_path: Path) -> Callable[..., Result]:
    def go(*args: str, check: bool = False) -> Result:
        result = imgfs("run", *args, check=check)
        assert imgfs_mounts(tmp_path) == [], "a mount was left behind"
        return result

    return go


def test_namespaces_and_mounts(run: Callable[..., Result], busybox: str) -> None:
    script = (
        "echo $$; hostname; ls /proc | head -3; cat /proc/1/status | grep PPid; "
        "grep -c . /etc/hosts; ls /dev; touch /sys/x 2>/dev/null || echo sys-ro; "
        "id -u; pwd; echo $PATH $HOME $FOO"
    )
    r = run("--hostname", "box", "-e", "FOO=bar", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines[0] == "1"  # the command is PID 1 of its own namespace, as in docker
    assert lines[1] == "box"
    assert lines[2] == "1" and lines[3].isdigit() and int(lines[3]) < 10  # a fresh /proc
    assert lines[5] == "PPid:\t0"  # PID 1 of its own PID namespace
    assert int(lines[6]) >= 2  # the generated /etc/hosts
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= set(lines)
    assert "sys-ro" in lines
    assert lines[-3:] == [
        "0",
        "/",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /root bar",
    ]
    # The default hostname is the container's short ID.
    r = run("--name", "named", "busybox", "hostname")
    assert r.returncode == 0 and len(r.stdout.strip()) == 12


def test_exit_codes(run: Callable[..., Result], busybox: str, imgfs: ImgfsRunner) -> None:
    assert run("busybox", "true").returncode == 0
    assert run("busybox", "sh", "-c", "exit 3").returncode == 3
    missing = run("busybox", "nosuchcommand")
    assert missing.returncode == 127
    assert 'exec: "nosuchcommand": executable file not found in $PATH' in missing.stderr
    denied = run("busybox", "/etc/passwd")
    assert denied.returncode == 126 and "permission denied" in denied.stderr
    # Killed by a signal: 128+N, and nothing stays mounted (checked by `run`). PID 1
    # ignores signals it sends itself, so these run under --init (the command is PID 2).
    assert run("--init", "busybox", "sh", "-c", "echo $$; kill -9 $$").returncode == 137
    assert run("--init", "busybox", "sh", "-c", "kill -TERM $$").returncode == 143
    assert_user_error(run("nosuchimage", "true"), "no such image")
    # The image's config: Entrypoint + Cmd, Env, WorkingDir, User.
    imgfs(
        "commit",
        "-c",
        'ENTRYPOINT ["echo", "entry"]',
        "-c",
        "ENV GREETING=hi",
        "-c",
        "WORKDIR /tmp/w",
        "-c",
        "USER nobody",
        imgfs("create", "busybox").stdout.strip(),
        "configured",
    )
    assert run("configured").stdout == "entry\n"
    assert run("configured", "a", "b").stdout == "entry a b\n"
    imgfs(
        "commit",
        "-c",
        'ENTRYPOINT ["sh", "-c"]',
        imgfs("create", "configured").stdout.strip(),
        "sh",
    )
    r = run("sh", "echo $GREETING; pwd; id -u; touch /x 2>/dev/null || echo ro")
    assert r.stdout.split() == ["hi", "/tmp/w", "65534", "ro"], r
    assert run("-u", "0", "sh", "id -u").stdout == "0\n"


def test_changes_diff_commit(
    run: Callable[..., Result], busybox: str, imgfs: ImgfsRunner, root: Path
) -> None:
    script = "echo new > /root/new; mv /etc/hostname /etc/hn; rm /bin/vi; mkdir /data"
    assert run("--name", "c1", "busybox", "sh", "-c", script).returncode == 0
    assert imgfs("diff", "c1").stdout.splitlines() == [
        "C /bin",
        "D /bin/vi",
        "A /data",
        "C /etc",
        "A /etc/hn",
        "D /etc/hostname",
        "C /root",
        "A /root/new",
    ]
    assert imgfs("ps").stdout.count("\n") == 1  # not mounted any more
    imgfs("commit", "c1", "busybox:changed")
    check = (
        "cat /root/new /etc/hn; test -e /etc/hostname || echo gone; test -e /bin/vi || echo novi"
    )
    r = run("--rm", "busybox:changed", "sh", "-c", check)
    assert r.stdout.split() == ["new", "busybox", "gone", "novi"], r
    # --rm removed that container; c1 stays.
    assert imgfs("ps", "-a", "-q").stdout.count("\n") == 1


def test_concurrent_containers(busybox: str, root: Path, tmp_path: Path) -> None:
    env = dict(os.environ, IMGFS_ROOT=str(root))

    def start(name: str, other: str) -> subprocess.Popen[bytes]:
        script = (
            f"echo {name} > /tmp/{name}; sleep 1; cat /tmp/{name}; "
            f"test ! -e /tmp/{other} && echo alone"
        )
        return subprocess.Popen(
            [sys.executable, "-m", "unionfs", "run", "--name", name, "busybox", "sh", "-c", script],
            env=env,
            stdout=subprocess.PIPE,
        )

    a, b = start("ca", "cb"), start("cb", "ca")
    out_a, _ = a.communicate(timeout=60)
    out_b, _ = b.communicate(timeout=60)
    assert (a.returncode, out_a) == (0, b"ca\nalone\n")
    assert (b.returncode, out_b) == (0, b"cb\nalone\n")
    assert imgfs_mounts(tmp_path) == []


def test_runc_on_an_imgfs_mount(imgfs: ImgfsRunner, busybox: str, tmp_path: Path) -> None:
    require(shutil.which("runc") is not None, "needs runc (apt install runc)")
    imgfs("create", "--name", "oci", "busybox")
    mnt = Path(os.path.realpath(tmp_path)) / "rootfs"
    mnt.mkdir()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    imgfs("mount", "oci", str(mnt))
    try:
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(mnt), "readonly": False}
        config["process"]["terminal"] = False
        config["process"]["args"] = ["sh", "-c", "echo from-runc > /root/runc; echo $$; hostname"]
        (bundle / "config.json").write_text(json.dumps(config))
        name = f"imgfs-test-{os.getpid()}"
        proc = subprocess.run(
            ["runc", "run", "--bundle", str(bundle), name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        subprocess.run(["runc", "delete", "-f", name], capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["1", "runc"]
    finally:
        imgfs("umount", str(mnt))
    assert [line for line in imgfs("diff", "oci").stdout.splitlines() if "root" in line] == [
        "C /root",
        "A /root/runc",
    ]


def test_signal_to_imgfs_run(busybox: str, root: Path, tmp_path: Path) -> None:
    """SIGTERM to `imgfs run` reaches the command; everything is unmounted afterwards."""
    env = dict(os.environ, IMGFS_ROOT=str(root))
    for options, status in (
        (["--init"], 128 + signal.SIGTERM),  # the init passes SIGTERM to sh, which dies of it
        (["--stop-timeout", "1"], 128 + signal.SIGKILL),  # sh as PID 1 ignores it: SIGKILL
    ):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "unionfs",
                "run",
                *options,
                "busybox",
                "sh",
                "-c",
                "echo up; sleep 30",
            ],
            env=env,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == status
        proc.stdout.close()
        assert imgfs_mounts(tmp_path) == []


def run_on_pty(
    root: Path, args: list[str], *, send: bytes | None = None, after: bytes = b""
) -> tuple[int, bytes]:
    """`imgfs run ARGS` with a pty (rows 33, cols 101) of ours as its terminal; `send` is
    typed once `after` has been output. Returns the exit status and everything output."""
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionfs", "run", *args],
        env=dict(os.environ, IMGFS_ROOT=str(root)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # so that the pty becomes its controlling terminal
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every process of ours closed the pty
                    break
                if not data:
                    break
                out += data
            if send is not None and after in out:
                os.write(master, send)
                send = None
            if not ready and proc.poll() is not None:
                break
        return proc.wait(timeout=10), out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_tty(busybox: str, root: Path, tmp_path: Path) -> None:
    status, out = run_on_pty(
        root, ["-t", "busybox", "sh", "-c", "tty; stty size; echo $TERM; test -t 0 && echo in"]
    )
    lines = out.decode().replace("\r", "").splitlines()
    assert status == 0, out
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), out  # the container's own devpts
    assert lines[1:] == ["33 101", "xterm", "in"]
    # -it: what is typed at our terminal reaches the command through its pty.
    script = "echo ready; read line; echo got:$line; exit 4"
    status, out = run_on_pty(
        root, ["-it", "busybox", "sh", "-c", script], send=b"hello there\r", after=b"ready"
    )
    assert status == 4, out
    assert b"got:hello there" in out
    assert imgfs_mounts(tmp_path) == []


def test_volumes(
    run: Callable[..., Result], busybox: str, imgfs: ImgfsRunner, tmp_path: Path
) -> None:
    host = tmp_path / "vol"
    host.mkdir()
    (host / "given").write_text("from host\n")
    script = (
        "cat /data/vol/given; echo written > /data/vol/made; "
        "echo x > /ro/y 2>/dev/null || echo refused; cat /ro/given"
    )
    r = run(
        "--name", "vols", "-v", f"{host}:/data/vol", "-v", f"{host}:/ro:ro", "busybox", "sh", "-c",
        script,
    )  # fmt: skip
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == ["from host", "refused", "from host"]
    assert (host / "made").read_text() == "written\n"
    assert not (host / "y").exists()
    # Only the created mountpoints reach the upper dir, never what is mounted on them.
    changes = imgfs("diff", "vols").stdout.splitlines()
    assert {"A /data", "A /data/vol", "A /ro"} <= set(changes)
    assert not [c for c in changes if "made" in c or "given" in c], changes
    assert (
        "Read-only file system"
        in run("-v", f"{host}:/ro:ro", "busybox", "sh", "-c", "touch /ro/z").stderr
    )
    assert_user_error(run("-v", "relative:/x", "busybox", "true"), "must be absolute")
    # A container path through a symlink (here one leaving the rootfs) is refused.
    assert run("--name", "ln", "busybox", "ln", "-s", "/../../..", "/up").returncode == 0
    imgfs("commit", "ln", "linked")
    r = run("-v", f"{host}:/up/escape", "linked", "true")
    assert r.returncode == 125 and "symlink" in r.stderr, r
    assert not (tmp_path.parent / "escape").exists()


def test_exec_and_start(busybox: str, root: Path, tmp_path: Path, imgfs: ImgfsRunner) -> None:
    script = (
        "if [ -e /tmp/f ]; then echo again; cat /tmp/f; exit 7; fi; "
        "echo hi > /tmp/f; echo up; sleep 30"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unionfs",
            "run",
            "--init",
            "--name",
            "long",
            "-e",
            "X=1",
            "busybox",
            "sh",
            "-c",
            script,
        ],
        env=dict(os.environ, IMGFS_ROOT=str(root)),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"up\n"
        r = imgfs("exec", "long", "sh", "-c", "cat /tmp/f; echo $X; grep PPid /proc/1/status")
        assert r.stdout.splitlines() == ["hi", "1", "PPid:\t0"], r  # PID 1 is the container's
        # Its PID namespace: the container's processes, the exec'd command among them.
        pids = imgfs("exec", "long", "sh", "-c", "echo $$; ls /proc | grep '^[0-9]'").stdout
        own, *listed = pids.split()
        assert "1" in listed and own in listed and len(listed) < 10
        options = ["-u", "nobody", "-w", "/tmp", "-e", "Y=2"]
        r = imgfs(
            "exec", *options, "long", "sh", "-c", "id -u; pwd; echo $X$Y; exit 5", check=False
        )
        assert (r.returncode, r.stdout.split()) == (5, ["65534", "/tmp", "12"]), r
        assert imgfs("exec", "long", "nosuch", check=False).returncode == 127
        assert_user_error(imgfs("start", "long", check=False), "already running")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        proc.stdout.close()
    assert imgfs_mounts(tmp_path) == []
    assert_user_error(imgfs("exec", "long", "true", check=False), "not running")
    # start runs the recorded command again, on the container's earlier changes.
    r = imgfs("start", "-a", "long", check=False)
    assert (r.returncode, r.stdout) == (7, "again\nhi\n"), r
    assert imgfs_mounts(tmp_path) == []
