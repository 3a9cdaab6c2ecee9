"""The mount server: mounts are served by a child of a pre-started server, which refuses
callers it cannot stand in for (another mount namespace), and goes away when idle.

Each test asks for a server of its own (a distinct IMGFS_MOUNT_SERVER_IDLE selects a
distinct server, see mountclient.address) and stops it at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_containers import is_mounted, mountpoint, pid_alive, require_fuse, wait_until  # noqa: F401
from test_mount_lifecycle import make_layers, overlay_cmd

from unionfs.fs import mountclient

from conftest import require_root

MakeMountpoint = Callable[..., Path]


def server_pid(env: dict[str, str]) -> int | None:
    """The pid listening on the server socket `env` selects (via /proc/net/unix)."""
    code = "from unionfs.fs import mountclient; print(mountclient.address()[1:].decode())"
    name = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    inode = None
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == "@" + name:
            inode = fields[6]
    if inode is None:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def ppid(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def fuse_daemon(mnt: Path) -> int:
    """The process holding /dev/fuse with `mnt` on its command line (as benchmarks find it)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if os.fsencode(mnt) not in argv:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in fds):
                return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no daemon serves {mnt}")


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """An environment that selects a server of this test's own; stopped afterwards."""
    idle = 300 + (abs(hash(request.node.nodeid)) % 100000) / 1000
    env = dict(os.environ, **{mountclient.IDLE_ENV: f"{idle:.3f}"})
    env.pop(mountclient.ENABLE_ENV, None)
    yield env
    pid = server_pid(env)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def overlay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*overlay_cmd(), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def layer_opts(tmp_path: Path) -> str:
    d = make_layers(tmp_path)
    return f"lowerdir={d['l1']}:{d['l2']},upperdir={d['upper']},workdir={d['work']}"


def unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    assert not is_mounted(mnt)


@contextmanager
def served(env: dict[str, str], opts: str, mnt: Path) -> Iterator[str]:
    """imgfs-overlay mounted at `mnt` (it must succeed); yields its stderr, then unmounts."""
    result = overlay(env, "-o", opts, str(mnt))
    assert result.returncode == 0, result.stderr
    try:
        yield result.stderr
    finally:
        unmount(mnt)


