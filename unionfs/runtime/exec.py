"""`imgfs exec`: another command in a running container, by joining the namespaces of
its PID 1 (setns on /proc/PID/ns/*) and chrooting to its root (/proc/PID/root)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence

from unionfs.containers import Containers
from unionfs.runtime import sandbox
from unionfs.runtime.process import ProcessSpec, RunError, resolve_user
from unionfs.runtime.run import check_environment, load_spec, running_pid
from unionfs.store.images import ImageStore

NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")
"""Joined in this order (mnt last: after it, /proc/PID/root is the container's root)."""


def setns(fd: int) -> None:
    sandbox._check(sandbox._libc.setns(fd, 0), "setns")


def _wait_chrooted(pid: int, timeout: float = 5.0) -> None:
    """A container just started may not have chrooted yet: wait until it has."""
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/root") == "/" and time.monotonic() < deadline:
        time.sleep(0.02)


def exec_in(
    store: ImageStore,
    key: str,
    args: Sequence[str],
    *,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    keep_stdin: bool = False,
) -> int:
    """Returns the command's exit code (126/127 if it cannot be run, as docker exec)."""
    if not args:
        raise RunError("no command given")
    check_environment()
    container = Containers(store).find(key)
    pid = running_pid(container)
    if pid is None:
        raise RunError(f"container {container.name} is not running")
    base = load_spec(container)
    environment = dict(base.env)
    for item in env:
        k, sep, v = item.partition("=")
        if not k:
            raise RunError(f"invalid environment variable: {item!r}")
        if sep:
            environment[k] = v
        elif k in os.environ:
            environment[k] = os.environ[k]
    spec = ProcessSpec(
        args=list(args),
        env=environment,
        cwd=workdir or base.cwd,
        user=user or base.user,
        hostname=base.hostname,
        keep_stdin=keep_stdin,
    )
    _wait_chrooted(pid)
    try:
        fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY) for ns in NAMESPACES]
    except OSError as e:
        raise RunError(f"container {container.name} is not running ({e.strerror})") from None
    sandbox._flush()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sandbox.FORWARDED)
    try:
        child = os.fork()
        if child == 0:
            _join(pid, fds, spec, old_mask)  # never returns
        previous = {s: signal.signal(s, sandbox._forward_to(child)) for s in sandbox.FORWARDED}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for fd in fds:
            os.close(fd)
    try:
        _, status = os.waitpid(child, 0)
        return sandbox.exit_code(status)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _join(pid: int, fds: list[int], spec: ProcessSpec, mask: set[int]) -> None:
    try:
        for s in sandbox.FORWARDED:
            signal.signal(s, signal.SIG_DFL)
        sandbox._die_with_parent()
        for fd in fds:
            setns(fd)
        os.chdir(f"/proc/{pid}/root")
        os.chroot(".")
        os.chdir("/")
        creds = resolve_user(spec.user)
        env = dict(spec.env)
        env.setdefault("HOME", creds.home or "/")
        child = os.fork()  # the PID namespace applies to children only
        if child == 0:
            sandbox._die_with_parent()
            sandbox._exec(spec, env, spec.cwd or "/", creds, mask)  # never returns
        for s in sandbox.FORWARDED:
            signal.signal(s, sandbox._forward_to(child))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while True:
            with contextlib.suppress(InterruptedError):
                _, status = os.waitpid(child, 0)
                os._exit(sandbox.exit_code(status))
    except RunError as e:
        sandbox._fail(str(e))
    except BaseException as e:
        sandbox._fail(f"cannot enter the container: {sandbox._describe(e)}")
    os._exit(125)
