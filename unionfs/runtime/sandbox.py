"""The child side of `imgfs run`: namespaces, mounts, chroot, and a tiny init as PID 1.

launch() forks stage 1, which unshares the mount, PID, UTS and IPC namespaces (and the
network namespace for `--network none`), makes every mount private and forks stage 2,
PID 1 of the new PID namespace. Stage 2 mounts /proc, a minimal /dev, a read-only /sys and
the generated /etc/hosts and /etc/resolv.conf on the rootfs (in its own mount namespace
only, so nothing reaches the container's upper dir or the host), sets the hostname,
chroots, then forks the command and stays as init: it forwards signals to the command,
reaps orphans, and exits with the command's status (128+N for death by signal N).
Signals to `imgfs run` go to stage 1, which passes them on to stage 2.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from unionfs.runtime import terminal
from unionfs.runtime.process import Credentials, ProcessSpec, RunError, resolve_user

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
"""Signals passed on to the command (SIGKILL and SIGSTOP cannot be caught)."""

DEVICES = {  # name: (major, minor)
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
    "core": "/proc/kcore",
}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    result = _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))
    if result != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype or source} on {target}: {os.strerror(e)}")


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _forward_to(pid: int) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    return handler


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _fail(message: str, code: int = 125) -> None:
    with contextlib.suppress(Exception):
        os.write(2, f"imgfs: {message}\n".encode(errors="replace"))
    os._exit(code)


# -- parent side ----------------------------------------------------------------------


def launch(
    rootfs: Path,
    spec: ProcessSpec,
    files: dict[str, Path],
    on_started: Callable[[int], None],
    state_file: Path | None = None,
) -> int:
    """Run `spec` in new namespaces chrooted into `rootfs`; returns its exit code.
    `files` maps paths inside the container (/etc/hosts) to files to bind-mount there.
    `on_started(pid)` gets stage 1's pid (to forward signals to) before waiting.
    `state_file` gets {"pid": PID 1's host pid, "stage1": ...} while it runs (for exec).
    With `spec.tty`, stage 2 opens a pty in the container's devpts and passes the master
    here over a socket; this side relays the user's stdin/stdout to it."""
    _flush()
    ours = theirs = None
    if spec.tty:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        pid = os.fork()
        if pid == 0:
            if ours is not None:
                ours.close()
            _stage1(rootfs, spec, files, old_mask, state_file, theirs)  # never returns
        on_started(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if ours is not None and theirs is not None:
        theirs.close()
        try:
            _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        except OSError:
            fds = []
        finally:
            ours.close()
        if fds:
            try:
                terminal.relay(fds[0], interactive=spec.keep_stdin)
            finally:
                os.close(fds[0])
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return exit_code(status)
        except ChildProcessError:
            return 125


def _stage1(
    rootfs: Path,
    spec: ProcessSpec,
    files: dict[str, Path],
    mask: set[int],
    state_file: Path | None,
    pty_sock: socket.socket | None,
) -> None:
    try:
        for s in FORWARDED:
            signal.signal(s, signal.SIG_DFL)
        _die_with_parent()
        flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
        if spec.network == "none":
            flags |= CLONE_NEWNET
        unshare(flags)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        child = os.fork()
        if child == 0:
            _stage2(rootfs, spec, files, mask, pty_sock)  # never returns
        if pty_sock is not None:
            pty_sock.close()
        if state_file is not None:
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(json.dumps({"pid": child, "stage1": os.getpid()}))
            os.replace(tmp, state_file)
        forward = _forward_to(child)

        def stop(signum: int, frame: object) -> None:
            # As `docker stop`: the signal first, SIGKILL after the grace period (a
            # command that is PID 1 ignores signals it has no handler for).
            forward(signum, frame)
            if signal.getitimer(signal.ITIMER_REAL)[0] == 0:
                signal.setitimer(signal.ITIMER_REAL, max(spec.stop_timeout, 0.001))

        for s in FORWARDED:
            signal.signal(s, stop if s in STOP_SIGNALS else forward)
        signal.signal(signal.SIGALRM, lambda *_: forward(signal.SIGKILL, None))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while True:
            _, status = os.waitpid(child, 0)
            os._exit(exit_code(status))
    except BaseException as e:
        _fail(f"cannot start the container: {_describe(e)}")
    os._exit(125)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f": {e.filename}" if e.filename else "")
    return str(e) or type(e).__name__


# -- PID 1 ----------------------------------------------------------------------------


def _target(rootfs: Path, rel: str) -> str:
    """`rootfs/rel`, refusing symlinks on the way: a mount must not land outside."""
    path = rootfs
    for part in Path(rel.lstrip("/")).parts:
        path = path / part
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise RunError(f"/{rel.lstrip('/')} is a symlink in the image; cannot mount on it")
    return str(path)


def _mkdir(path: str, mode: int = 0o755) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)