def test_mounts_are_served_by_children_of_one_server(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    require_fuse()
    opts = layer_opts(tmp_path)
    first, second = mountpoint("first"), mountpoint("second")
    with served(server_env, opts, first) as stderr:
        assert stderr == ""
        server = server_pid(server_env)
        assert server is not None
        daemon = fuse_daemon(first)
        assert ppid(daemon) == server  # a child of the server, not of the client
        assert (first / "b").read_text() == "top b\n"
        (first / "new").write_text("new\n")
        # It shows its client's command line, as a daemon forked by the client did.
        assert any(b"imgfs-overlay" in a for a in cmdline(daemon))
    wait_until(lambda: not pid_alive(daemon))
    assert (tmp_path / "upper" / "new").read_text() == "new\n"
    # The same server serves the next mount.
    with served(server_env, opts, second):
        assert server_pid(server_env) == server
        assert ppid(fuse_daemon(second)) == server
        assert (second / "new").read_text() == "new\n"
    assert pid_alive(server)


def test_disabled_server_forks_from_the_caller(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    require_fuse()
    mnt = mountpoint()
    env = dict(server_env, **{mountclient.ENABLE_ENV: "0"})
    with served(env, layer_opts(tmp_path), mnt):
        assert (mnt / "a").read_text() == "bottom a\n"
        assert server_pid(env) is None  # none was started
        assert ppid(fuse_daemon(mnt)) != os.getpid()


def test_another_mount_namespace_is_refused_and_mounts_by_itself(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    """The server, in our namespace, must not mount for a caller in another one (the mount
    would land in ours): that caller forks its daemon itself, and mounts in its own."""
    require_fuse()
    require_root()  # unshare -m
    opts = layer_opts(tmp_path)
    warm = mountpoint("warm")
    assert overlay(server_env, "-o", opts, str(warm)).returncode == 0
    unmount(warm)
    server = server_pid(server_env)
    assert server is not None
    mnt = mountpoint("inside")
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        from pathlib import Path
        from unionfs.fs import lifecycle
        from unionfs.fs.spec import MountSpec
        lower = [Path({str(tmp_path / "l1")!r}), Path({str(tmp_path / "l2")!r})]
        pid = lifecycle.mount(MountSpec(lower_dirs=lower, mountpoint=Path({str(mnt)!r})))
        stat = Path(f"/proc/{{pid}}/stat").read_bytes()
        parent = int(stat[stat.rfind(b")") + 2 :].split()[1])
        print(parent, Path({str(mnt)!r}, "b").read_text().strip())
        subprocess.run(["umount", {str(mnt)!r}], check=True)
        """
    )
    proc = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", script],
        env=server_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    parent, content = proc.stdout.strip().split(" ", 1)

    assert int(parent) != server  # not the server's child: it fell back
    assert content == "top b"
    assert not is_mounted(mnt)  # never in our namespace
    assert server_pid(server_env) == server  # and the server is unharmed


def test_server_exits_when_idle(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    require_fuse()
    env = dict(server_env, **{mountclient.IDLE_ENV: "1"})
    mnt = mountpoint()
    with served(env, layer_opts(tmp_path), mnt):
        daemon = fuse_daemon(mnt)
        server = ppid(daemon)
        wait_until(lambda: not pid_alive(server), timeout=20)
        # Its daemon outlives it: the mount still works.
        assert pid_alive(daemon) and (mnt / "a").read_text() == "bottom a\n"


def test_errors_are_the_same_one_line_errors(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    require_fuse()
    opts = layer_opts(tmp_path)
    mnt = mountpoint()
    for enable in ("1", "0"):
        env = dict(server_env, **{mountclient.ENABLE_ENV: enable})
        result = overlay(env, "-o", opts.replace("/l2", "/nope"), str(mnt))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"imgfs-overlay: lowerdir {tmp_path / 'nope'} does not exist"
        ]
    with served(server_env, opts, mnt):
        messages = []
        for enable in ("1", "0"):
            env = dict(server_env, **{mountclient.ENABLE_ENV: enable})
            result = overlay(env, "-o", opts, str(mnt))
            assert result.returncode == 1
            messages.append(result.stderr)
        assert messages[0] == messages[1]
        [line] = messages[0].strip().splitlines()
        assert line == f"imgfs-overlay: {mnt} is already an imgfs mount (imgfs-overlay)"


@pytest.mark.parametrize("pid_first", [True, False])
def test_interrupted_client_stops_its_daemon(pid_first: bool) -> None:
    """^C while the server's child sets up: the client sends it SIGTERM once its pid is
    known (reported already, or just after the ^C), so that it does not mount behind the
    caller's back. A stand-in daemon (sleep) and a socketpair for the connection."""
    stand_in = subprocess.Popen(["sleep", "60"])
    ours, theirs = socket.socketpair()
    report = f"pid {stand_in.pid}\n".encode()

    def interrupt(signum: int, frame: object) -> None:
        if not pid_first:
            theirs.sendall(report)  # the pid comes just after the ^C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            mountclient._await(ours, report if pid_first else b"", "/mnt", None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        ours.close()
        theirs.close()
    assert stand_in.wait(timeout=10) == -signal.SIGTERM


def test_sigterm_unmounts_a_served_mount(
    tmp_path: Path,
    mountpoint: MakeMountpoint,  # noqa: F811
    server_env: dict[str, str],
) -> None:
    require_fuse()
    mnt = mountpoint()
    assert overlay(server_env, "-o", layer_opts(tmp_path), str(mnt)).returncode == 0
    daemon = fuse_daemon(mnt)
    server = ppid(daemon)
    os.kill(daemon, signal.SIGTERM)
    wait_until(lambda: not pid_alive(daemon))
    assert not is_mounted(mnt)
    assert pid_alive(server)  # a child's death is no concern of the server's
