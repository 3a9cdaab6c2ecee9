"""`imgfs export`: a container's merged view as one flattened rootfs tar (`docker export`).

The tree comes from a read-only FUSE mount of the container (the same daemon `imgfs mount
-o ro` runs), walked with directory fds, never following a symlink. Reading the real
view, rather than merging the lower index and the upper dir again here, means every
overlay rule (whiteouts, opaque and redirected directories, copied-up hard links and
their link counts, escaped xattrs) is applied by the code users mount with, and the
export can never disagree with what a chroot into the container sees. A container that
is already mounted is read through its live mount (as docker exports a running
container: not a snapshot while writers run).

The tar: GNU tar's naming (`./`, `./bin/`, …), entries in byte order of their names,
parents first; PAX headers with owners, modes (setuid and sticky bits included), mtimes
to the nanosecond and xattrs (`SCHILY.xattr.*`); no user or group names, no atime or
ctime, so the same tree always gives the same bytes. Hard links (the same inode seen
again) become tar hard links to the first name; symlinks, devices and fifos are kept;
sockets cannot be stored in a tar and are left out, as docker does; whiteouts never
appear in a merged view. `imgfs import` takes the result back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from unionfs.containers import Container, Containers
from unionfs.errors import ImgfsError
from unionfs.fs import lifecycle
from unionfs.fs.lifecycle import MountState
from unionfs.store.atomic import temp_name
from unionfs.store.images import ImageStore

__all__ = ["export_container", "write_tree"]

CHUNK = 1 << 20
EXPORT_MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "noexec"]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")
"""Overlay-private names: the mount hides its own, and no layer may carry them."""
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM}

ByteCounter = Callable[[int], None]


def export_container(
    store: ImageStore,
    container: Container,
    out: BinaryIO,
    on_bytes: ByteCounter | None = None,
) -> None:
    """Write the container's merged tree to `out` as a tar."""
    with mounted_view(store, container) as root:
        write_tree(root, out, on_bytes)


@contextlib.contextmanager
def mounted_view(store: ImageStore, container: Container) -> Iterator[Path]:
    """The container's merged view: its live mount, or a private read-only one for the
    duration (under the store's tmp/, unmounted and removed afterwards)."""
    state = container.mount_state()
    record = container.mount_record()
    if state is MountState.MOUNTED and record is not None:
        yield Path(record.mountpoint)
        return
    if state is MountState.STALE:
        raise ImgfsError(
            f"container {container.name} has a stale mount (its daemon died); "
            "run imgfs umount on it first"
        )
    store.paths.tmp.mkdir(parents=True, exist_ok=True)
    mountpoint = temp_name(store.paths.tmp, "export-")
    os.mkdir(mountpoint, 0o700)
    try:
        Containers(store).mount(container, mountpoint, options=list(EXPORT_MOUNT_OPTIONS))
        try:
            yield mountpoint
        finally:
            lifecycle.umount(mountpoint, state_file=container.state_file)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mountpoint)


