"""Mount lifecycle: start a daemon (detached or in the foreground), unmount, detect stale mounts.

A detached mount is served by a daemon in its own session (stdio on /dev/null or a log
file) that runs `daemon.serve` and reports one line: `ok` once the mount is up, or the
error that stopped it. The caller returns only then, so a mount that `mount()` returned
is usable at once, and a mount that failed fails with the daemon's reason. The daemon is
forked by the mount server (mountserver.py: its imports are done already, so a mount
is quick) and reports over the socket; where no server may serve the caller, the caller
double-forks it and it reports over a pipe.

A state file (JSON: pid, the pid's start time, mountpoint, fsname, started) records who
serves a mount; the daemon writes it before it reports ready and removes it when it exits.
A state file whose daemon is gone while the kernel still lists the mount means a stale
mount (the daemon was killed): every access gives ENOTCONN until it is lazily unmounted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from unionfs.errors import Conflict, ImgfsError
from unionfs.fs import mountclient
from unionfs.fs.mountclient import require_dir
from unionfs.fs.spec import MountSpec, spec_from_dict, spec_to_dict
from unionfs.store.atomic import write_atomic

log = logging.getLogger(__name__)

FUSE_TYPE = "fuse.imgfs"
"""The fstype the kernel lists for our mounts (`subtype=imgfs`)."""
UMOUNT_TIMEOUT = 10.0
"""How long `umount` waits for the daemon to exit after the kernel let go of the mount."""


_OCTAL = re.compile(r"\\([0-7]{3})")


class MountState(StrEnum):
    MOUNTED = "mounted"
    STALE = "stale"
    UNMOUNTED = "unmounted"


# -- /proc/self/mountinfo ---------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (proc(5))."""

    mount_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str

    @property
    def is_imgfs(self) -> bool:
        if self.fstype == FUSE_TYPE:
            return True
        # Kernels without FUSE subtypes: fusermount records "imgfs#<fsname>" as the source.
        return self.fstype.startswith("fuse") and self.source.startswith("imgfs")


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_)


def mounts() -> list[MountEntry]:
    """The mounts of this mount namespace, in mount order (a later entry covers earlier ones)."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
                entries.append(
                    MountEntry(
                        mount_id=int(fields[0]),
                        mountpoint=_unescape(fields[4]),
                        fstype=fields[sep + 1],
                        source=_unescape(fields[sep + 2]),
                        options=fields[5],
                    )
                )
            except (ValueError, IndexError):
                continue
    return entries


def mount_at(path: str | Path) -> MountEntry | None:
    """The topmost mount whose mountpoint is exactly `path` (already normalized)."""
    found = None
    for entry in mounts():
        if entry.mountpoint == str(path):
            found = entry
    return found


def normalize(path: str | Path) -> Path:
    """An absolute, symlink-free path, without touching the last component: a stale FUSE
    mountpoint can't be stat'ed, and the kernel lists mountpoints by their real path."""
    return Path(mountclient.normalize(os.fspath(path)))


def is_stale_path(path: str | Path) -> bool:
    """True if `path` is a FUSE mount whose daemon is gone (stat gives ENOTCONN)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


# -- processes ------------------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None if it is gone or
    a zombie. With the pid it identifies a process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields after it follow the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


# -- state files ----------------------------------------------------------------------


@dataclass
class MountRecord:
    pid: int
    mountpoint: str
    started: str
    pid_start: int | None = None
    fsname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> MountRecord | None:
        try:
            doc = json.loads(path.read_bytes())
            return cls(
                pid=int(doc["pid"]),
                mountpoint=str(doc["mountpoint"]),
                started=str(doc.get("started", "")),
                pid_start=doc.get("pid_start"),
                fsname=doc.get("fsname"),
                extra=dict(doc.get("extra") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=2).encode() + b"\n")

    def daemon_alive(self) -> bool:
        start = process_start(self.pid)
        return start is not None and (self.pid_start is None or start == self.pid_start)

    def entry(self) -> MountEntry | None:
        """The kernel's entry for this record's mount, if it is still there."""
        entry = mount_at(self.mountpoint)
        if entry is None or not entry.is_imgfs:
            return None
        if self.fsname is not None and entry.source not in (self.fsname, f"imgfs#{self.fsname}"):
            return None
        return entry

    def state(self) -> MountState:
        if self.entry() is None:
            return MountState.UNMOUNTED
        return MountState.MOUNTED if self.daemon_alive() else MountState.STALE


