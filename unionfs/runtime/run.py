"""`imgfs run`: create a container, mount it, run a command in it, unmount."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.containers import Container, Containers
from unionfs.fs import lifecycle
from unionfs.runtime import sandbox
from unionfs.runtime.process import ProcessSpec, RunError, command_line, environment
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
    check_environment()
    image = store.find(options.image)
    config = image.config.get("config") or {}
    args = command_line(config, options.args)  # fails before a container exists
    containers = Containers(store)
    container = containers.create(options.image, options.name)
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
    try:
        hostname = options.hostname or container.short_id
        spec = ProcessSpec(
            args=args,
            env=environment(config, options.env, hostname=hostname),
            cwd=options.workdir or str(config.get("WorkingDir") or "") or "/",
            user=options.user or str(config.get("User") or "") or "0",
            hostname=hostname,
            network=options.network,
            keep_stdin=options.keep_stdin,
            init=options.init,
            stop_timeout=options.stop_timeout,
        )
        files = _write_files(container, hostname)
        rootfs = container.dir / "rootfs"
        rootfs.mkdir(mode=0o755, exist_ok=True)
        # allow_other: the command may run as another user than the mounting root.
        containers.mount(container, rootfs, options=["allow_other"])
        try:
            return sandbox.launch(rootfs, spec, files, child.append)
        finally:
            cleaning = True
            child.clear()
            lifecycle.umount(rootfs, state_file=container.state_file)
    except _Interrupted as e:
        return 128 + int(e.args[0])
    finally:
        cleaning = True
        child.clear()
        try:
            if options.remove:
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