def write_tree(root: Path, out: BinaryIO, on_bytes: ByteCounter | None = None) -> None:
    """Write the tree under `root` (which is not followed below itself) as a tar."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tar = tarfile.open(  # noqa: SIM115 - closed below
            fileobj=out,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=CHUNK,
        )
        _Walker(tar, on_bytes).run(root_fd)
        tar.close()
    finally:
        os.close(root_fd)


class _Walker:
    def __init__(self, tar: tarfile.TarFile, on_bytes: ByteCounter | None) -> None:
        self.tar = tar
        self.on_bytes = on_bytes
        self.links: dict[int, str] = {}
        """Inode number → the name it was first written under (hard links)."""

    def run(self, root_fd: int) -> None:
        st = os.fstat(root_fd)
        self.tar.addfile(_info(".", tarfile.DIRTYPE, st, _xattrs_fd(root_fd)))
        # Depth-first, parents before children; one open fd per directory level.
        stack: list[tuple[int, str, Iterator[str]]] = [(root_fd, "./", _names(root_fd))]
        try:
            while stack:
                dir_fd, prefix, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if dir_fd != root_fd:
                        os.close(dir_fd)
                    continue
                child = self._entry(dir_fd, name, prefix + name)
                if child is not None:
                    stack.append((child, prefix + name + "/", _names(child)))
        finally:
            for dir_fd, _, _ in stack:
                if dir_fd != root_fd:
                    os.close(dir_fd)

    def _entry(self, dir_fd: int, name: str, path: str) -> int | None:
        """Write one entry; returns the open fd of a directory, to descend into."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed meanwhile (a live mount)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                st = os.fstat(fd)
                self.tar.addfile(_info(path, tarfile.DIRTYPE, st, _xattrs_fd(fd)))
            except BaseException:
                os.close(fd)
                raise
            return fd
        if stat.S_ISSOCK(mode):
            return None
        if st.st_nlink > 1:
            first = self.links.get(st.st_ino)
            if first is not None:
                info = _info(path, tarfile.LNKTYPE, st, {})
                info.linkname = first
                self.tar.addfile(info)
                return None
        if stat.S_ISREG(mode):
            self._file(dir_fd, name, path)
        else:
            xattrs = _xattrs_path(f"/proc/self/fd/{dir_fd}/{name}")
            if stat.S_ISLNK(mode):
                info = _info(path, tarfile.SYMTYPE, st, xattrs)
                info.linkname = os.readlink(name, dir_fd=dir_fd)
            elif stat.S_ISFIFO(mode):
                info = _info(path, tarfile.FIFOTYPE, st, xattrs)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                info = _info(path, kind, st, xattrs)
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            else:
                return None
            self.tar.addfile(info)
        if st.st_nlink > 1:
            self.links[st.st_ino] = path
        return None

    def _file(self, dir_fd: int, name: str, path: str) -> None:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            info = _info(path, tarfile.REGTYPE, st, _xattrs_fd(fd))
            info.size = st.st_size
            try:
                self.tar.addfile(info, _FdReader(fd, self.on_bytes))
            except OSError as e:
                if "unexpected end of data" in str(e):
                    raise ImgfsError(f"{path} shrank while it was being exported") from None
                raise
        finally:
            os.close(fd)


def _names(dir_fd: int) -> Iterator[str]:
    return iter(sorted(os.listdir(dir_fd), key=os.fsencode))


def _info(path: str, kind: bytes, st: os.stat_result, xattrs: dict[str, bytes]) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
    info.mtime = seconds
    pax: dict[str, str] = {}
    if nanos:
        ns = st.st_mtime_ns
        sign = "-" if ns < 0 else ""
        whole, frac = divmod(abs(ns), 1_000_000_000)
        pax["mtime"] = f"{sign}{whole}.{frac:09d}".rstrip("0")
    for key in sorted(xattrs):
        pax[f"SCHILY.xattr.{key}"] = xattrs[key].decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info


def _xattrs_fd(fd: int) -> dict[str, bytes]:
    return _read_xattrs(lambda: os.listxattr(fd), lambda k: os.getxattr(fd, k))


def _xattrs_path(path: str) -> dict[str, bytes]:
    return _read_xattrs(
        lambda: os.listxattr(path, follow_symlinks=False),
        lambda k: os.getxattr(path, k, follow_symlinks=False),
    )


def _read_xattrs(list_: Callable[[], list[str]], get: Callable[[str], bytes]) -> dict[str, bytes]:
    try:
        names = list_()
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return {}
        raise
    found = {}
    for key in names:
        if key.startswith(_SKIPPED_XATTRS):
            continue
        try:
            found[key] = get(key)
        except OSError as e:
            if e.errno in _NO_XATTRS:
                continue  # removed meanwhile, or not readable here
            raise
    return found


class _FdReader:
    def __init__(self, fd: int, on_bytes: ByteCounter | None) -> None:
        self.fd = fd
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes, short only at the end (tarfile takes a short read for EOF;
        FUSE answers at most max_read bytes per read)."""
        want = n if n >= 0 else CHUNK
        parts = []
        while want > 0:
            data = os.read(self.fd, want)
            if not data:
                break
            parts.append(data)
            want -= len(data)
        data = b"".join(parts)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data
