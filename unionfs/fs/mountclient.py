"""The client side of the mount server (mountserver.py): hand a mount to a server that
forks a daemon with every module already imported, starting the server if there is none.

`imgfs-overlay` imports this module and little else before it mounts, so it imports
almost nothing itself: every module loaded here is paid at every mount, and the point of
the server is that a mount costs little more than starting the interpreter. Hence
`_socket` rather than `socket`, and `marshal` (built in) rather than `json`.

`mount` returns None whenever no server took the request (disabled, none could be
started, or it refused this process: another mount namespace, other credentials...); the
caller then mounts by itself, as it did before the server existed.
"""

from __future__ import annotations

import _socket  # the C module: `socket` costs ~2 ms more (selectors, enum classes)
import contextlib
import marshal  # built in, free: `json` costs ~1.5 ms; both sides run one interpreter
import os
import stat
import sys

import unionfs
from unionfs import errors

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs ~2.5 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ENABLE_ENV = "IMGFS_MOUNT_SERVER"
"""`0` disables the server: every mount forks its daemon from the caller (tests, diagnosis)."""
IDLE_ENV = "IMGFS_MOUNT_SERVER_IDLE"
"""Seconds without a request after which the server exits (default IDLE_TIMEOUT)."""
IDLE_TIMEOUT = 600.0
START_TIMEOUT = 5.0
"""How long a client waits for a server it started to listen."""
ACCEPT_TIMEOUT = 10.0
"""How long a client waits for a server to take its request (it may still be importing)."""
TITLE_SPACE = 64 * 1024
"""Bytes of argv the server reserves, so that each daemon shows its client's command line."""
RETRY, ACCEPTED = "retry", "accepted"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0"


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _read_small(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def address() -> bytes:
    """The server's abstract socket name: one server per user and installation (venv,
    package, version, interpreter) and per user namespace and cgroup, so that a daemon
    lives where its caller would have put it. Settings read at import or start time
    (IMGFS_NO_NATIVE, the idle timeout) select a server of their own too."""
    try:
        userns = os.stat("/proc/self/ns/user").st_ino
    except OSError:
        userns = 0
    parts = [
        sys.prefix,
        sys.version,
        os.path.dirname(unionfs.__file__ or ""),
        unionfs.__version__,
        os.environ.get("IMGFS_NO_NATIVE", ""),
        os.environ.get(IDLE_ENV, ""),
        str(userns),
    ]
    key = "\0".join(parts).encode("utf-8", "surrogateescape") + _read_small("/proc/self/cgroup")
    return b"\0imgfs-mount-%d-%016x" % (os.getuid(), _fnv1a64(key))


# -- paths ----------------------------------------------------------------------------


def normalize(path: str) -> str:
    """An absolute, symlink-free path, without touching the last component: a stale FUSE
    mountpoint can't be stat'ed, and the kernel lists mountpoints by their real path."""
    p = os.path.abspath(path)
    parent, name = os.path.split(p)
    if not name:
        return p
    return os.path.join(os.path.realpath(parent), name)


def absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec (spec.spec_to_dict) with absolute paths: the daemon runs in /."""
    out = dict(spec)
    out["lower_dirs"] = [os.path.abspath(d) for d in spec["lower_dirs"]]
    out["mountpoint"] = normalize(spec["mountpoint"])
    for key in ("upper_dir", "work_dir", "index_path"):
        if spec.get(key) is not None:
            out[key] = os.path.abspath(spec[key])
    return out


def require_dir(
    path: os.PathLike[str] | str, what: str, error: type[errors.ImgfsError] = errors.ImgfsError
) -> None:
    """Refuse, in one clear line, a path that is not an existing directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a directory")


# -- the daemon's report --------------------------------------------------------------


def read_report(
    read: Callable[[], bytes], buf: bytes, seen: dict[str, Any]
) -> tuple[int | None, str | None, str]:
    """Lines from a daemon: `pid N`, then `ok` or (`class NAME` and) `error MESSAGE`;
    (pid, None, "") at EOF, if it died first. `seen` gets the pid (and the error's class)
    as they arrive, for a caller interrupted meanwhile."""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if text.startswith("pid "):
                seen["pid"] = int(text[4:])
            elif text.startswith("class "):
                seen["class"] = text[6:]
            elif text == "ok":
                return seen.get("pid"), "ok", ""
            elif text.startswith("error "):
                return seen.get("pid"), "error", text[6:]
        try:
            chunk = read()
        except InterruptedError:
            continue
        if not chunk:
            return seen.get("pid"), None, ""
        buf += chunk


def error_for(seen: dict[str, Any], message: str) -> errors.ImgfsError:
    """The daemon's error as the class it raised (Conflict, NotFound...), if it is one."""
    cls = getattr(errors, str(seen.get("class", "")), None)
    if isinstance(cls, type) and issubclass(cls, errors.ImgfsError):
        return cls(message)
    return errors.ImgfsError(message)


# -- the client -----------------------------------------------------------------------


def mount(
    spec: dict[str, Any],
    *,
    state_file: str | None = None,
    what: str | None = None,
    extra: dict[str, Any] | None = None,
    log_path: str | None = None,
) -> int | None:
    """Mount `spec` (absolute, see `absolute`) through the server: the daemon's pid once
    the mount is ready, None if no server took the request (the caller mounts by itself).
    Raises the daemon's error, as the fork-from-the-caller path does."""
    if not enabled():
        return None
    request = {
        "spec": spec,
        "state_file": state_file,
        "what": what,
        "extra": dict(extra or {}),
        "log_path": log_path,
        "env": dict(os.environ),
        "argv": list(sys.orig_argv),
        "comm": _read_small("/proc/self/comm").strip().decode("utf-8", "replace"),
    }
    try:
        data = marshal.dumps(request)
    except ValueError:  # something marshal can't carry in `extra`: do without the server
        return None
    addr = address()
    sock = rest = None
    for _ in range(2):  # a server that found its code changed asks for a fresh one
        sock = _connect(addr)
        if sock is None and _start_server():
            sock = _connect(addr)
        if sock is None:
            return None
        answer, rest = _offer(sock, data)
        if answer == ACCEPTED:
            break
        sock.close()
        sock = None
        if answer != RETRY:
            return None
    if sock is None or rest is None:
        return None
    try:
        return _await(sock, rest, spec["mountpoint"], log_path)
    finally:
        sock.close()


def _connect(addr: bytes) -> _socket.socket | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(addr)
    except OSError:
        sock.close()
        return None
    return sock


def _offer(sock: _socket.socket, data: bytes) -> tuple[str, bytes]:
    """Send the request; the server's first line (`accepted`, `retry`, `refused WHY`) and
    whatever followed it. ("", b"") if the server went away or never answered."""
    buf = b""
    try:
        sock.settimeout(ACCEPT_TIMEOUT)
        sock.sendall(data)
        sock.shutdown(_socket.SHUT_WR)
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                return "", b""
            buf += chunk
    except OSError:  # includes the timeout
        return "", b""
    line, rest = buf.split(b"\n", 1)
    return line.decode("utf-8", "replace"), rest


def _await(sock: _socket.socket, rest: bytes, mountpoint: str, log_path: str | None) -> int:
    """The daemon's report, as `lifecycle._spawn` waits for it."""
    seen: dict[str, Any] = {}
    sock.settimeout(None)
    try:
        pid, status, message = read_report(lambda: sock.recv(4096), rest, seen)
    except KeyboardInterrupt:
        # Interrupted while the daemon sets up: it must not go on to mount behind our back.
        if "pid" not in seen:  # it reports its pid first thing: give it a moment
            try:
                sock.settimeout(1.0)
                read_report(lambda: sock.recv(4096), b"", seen)
            except (OSError, KeyboardInterrupt):
                pass
        if "pid" in seen:
            import signal  # not at the top: its enum classes cost ~0.8 ms at every mount

            with contextlib.suppress(ProcessLookupError):
                os.kill(seen["pid"], signal.SIGTERM)
        raise
    if status == "ok" and pid is not None:
        return pid
    if status == "error":
        raise error_for(seen, message)
    hint = f" (see {log_path})" if log_path is not None else ""
    raise errors.ImgfsError(f"the mount daemon for {mountpoint} exited before it was ready{hint}")


def _start_server() -> bool:
    """Start a server in its own session, stdio on /dev/null, no fd of ours but the pipe
    it says `ready` on once it listens (or once it found another server listening)."""
    r, w = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # intermediate child: the server must not be our child
            code = 127
            try:
                os.setsid()
                if os.fork() == 0:
                    null = os.open(os.devnull, os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(null, fd)
                    os.dup2(w, 3)
                    os.set_inheritable(3, True)
                    os.closerange(4, 1 << 20)
                    exe = sys.executable
                    title = " " * TITLE_SPACE
                    os.execv(exe, [exe, "-m", "unionfs.fs.mountserver", "3", title])
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        w = -1
        os.waitpid(child, 0)
        import select  # only when starting a server

        ready, _, _ = select.select([r], [], [], START_TIMEOUT)
        return bool(ready) and os.read(r, 64).startswith(b"ready")
    except OSError:
        return False
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