def mount_state(
    mountpoint: str | Path | None = None, *, state_file: Path | None = None
) -> MountState:
    """Whether a mount (known by its state file, or by its mountpoint) is served, stale
    (listed by the kernel but its daemon is dead) or not mounted."""
    record = MountRecord.load(state_file) if state_file is not None else None
    if record is not None:
        return record.state()
    if mountpoint is None:
        return MountState.UNMOUNTED
    path = normalize(mountpoint)
    entry = mount_at(path)
    if entry is None or not entry.is_imgfs:
        return MountState.UNMOUNTED
    return MountState.STALE if is_stale_path(path) else MountState.MOUNTED


def _remove_state(state_file: Path | None, pid: int | None = None) -> None:
    """Remove a state file (only if it still names `pid`, when given)."""
    if state_file is None:
        return
    if pid is not None:
        record = MountRecord.load(state_file)
        if record is not None and record.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()


def clear_state(state_file: Path) -> MountState:
    """Make a state file true again: a stale mount is lazily unmounted, a leftover record
    (daemon and mount both gone) removed. Returns the state found."""
    record = MountRecord.load(state_file)
    if record is None:
        _remove_state(state_file)
        return MountState.UNMOUNTED
    state = record.state()
    if state is MountState.STALE:
        _lazy_unmount(Path(record.mountpoint))
        _remove_state(state_file, record.pid)
    elif state is MountState.UNMOUNTED and not record.daemon_alive():
        _remove_state(state_file, record.pid)
    return state


# -- mount ----------------------------------------------------------------------------


def _absolute(spec: MountSpec) -> MountSpec:
    """The daemon runs in / : every path it is given must be absolute."""
    return spec_from_dict(mountclient.absolute(spec_to_dict(spec)))


def check_mountpoint(path: Path) -> None:
    """A clear error before forking, for the usual mistakes."""
    entry = mount_at(path)
    if entry is not None and entry.is_imgfs:
        if is_stale_path(path):
            raise ImgfsError(
                f"{path} holds a stale imgfs mount (its daemon is gone); "
                f"clean it up with: imgfs umount {path}"
            )
        raise Conflict(f"{path} is already an imgfs mount ({entry.source})")
    require_dir(path, "mountpoint")


def mount(
    spec: MountSpec,
    *,
    foreground: bool = False,
    state_file: Path | None = None,
    what: str | None = None,
    extra: dict[str, Any] | None = None,
    on_ready: Callable[[], None] | None = None,
    server: bool = True,
) -> int:
    """Mount `spec`; returns the daemon's pid once the mount is ready (detached), or after
    it was unmounted (foreground). `state_file` records the daemon while it runs; a live
    one refuses a second mount ("<what> is already mounted at ..."), a stale one is
    cleaned up first. `on_ready` runs in the calling process once the mount is up.
    A detached mount goes through the mount server, unless `server` is False or the
    server does not take it (mountclient.mount)."""
    spec = _absolute(spec)
    record_extra = dict(extra or {})
    pid = None
    if not foreground and server:
        pid = mountclient.mount(
            spec_to_dict(spec),
            state_file=None if state_file is None else str(state_file),
            what=what,
            extra=record_extra,
            log_path=_opt_str(_log_path(spec, state_file)),
        )
    if pid is None:
        check_can_mount(spec, state_file, what)
        if foreground:
            return _serve_foreground(spec, state_file, record_extra, on_ready)
        pid = _spawn(spec, state_file, record_extra)
    if on_ready is not None:
        on_ready()
    return pid


def check_can_mount(spec: MountSpec, state_file: Path | None, what: str | None) -> None:
    """Refuse a second mount of what `state_file` records, clean up a stale one, and check
    the mountpoint: in the caller, or in the daemon the mount server forked for it."""
    if state_file is not None:
        record = MountRecord.load(state_file)
        if record is not None and record.state() is MountState.MOUNTED:
            raise Conflict(f"{what or 'this mount'} is already mounted at {record.mountpoint}")
        clear_state(state_file)
    check_mountpoint(spec.mountpoint)


def _log_path(spec: MountSpec, state_file: Path | None) -> Path | None:
    """A debug mount's daemon logs next to its state file."""
    return state_file.with_suffix(".log") if (state_file is not None and spec.debug) else None


