"""The mount server: a per-user process, with the daemon's modules already imported, that
forks a ready daemon for each mount request (from mountclient.py).

Python's start and the daemon's imports (pyfuse3, trio, the operations, the index) cost
a mount some 150 ms, many times what the kernel's overlayfs takes. The server pays them
once; a mount then costs the client's interpreter start, a fork, and the mount itself.

It listens on an abstract unix socket named after the user and the installation
(mountclient.address), and serves a request only from a process that could have forked
the same daemon itself: same uid, credentials, capabilities, limits, namespaces, cgroup
and root. Anything else is refused, and that client forks its daemon as before. Each
request gets a child that detaches (new session, every inherited fd on /dev/null) and
then runs exactly what `lifecycle._daemon_main` runs for a fork from the caller, taking
the caller's environment and command line (tools find a daemon by its command line),
and reporting over the connection. The server closes its end at once, holds no fd of a
client or of a mount, never runs trio (a forked child must start it fresh), reaps its
children by ignoring SIGCHLD, and exits after IDLE_TIMEOUT without a request, or when
its code changed on disk (it then asks the client to start a fresh one).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import marshal
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from unionfs.fs import mountclient

MAX_REQUEST = 16 << 20
REQUEST_TIMEOUT = 5.0
"""A client has this long to send its request: a stuck one must not block the server."""
_STATUS_FIELDS = (
    "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
    "NoNewPrivs:", "Seccomp:",
)  # fmt: skip
_NAMESPACES = ("mnt", "user", "pid", "net", "ipc", "uts", "cgroup")


PRELOAD = (
    "pyfuse3",
    "trio",
    "tempfile",  # daemon.open_index, for a read-only mount
    "unionfs.fs.control",
    "unionfs.fs.daemon",
    "unionfs.fs.fastpath",
    "unionfs.fs.lifecycle",
    "unionfs.fs.operations",
    "unionfs.index",
)


def preload() -> None:
    """Everything a daemon imports, once, so that a forked child starts serving at once."""
    for name in PRELOAD:
        importlib.import_module(name)
    from unionfs.fs import sessionhook

    sessionhook.preload()


# -- who may ask ----------------------------------------------------------------------


def _status(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        return [ln for ln in f.read().splitlines() if ln.startswith(_STATUS_FIELDS)]


def _same_file(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def peer_mismatch(conn: socket.socket) -> str | None:
    """Why a peer may not have its daemon forked here (None: it may). The daemon must be
    what the peer would have forked: same ids and capabilities, namespaces (a mount made
    in another mount namespace would land in ours), cgroup, root and limits."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    if uid != os.getuid():
        return "another user"
    if pid <= 0:
        return "a process outside our pid namespace"
    try:
        for ns in _NAMESPACES:
            if not _same_file(f"/proc/{pid}/ns/{ns}", f"/proc/self/ns/{ns}"):
                return f"another {ns} namespace"
        if not _same_file(f"/proc/{pid}/root", "/"):
            return "another root directory"
        if _status(pid) != _status("self"):
            return "other credentials"
        for what in ("cgroup", "limits"):
            if Path(f"/proc/{pid}/{what}").read_bytes() != Path(f"/proc/self/{what}").read_bytes():
                return f"another {what}"
    except OSError as e:
        return f"cannot inspect the peer: {e.strerror}"
    return None


# -- stale code -----------------------------------------------------------------------


def _our_modules() -> dict[str, float]:
    """mtimes of the loaded modules of this package, so that an edited or reinstalled
    installation is not served with the code of an older one."""
    base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(base):
            with contextlib.suppress(OSError):
                out[path] = os.stat(path).st_mtime
    return out


def _changed(known: dict[str, float]) -> bool:
    for path, mtime in known.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return True
        except OSError:
            return True
    return False


# -- a request ------------------------------------------------------------------------


