"""Run one FUSE mount until it is unmounted or told to stop (SIGTERM, SIGINT, SIGHUP)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from unionfs.errors import ImgfsError
from unionfs.fs.control import serve_control
from unionfs.fs.spec import MountSpec

log = logging.getLogger(__name__)

# Options a root mount of a container rootfs needs to behave like a real rootfs.
_ROOT_OPTIONS = ("dev", "suid")


def fuse_options(spec: MountSpec) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {f"fsname={spec.fsname}", "subtype=imgfs"}
    asked = {o for o in spec.options if o and o != "rw"}
    if os.geteuid() == 0:
        # A root mount is a rootfs: keep device nodes and setuid, unless asked not to.
        options |= {o for o in _ROOT_OPTIONS if f"no{o}" not in asked}
    if spec.read_only:
        options.add("ro")
    options |= asked
    return options


def check_unprivileged_fuse() -> None:
    """What a mount without root needs, said plainly (libfuse only fails, and the detached
    daemon's stderr goes nowhere): fusermount3, and /dev/fuse open to this user (it opens
    the device with the caller's ids; udev makes it 0666, a system without udev 0600)."""
    if shutil.which("fusermount3") is None and not os.path.exists("/usr/bin/fusermount3"):
        raise ImgfsError("mounting without root needs fusermount3 (apt install fuse3)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK, effective_ids=True):
        raise ImgfsError(
            "mounting without root needs /dev/fuse readable and writable by this user "
            "(mode 0666, as udev sets it)"
        )


def open_index(spec: MountSpec):  # -> MergedIndex, imported lazily
    """The persisted merged index of the lower dirs, built now if it does not exist yet."""
    from unionfs.index import MergedIndex

    if spec.index_path is not None:
        try:
            return MergedIndex.open(spec.index_path, spec.lower_dirs)
        except (FileNotFoundError, ValueError):
            spec.index_path.parent.mkdir(parents=True, exist_ok=True)
            return MergedIndex.build(spec.lower_dirs, spec.index_path)
    scratch = Path(tempfile.mkdtemp(prefix="imgfs-index-"))
    try:
        return MergedIndex.build(spec.lower_dirs, scratch / "index")
    finally:
        # The open index keeps its mmap; the file itself is not needed any more.
        for p in scratch.iterdir():
            p.unlink()
        scratch.rmdir()


def serve(spec: MountSpec, on_ready: Callable[[], None] | None = None) -> None:
    """Mount, call `on_ready`, and serve requests until unmounted; raises ImgfsError if the
    mount cannot be set up."""
    from unionfs.fs.operations import UnionOperations

    for d in spec.lower_dirs:
        if not d.is_dir():
            raise ImgfsError(f"lower dir {d} does not exist")
    if spec.upper_dir is not None and not spec.upper_dir.is_dir():
        raise ImgfsError(f"upper dir {spec.upper_dir} does not exist")
    if not spec.mountpoint.is_dir():
        raise ImgfsError(f"mountpoint {spec.mountpoint} is not a directory")
    if os.geteuid() != 0:
        check_unprivileged_fuse()
    index = open_index(spec)
    ops = UnionOperations(spec, index)
    try:
        pyfuse3.init(ops, str(spec.mountpoint), fuse_options(spec))
    except RuntimeError as e:
        raise ImgfsError(f"cannot mount on {spec.mountpoint}: {e}") from None
    fast = None
    try:
        if os.environ.get("IMGFS_DIRHOOK", "1") != "0":  # 0: keep opendir (diagnosis, tests)
            from unionfs.fs import sessionhook

            ops.stateless_dirs = sessionhook.install()
            if not ops.stateless_dirs:
                log.warning("pyfuse3 build not recognized: serving opendir (slower listings)")
            fast = _install_fastpath(ops)
        if on_ready is not None:
            on_ready()
        trio.run(_main, spec, ops)
    finally:
        pyfuse3.close(unmount=True)
        if fast is not None:
            fast.close()
        ops.close()


def _install_fastpath(ops: Any) -> Any:
    from unionfs.fs import fastpath
    from unionfs.fs.operations import TIMEOUT

    if not fastpath.wanted():
        return None
    fast = fastpath.install(ops.table, ops.index, TIMEOUT, ops.layers.fds)
    if fast is None:
        log.warning("C fast path not installed: every lookup goes through Python")
    return fast


async def _main(spec: MountSpec, ops: Any) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        if spec.control and spec.upper_dir is not None and not spec.read_only:
            nursery.start_soon(serve_control, spec.upper_dir, ops.gate)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