def _opt_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _new_record(spec: MountSpec, extra: dict[str, Any]) -> MountRecord:
    pid = os.getpid()
    return MountRecord(
        pid=pid,
        mountpoint=str(spec.mountpoint),
        started=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        pid_start=process_start(pid),
        fsname=spec.fsname,
        extra=extra,
    )


class _Stop(KeyboardInterrupt):
    """SIGTERM/SIGHUP before the daemon's own handlers are installed (or after they are
    gone): unwinds through serve's cleanup, which unmounts. KeyboardInterrupt, so that
    trio delivers it properly if it lands inside trio."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _install_stop_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)


def _serve_foreground(
    spec: MountSpec,
    state_file: Path | None,
    extra: dict[str, Any],
    on_ready: Callable[[], None] | None,
) -> int:
    from unionfs.fs import daemon

    if spec.debug and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s")
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    _install_stop_handlers()
    old_umask = os.umask(0)  # the caller's umask: applied per request (_create_mode)
    pid = os.getpid()

    def ready() -> None:
        if state_file is not None:
            _new_record(spec, extra).save(state_file)
        if on_ready is not None:
            on_ready()

    try:
        daemon.serve(spec, ready)
    except _Stop:
        pass  # stopped by a signal before (or after) serving: serve cleaned up already
    finally:
        _remove_state(state_file, pid)
        os.umask(old_umask)
        for s, h in previous.items():
            signal.signal(s, h)
    return pid


def _spawn(spec: MountSpec, state_file: Path | None, extra: dict[str, Any]) -> int:
    """Double fork; the grandchild serves. Returns its pid once it reported `ok`."""
    log_path = _log_path(spec, state_file)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate child: new session, fork the daemon, exit at once
        code = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _daemon_main(spec, w, state_file, extra, log_path)  # never returns
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    seen: dict[str, Any] = {}
    try:
        os.waitpid(child, 0)
        pid, status, message = mountclient.read_report(lambda: os.read(r, 4096), b"", seen)
    except KeyboardInterrupt:
        # Interrupted while the daemon sets up: it must not go on to mount behind our back.
        if "pid" in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(seen["pid"], signal.SIGTERM)
        raise
    finally:
        os.close(r)
    if status == "ok" and pid is not None:
        return pid
    if status == "error":
        raise mountclient.error_for(seen, message)
    hint = f" (see {log_path})" if log_path is not None else ""
    raise ImgfsError(f"the mount daemon for {spec.mountpoint} exited before it was ready{hint}")


def _detach_fds(keep: set[int], log_path: Path | None) -> int | None:
    """stdio to /dev/null (or the log); every other inherited fd becomes /dev/null too.

    Inherited fds are overwritten rather than closed: Python objects of the parent that
    own them may still close them later, and must not close a fd the daemon opened."""
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = None
    if log_path is not None:
        with contextlib.suppress(OSError):
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log_fd if log_fd is not None else devnull, 1)
    os.dup2(log_fd if log_fd is not None else devnull, 2)
    skip = keep | {devnull} | ({log_fd} if log_fd is not None else set())
    try:
        inherited = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        inherited = []
    for fd in inherited:
        if fd > 2 and fd not in skip:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    return log_fd


def _report(w: int, line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(w, (line.replace("\n", " ").strip() + "\n").encode())


def _daemon_main(
    spec: MountSpec,
    w: int,
    state_file: Path | None,
    extra: dict[str, Any],
    log_path: Path | None,
    what: str | None = None,
    check: bool = False,
) -> None:
    """The daemon (the caller's grandchild, or the mount server's child): serve until
    unmounted, then exit without returning. With `check`, first what `mount` checks in
    the caller (check_can_mount): the server's child does it for its client."""
    code = 1
    ready = False
    pid = os.getpid()
    try:
        w = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 3)  # out of the way of stdio
        os.chdir("/")
        os.umask(0)  # the caller's umask: applied per request (_create_mode)
        _install_stop_handlers()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _detach_fds({w}, log_path)
        logging.root.handlers.clear()
        logging.basicConfig(
            level=logging.DEBUG if spec.debug else logging.WARNING,
            stream=sys.stderr,
            format="%(asctime)s imgfs[%(process)d] %(name)s: %(message)s",
        )
        _report(w, f"pid {pid}")
        from unionfs.fs import daemon

        if check:
            check_can_mount(spec, state_file, what)

        def on_ready() -> None:
            nonlocal ready
            if state_file is not None:
                _new_record(spec, extra).save(state_file)
            _report(w, "ok")
            os.close(w)
            ready = True

        daemon.serve(spec, on_ready)
        code = 0
    except _Stop:
        code = 0
    except ImgfsError as e:
        if not ready:
            if type(e).__module__ == ImgfsError.__module__ and type(e) is not ImgfsError:
                _report(w, f"class {type(e).__name__}")  # Conflict, NotFound...
            _report(w, f"error {e}")
        log.error("%s", e)
    except BaseException as e:
        if not ready:
            _report(w, f"error {_describe(e)}")
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            _remove_state(state_file, pid)
        with contextlib.suppress(BaseException):
            logging.shutdown()
        os._exit(code)