def _read_request(conn: socket.socket) -> dict[str, Any]:
    chunks = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        chunks.append(chunk)
    request = marshal.loads(b"".join(chunks))
    if not isinstance(request, dict) or not isinstance(request.get("spec"), dict):
        raise ValueError("malformed request")
    return request


def _set_title(argv: list[str], comm: str) -> None:
    """Show the client's command line (and name) as this process's: tools and tests find
    a FUSE daemon by the mountpoint in its command line. Rewrites the argv area the
    kernel reports as /proc/self/cmdline (the server reserved TITLE_SPACE of it)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(comm[:15])
    try:
        fields = Path("/proc/self/stat").read_bytes().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5) 48, 49)
    except (OSError, IndexError, ValueError):
        return
    room = end - start - 1
    if room <= 0 or not argv:
        return
    args = [os.fsencode(a) for a in argv]
    data = b"\0".join(args)
    if len(data) > room and len(args) > 2:  # keep the program and the mountpoint (last)
        tail = b"\0...\0" + args[-1]
        data = b"\0".join(args[:-1])[: max(0, room - len(tail))] + tail
    data = data[:room].ljust(room + 1, b"\0")
    ctypes.memmove(start, data, len(data))


def _child(listener: socket.socket, conn: socket.socket, request: dict[str, Any]) -> None:
    """The forked child: become the caller's daemon. Never returns."""
    try:
        from unionfs.fs import lifecycle

        listener.close()
        fd = conn.detach()  # the report channel; _daemon_main moves it out of the way
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        env = request.get("env")
        if isinstance(env, dict):
            os.environ.clear()
            os.environ.update({str(k): str(v) for k, v in env.items()})
        _set_title(list(request.get("argv") or []), str(request.get("comm") or ""))
        lifecycle.serve_request(request, fd)  # never returns
    finally:
        os._exit(1)


def _handle(listener: socket.socket, conn: socket.socket, known: dict[str, float]) -> bool:
    """Serve one connection; False if the server must exit (its code changed)."""
    from unionfs.fs.spec import spec_from_dict

    conn.settimeout(REQUEST_TIMEOUT)
    reason = peer_mismatch(conn)
    if reason is not None:
        conn.sendall(f"refused {reason}\n".encode())
        return True
    if _changed(known):
        listener.close()  # the name is free at once for the fresh server
        conn.sendall(f"{mountclient.RETRY}\n".encode())
        return False
    try:
        request = _read_request(conn)
        spec_from_dict(request["spec"])  # refuse a malformed one here, not in the child
    except (ValueError, EOFError, TypeError, KeyError) as e:
        conn.sendall(f"refused {e}\n".encode())
        return True
    conn.sendall(f"{mountclient.ACCEPTED}\n".encode())
    conn.settimeout(None)
    if os.fork() == 0:
        _child(listener, conn, request)
    return True


def serve(listener: socket.socket, idle: float) -> None:
    known = _our_modules()
    listener.settimeout(idle)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return
        except InterruptedError:
            continue
        try:
            if not _handle(listener, conn, known):
                return
        except OSError:
            pass  # that client went away; the next one may not
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    """`python -m unionfs.fs.mountserver READY_FD [TITLE_SPACE]`, as mountclient starts it."""
    ready = int(argv[0]) if argv else -1
    os.chdir("/")
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    try:
        idle = float(os.environ.get(mountclient.IDLE_ENV) or mountclient.IDLE_TIMEOUT)
    except ValueError:
        idle = mountclient.IDLE_TIMEOUT
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(mountclient.address())
    except OSError:  # another server was quicker: the client uses that one
        listener.close()
        _notify(ready)
        return 0
    listener.listen(128)
    _notify(ready)  # clients queue on the socket while the imports run
    preload()
    gc.freeze()  # children's collections skip what is here: fewer copy-on-write faults
    serve(listener, idle)
    return 0


def _notify(fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
    with contextlib.suppress(OSError):
        os.close(fd)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