def setup_rootfs(
    rootfs: Path, files: dict[str, Path], volumes: list[tuple[str, str, bool]] | None = None
) -> None:
    """Mounts on the rootfs, in this (private) mount namespace."""
    proc = _target(rootfs, "proc")
    _mkdir(proc, 0o555)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    dev = _target(rootfs, "dev")
    _mkdir(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        node = f"{dev}/{name}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)
    for name, link in DEV_LINKS.items():
        os.symlink(link, f"{dev}/{name}")
    os.mkdir(f"{dev}/pts", 0o755)
    mount(
        "devpts",
        f"{dev}/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    os.mkdir(f"{dev}/shm", 0o1777)
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    os.chmod(f"{dev}/shm", 0o1777)
    os.mkdir(f"{dev}/mqueue", 0o755)

    sys_dir = _target(rootfs, "sys")
    _mkdir(sys_dir, 0o555)
    try:
        mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        mount("/sys", sys_dir, None, MS_BIND | MS_REC)
        mount(None, sys_dir, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)

    for inside, source in files.items():
        target = _target(rootfs, inside)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        mount(str(source), target, None, MS_BIND)

    for host, inside, read_only in volumes or []:
        mount_volume(rootfs, host, inside, read_only)


def mount_volume(rootfs: Path, host: str, inside: str, read_only: bool) -> None:
    """Bind `host` on `inside`, creating the mountpoint (a dir, or an empty file for a
    file) in the rootfs if missing; symlinks on the way are refused by _target."""
    target = _target(rootfs, inside)
    is_dir = os.path.isdir(host)
    if not os.path.lexists(target):
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        _target(rootfs, inside)  # the dirs just made: still no symlinks
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
    mount(host, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def open_pty(rootfs: Path) -> tuple[int, int]:
    """(master, slave) of a new pty of the container's devpts (so `tty` names its
    /dev/pts/N); the slave is also bind-mounted on /dev/console, as runc does."""
    dev = _target(rootfs, "dev")
    master = os.open(f"{dev}/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    (number,) = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))
    slave_path = f"{dev}/pts/{number}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    console = f"{dev}/console"
    os.close(os.open(console, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    mount(slave_path, console, None, MS_BIND)
    return master, slave


def _stage2(
    rootfs: Path,
    spec: ProcessSpec,
    files: dict[str, Path],
    mask: set[int],
    pty_sock: socket.socket | None,
) -> None:
    tty_fd: int | None = None
    try:
        _die_with_parent()
        setup_rootfs(rootfs, files, spec.volumes)
        if pty_sock is not None:
            master, tty_fd = open_pty(rootfs)
            socket.send_fds(pty_sock, [b"m"], [master])
            os.close(master)
            pty_sock.close()
        socket.sethostname(spec.hostname)
        if spec.network == "none":
            _loopback_up()
        os.chroot(rootfs)
        os.chdir("/")
        creds = resolve_user(spec.user)
        env = dict(spec.env)
        env.setdefault("HOME", creds.home or "/")
        cwd = spec.cwd or "/"
        if not os.path.isdir(cwd):
            os.makedirs(cwd, 0o755, exist_ok=True)
    except RunError as e:
        _fail(str(e))
    except BaseException as e:
        _fail(f"cannot set up the container: {_describe(e)}")
    if not spec.init:
        _exec(spec, env, cwd, creds, mask, tty_fd)  # the command becomes PID 1; never returns
    try:
        child = os.fork()
        if child == 0:
            _exec(spec, env, cwd, creds, mask, tty_fd)  # never returns
        if tty_fd is not None:
            os.close(tty_fd)
        for s in FORWARDED:
            signal.signal(s, _forward_to(child))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while True:  # init: reap everything, leave with the command's status
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(125)
            if pid == child:
                os._exit(exit_code(status))
    except BaseException as e:
        _fail(f"container init failed: {_describe(e)}")
    os._exit(125)


def _loopback_up() -> None:
    """`lo` up in a new network namespace (best effort: busybox or ip may be missing)."""
    import fcntl
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def _exec(
    spec: ProcessSpec,
    env: dict[str, str],
    cwd: str,
    creds: Credentials,
    mask: set[int],
    tty_fd: int | None = None,
) -> None:
    try:
        for s in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_DFL)
        if tty_fd is not None:
            # Its own session with the pty as controlling terminal and stdio.
            os.setsid()
            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(tty_fd, fd)
        elif not spec.keep_stdin:
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        os.setgroups(creds.groups)
        os.setgid(creds.gid)
        os.setuid(creds.uid)
        try:
            os.chdir(cwd)
        except OSError as e:
            _fail(f"chdir to cwd ({cwd!r}) set in config failed: {e.strerror}", 126)
        os.closerange(3, 1 << 16)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    except BaseException as e:
        _fail(f"cannot start the command: {_describe(e)}")
    name = spec.args[0]
    candidates = (
        [name]
        if "/" in name
        else [os.path.join(d or ".", name) for d in env.get("PATH", "").split(":")]
    )
    denied: OSError | None = None
    last: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, spec.args, env)
        except OSError as e:
            last = e
            if e.errno in (errno.EACCES, errno.EPERM, errno.EISDIR) and denied is None:
                denied = e
    if denied is not None:
        _fail(f'exec: "{name}": permission denied', 126)
    if "/" in name:
        if last is not None and last.errno == errno.ENOENT:
            _fail(f'exec: "{name}": stat {name}: no such file or directory', 127)
        reason = last.strerror if last is not None else "failed"
        _fail(f'exec: "{name}": {reason}', 126)
    _fail(f'exec: "{name}": executable file not found in $PATH', 127)