def serve_request(request: dict[str, Any], w: int) -> None:
    """A mount server's child: check and serve a client's request (mountclient.mount),
    reporting over the connection `w`. Never returns."""
    try:
        spec = spec_from_dict(request["spec"])
        state_file = None if request.get("state_file") is None else Path(request["state_file"])
        log_path = None if request.get("log_path") is None else Path(request["log_path"])
        what = None if request.get("what") is None else str(request["what"])
        extra = dict(request.get("extra") or {})
    except (ValueError, TypeError, KeyError) as e:
        _report(w, f"error malformed mount request: {e}")
        os._exit(1)
    _daemon_main(spec, w, state_file, extra, log_path, what, check=True)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        return f"cannot mount: {e.strerror}{where}"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"internal error in the mount daemon: {type(e).__name__}: {e}"


# -- umount ---------------------------------------------------------------------------


def _run_unmount(path: Path, lazy: bool) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0 or shutil.which("fusermount3") is None:
        cmd = ["umount", *(["-l"] if lazy else []), str(path)]
    else:
        cmd = ["fusermount3", "-uz" if lazy else "-u", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _lazy_unmount(path: Path) -> None:
    entry = mount_at(path)
    if entry is None or not entry.is_imgfs:
        return
    proc = _run_unmount(path, lazy=True)
    if proc.returncode != 0 and mount_at(path) == entry:
        raise ImgfsError(f"cannot unmount stale mount {path}: {_tool_error(proc)}")


def _tool_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln]
    msg = lines[-1] if lines else f"exit status {proc.returncode}"
    # "umount: /x: target is busy." -> "target is busy"
    return msg.rsplit(": ", 1)[-1].rstrip(".")


def wait_for_exit(record: MountRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while record.daemon_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def umount(
    mountpoint: str | Path, *, state_file: Path | None = None, timeout: float = UMOUNT_TIMEOUT
) -> MountState:
    """Unmount an imgfs mount and wait for its daemon to exit. Returns MountState.MOUNTED
    if a served mount was unmounted, MountState.STALE if it was a stale one (daemon
    already dead) that was lazily unmounted."""
    path = normalize(mountpoint)
    record = MountRecord.load(state_file) if state_file is not None else None
    if record is not None and normalize(record.mountpoint) != path:
        record = None
    entry = mount_at(path)
    if entry is None:
        if record is not None:
            clear_state(state_file)  # type: ignore[arg-type]
        raise ImgfsError(f"{path} is not mounted")
    if not entry.is_imgfs:
        raise ImgfsError(f"{path} is not an imgfs mount (it is {entry.fstype})")
    stale = is_stale_path(path) or (record is not None and not record.daemon_alive())
    if stale:
        _lazy_unmount(path)
        if record is not None:
            _remove_state(state_file, record.pid)
        return MountState.STALE
    proc = _run_unmount(path, lazy=False)
    if proc.returncode != 0 and mount_at(path) == entry:
        raise ImgfsError(f"cannot unmount {path}: {_tool_error(proc)}")
    if record is not None:
        if not wait_for_exit(record, timeout):
            # Unmounted, yet the daemon lingers: ask it to stop, then give up waiting.
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)
            if not wait_for_exit(record, 2.0):
                raise ImgfsError(
                    f"{path} was unmounted but its daemon (pid {record.pid}) did not exit"
                )
        _remove_state(state_file, record.pid)
    return MountState.MOUNTED
