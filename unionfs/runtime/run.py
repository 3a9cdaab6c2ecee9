"""`imgfs run`: create a container, mount it, run a command in it, unmount."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.containers import Container, Containers
from unionfs.fs import lifecycle
from unionfs.runtime import sandbox
from unionfs.runtime.process import (
    ProcessSpec,
    RunError,
    command_line,
    environment,
    parse_volume,
)
from unionfs.store.atomic import write_atomic
from unionfs.store.images import ImageStore

NETWORKS = ("host", "none")
HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


@dataclass
class RunOptions:
    image: str
    args: list[str] = field(default_factory=list)
    name: str | None = None
    remove: bool = False
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    network: str = "host"
    keep_stdin: bool = False
    tty: bool = False
    volumes: list[str] = field(default_factory=list)
    init: bool = False
    stop_timeout: float = 10.0


class _Interrupted(KeyboardInterrupt):
    """A signal to `imgfs run` before the command started: stop and clean up. (A
    KeyboardInterrupt, so that a mount being set up is stopped by lifecycle.mount.)"""


def check_environment() -> None:
    if os.geteuid() != 0:
        raise RunError(
            "imgfs run needs root (running without root in a user namespace is not supported)"
        )
    if not os.path.exists("/dev/fuse"):
        raise RunError("FUSE is not available: /dev/fuse is missing (modprobe fuse)")


def run(store: ImageStore, options: RunOptions) -> int:
    """Returns the command's exit code (128+N if killed by signal N)."""
    if options.network not in NETWORKS:
        raise RunError(f"unsupported network {options.network!r} (use host or none)")
    volumes = [parse_volume(v) for v in options.volumes]
    check_environment()
    for host, _, _ in volumes:
        if not os.path.lexists(host):
            os.makedirs(host, 0o755)  # as docker -v does for a missing host path
    image = store.find(options.image)
    config = image.config.get("config") or {}
    args = command_line(config, options.args)  # fails before a container exists
    containers = Containers(store)
    container = containers.create(options.image, options.name)
    hostname = options.hostname or container.short_id
    spec = ProcessSpec(
        args=args,
        env=environment(config, options.env, hostname=hostname),
        cwd=options.workdir or str(config.get("WorkingDir") or "") or "/",
        user=options.user or str(config.get("User") or "") or "0",
        hostname=hostname,
        network=options.network,
        keep_stdin=options.keep_stdin,
        tty=options.tty,
        volumes=volumes,
        init=options.init,
        stop_timeout=options.stop_timeout,
    )
    if spec.tty:
        spec.env.setdefault("TERM", "xterm")  # as docker run -t
    save_spec(container, spec)
    return _run_container(containers, container, spec, remove=options.remove)


def start(store: ImageStore, key: str, *, attach: bool) -> int:
    """Run an existing container's command (as recorded by `imgfs run`) again. Without
    `attach`, in the background with its output in the container dir's `log`."""
    check_environment()
    containers = Containers(store)
    container = containers.find(key)
    if running_pid(container) is not None:
        raise RunError(f"container {container.name} is already running")
    spec = load_spec(container)
    if attach:
        return _run_container(containers, container, spec, remove=False)
    _flush()
    pid = os.fork()
    if pid != 0:
        print(container.name)
        return 0
    code = 125
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(container.dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        spec.keep_stdin = False
        code = _run_container(containers, container, spec, remove=False)
    except BaseException as e:  # nobody to report to but the log
        with contextlib.suppress(Exception):
            sys.stderr.write(f"imgfs: start {container.name}: {e}\n")
    finally:
        _flush()
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def spec_file(container: Container) -> Path:
    """`run.json`: what `imgfs run` ran, for `imgfs start` and `imgfs exec`."""
    return container.dir / "run.json"


def run_state_file(container: Container) -> Path:
    """`run-state.json` while the container's command runs: the host pid of its PID 1."""
    return container.dir / "run-state.json"


def save_spec(container: Container, spec: ProcessSpec) -> None:
    write_atomic(spec_file(container), json.dumps(dataclasses.asdict(spec), indent=1).encode())


def load_spec(container: Container) -> ProcessSpec:
    try:
        doc = json.loads(spec_file(container).read_text())
    except FileNotFoundError:
        raise RunError(
            f"container {container.name} was not made by imgfs run: no command to start"
        ) from None
    except ValueError as e:
        raise RunError(f"container {container.name}: corrupt run.json: {e}") from None
    fields = {f.name for f in dataclasses.fields(ProcessSpec)}
    spec = ProcessSpec(**{k: v for k, v in doc.items() if k in fields})
    spec.volumes = [(str(h), str(c), bool(r)) for h, c, r in spec.volumes]
    return spec


def running_pid(container: Container) -> int | None:
    """The host pid of the running container's PID 1, or None if it is not running."""
    try:
        state = json.loads(run_state_file(container).read_text())
        pid, stage1 = int(state["pid"]), int(state["stage1"])
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return pid if ppid == stage1 else None


def _run_container(
    containers: Containers, container: Container, spec: ProcessSpec, *, remove: bool
) -> int:
    child: list[int] = []
    cleaning = False

    def on_signal(signum: int, frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        elif not cleaning:
            raise _Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in sandbox.FORWARDED}
    for s in sandbox.FORWARDED:
        signal.signal(s, on_signal)
    state = run_state_file(container)
    try:
        files = _write_files(container, spec.hostname)
        rootfs = container.dir / "rootfs"
        rootfs.mkdir(mode=0o755, exist_ok=True)
        # allow_other: the command may run as another user than the mounting root.
        containers.mount(container, rootfs, options=["allow_other"])
        try:
            return sandbox.launch(rootfs, spec, files, child.append, state)
        finally:
            cleaning = True
            child.clear()
            with contextlib.suppress(FileNotFoundError):
                state.unlink()
            lifecycle.umount(rootfs, state_file=container.state_file)
    except _Interrupted as e:
        return 128 + int(e.args[0])
    finally:
        cleaning = True
        child.clear()
        try:
            if remove:
                containers.remove(_reload(container), force=True)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _reload(container: Container) -> Container:
    return Container.load(container.dir)


def _write_files(container: Container, hostname: str) -> dict[str, Path]:
    """/etc/hosts and /etc/resolv.conf for the container, kept in its dir (not its upper)."""
    hosts = container.dir / "hosts"
    hosts.write_text(HOSTS + f"127.0.1.1\t{hostname}\n")
    resolv = container.dir / "resolv.conf"
    try:
        shutil.copyfile("/etc/resolv.conf", resolv)
    except OSError:
        resolv.write_text("")
    os.chmod(hosts, 0o644)
    os.chmod(resolv, 0o644)
    return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}
