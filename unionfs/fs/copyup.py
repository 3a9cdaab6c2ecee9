"""Copy-up: bring a lower entry into the upper dir before it changes, data and metadata.

Each entry is built under the work dir and renamed into place, so a crash never leaves
a half-copied file visible. A lower file with hard links is copied once and linked at
each of its visible names, so the links stay links. Large files are copied in a worker
thread (FICLONE, else copy_file_range) so one big copy-up does not stall every request.

An unprivileged daemon copies what it may: owners it cannot give are its own (see
`UnionOperations.set_owner`), and xattrs it may not set (security.*) are left out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from unionfs.fs.layerfds import (
    at,
    get_xattr,
    is_whiteout,
    open_dir,
)
from unionfs.fs.nodes import Node
from unionfs.safeio import set_xattr

if TYPE_CHECKING:
    from unionfs.fs.operations import UnionOperations

FICLONE = 0x40049409
THREAD_THRESHOLD = 1 << 20
WORK_SUBDIR = "imgfs-work"


class CopyUp:
    def __init__(self, ops: UnionOperations, work_dir: Path) -> None:
        self.ops = ops
        work = work_dir / WORK_SUBDIR
        work.mkdir(mode=0o700, exist_ok=True)
        self.work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._locks: dict[int, trio.Lock] = {}
        self._no_clone: set[int] = set()
        """Lower layers whose files FICLONE cannot share with the upper dir: not tried again."""

    def close(self) -> None:
        os.close(self.work_fd)

    # -- directories -----------------------------------------------------------

    def copy_up_dir(self, node: Node) -> None:
        """Create a lower directory (and its parents) in the upper dir, with its metadata."""
        if node.upper:
            return
        assert node.parent is not None
        self.copy_up_dir(node.parent)
        pfd = self.ops.upper_dir_fd(node.parent)
        try:
            os.lstat(node.name, dir_fd=pfd)  # made meanwhile (hard-link copy-up of an alias)
        except FileNotFoundError:
            self._make_dir(pfd, node.name, node.lower)
        node.upper = True
        node.upper_ino = os.lstat(node.name, dir_fd=pfd).st_ino

    def _make_dir(self, pfd: int, name: bytes, lower: int) -> None:
        entry = self.ops.index.entry(lower)
        tmp = self._tmp_name()
        os.mkdir(tmp, 0o700, dir_fd=self.work_fd)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.work_fd)
        mode = stat.S_IMODE(entry.mode)
        # Moving a dir to another parent takes write access to it (its ".."), which root
        # has anyway; without root, a read-only mode is set once it is in place.
        held = mode | stat.S_IWUSR if self.ops.unprivileged else mode
        try:
            try:
                self._copy_xattrs(lower, fd)
                self.ops.set_owner(fd, entry.uid, entry.gid)
                os.fchmod(fd, held)
                os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
            self._install(tmp, pfd, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(tmp, dir_fd=self.work_fd)  # a failed copy leaves nothing behind
            raise
        if held != mode:
            os.chmod(at(pfd, name), mode)

    # -- whole trees -------------------------------------------------------------

    async def copy_up_tree(self, node: Node) -> None:
        """Copy a merged directory up with everything below it, then make it opaque: how a
        lower directory is renamed in the userxattr format, where kernel overlayfs follows
        no redirects (it would answer EXDEV and leave the copy to `mv`). The view does not
        change; the directories keep their inode numbers through the origin xattr."""
        ops = self.ops
        await self._fill(node)
        pfd, name = ops._upper_loc(node)
        os.setxattr(at(pfd, name), ops.fmt.opaque, b"y", follow_symlinks=False)
        # Nothing below shows a lower entry any more: forget the merged lower dirs, and
        # drop the whiteouts, which hide nothing now (the kernel would list them).
        for other in ops.table.all():
            if other.is_dir and other.lower and _below(other, node):
                other.lower, other.opaque = 0, False
        node.lower, node.opaque = 0, True
        self._drop_whiteouts(ops.upper_dir_fd(node))

    async def _fill(self, node: Node) -> None:
        """Copy up a directory and every lower entry its merged view shows below it."""
        ops = self.ops
        self.copy_up_dir(node)
        if node.lower and ops.index.is_dir(node.lower):
            pfd, name = ops._upper_loc(node)
            if name:
                group = str(ops.index.entry(node.lower).link_group).encode()
                os.setxattr(at(pfd, name), ops.fmt.origin, group, follow_symlinks=False)
        for child_id in ops.index.children(node.lower) if node.lower else ():
            child_name = ops.index.entry(child_id).name
            probe = ops._probe(node, child_name)
            if probe is None or (probe.upper and not (probe.is_dir and probe.lower)):
                continue  # a whiteout, or an upper entry with nothing lower below it
            child = ops._node(node, child_name, probe)
            if not child.is_dir:
                await self.copy_up(child)
                continue
            try:
                await self._fill(child)
            finally:
                if not ops.table.holds(child):
                    child.close_fd()  # a node made for this walk only

    # -- files -------------------------------------------------------------------

    async def settle(self, node: Node) -> None:
        """Wait for a copy-up of `node` in flight (a large file copies in a worker thread),
        so a delete or rename never races it and the finished copy never resurrects it."""
        lock = self._locks.get(node.ino)
        if lock is not None:
            async with lock:
                pass

    async def copy_up(self, node: Node) -> None:
        if node.is_dir:
            self.copy_up_dir(node)
            return
        if node.ino not in self._locks and not self._threaded(node.lower):
            # A small file copies without an await: nothing can interleave, so no lock
            # (taking a trio lock is two trips through the scheduler per copy-up).
            if not node.upper:
                self._copy_up_now(node)
            return
        lock = self._locks.setdefault(node.ino, trio.Lock())
        async with lock:
            if node.upper:
                return
            assert node.parent is not None
            self.copy_up_dir(node.parent)
            pfd = self.ops.upper_dir_fd(node.parent)
            xattrs = await self._copy_file(node.lower, pfd, node.name)
            self._finish(node, pfd, xattrs)
        self._locks.pop(node.ino, None)

    def _threaded(self, lower: int) -> bool:
        """Whether a lower file's data is copied in a worker thread (a large one)."""
        entry = self.ops.index.entry(lower)
        return stat.S_ISREG(entry.mode) and entry.size > THREAD_THRESHOLD

    def _copy_up_now(self, node: Node) -> None:
        """`copy_up` of a file copied without a worker thread: no await in here."""
        assert node.parent is not None
        self.copy_up_dir(node.parent)
        pfd = self.ops.upper_dir_fd(node.parent)
        tmp = self._tmp_name()
        try:
            xattrs = self._build_copy(node.lower, tmp)
            self._install(tmp, pfd, node.name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.work_fd)  # a failed copy leaves nothing behind
            raise
        self._finish(node, pfd, xattrs)

    def _finish(self, node: Node, pfd: int, xattrs: frozenset[bytes] | None) -> None:
        """Link the copy's other names, record its nlink bias, and mark the node upper."""
        for parent, name in node.extra_links:  # names the kernel knows, wherever they are
            self.link_name(node, parent, name)
        self._link_aliases(node, pfd)
        st = os.lstat(node.name, dir_fd=pfd)
        lower_nlink = self.ops.index.entry(node.lower).nlink
        if lower_nlink > st.st_nlink and not stat.S_ISLNK(st.st_mode):
            node.nlink_bias = lower_nlink - st.st_nlink
            value = f"{self.ops.index.entry(node.lower).link_group}:{node.nlink_bias}"
            if self.ops.carries_origin(st.st_mode):
                origin = self.ops.fmt.origin
                os.setxattr(at(pfd, node.name), origin, value.encode(), follow_symlinks=False)
        if not self.ops.carries_origin(st.st_mode):
            self.ops.copied_inos[st.st_ino] = node.ino
        node.upper = True
        node.upper_ino = st.st_ino
        node.xattrs = xattrs
        self.ops.reads_follow_copy_up(node)

    async def _copy_file(self, lower: int, pfd: int, name: bytes) -> frozenset[bytes] | None:
        """Copy a lower non-directory up as `name`; its xattr names if known."""
        tmp = self._tmp_name()
        try:
            xattrs = await self._write_copy(lower, tmp)
            self._install(tmp, pfd, name)
            return xattrs
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.work_fd)  # a failed copy leaves nothing behind
            raise

    async def _write_copy(self, lower: int, tmp: str) -> frozenset[bytes] | None:
        """Build the copy of a lower non-directory as `tmp` in the work dir, a large file's
        data in a worker thread; the names of the copy's xattrs for a regular file."""
        if not self._threaded(lower):
            return self._build_copy(lower, tmp)
        entry = self.ops.index.entry(lower)
        src, dst = self._open_pair(lower, tmp)
        try:
            clone = entry.layer not in self._no_clone
            cloned = await trio.to_thread.run_sync(copy_data, src, dst, entry.size, clone)
            return self._file_meta(lower, src, dst, cloned)
        finally:
            os.close(dst)
            os.close(src)

    def _open_pair(self, lower: int, tmp: str) -> tuple[int, int]:
        """(lower file opened for reading, new `tmp` in the work dir opened for writing)."""
        lpfd, lname = self.ops.lower_loc(lower)
        src = os.open(lname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lpfd)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return src, os.open(tmp, flags, 0o600, dir_fd=self.work_fd)
        except BaseException:
            os.close(src)
            raise

    def _file_meta(self, lower: int, src: int, dst: int, cloned: bool) -> frozenset[bytes]:
        """Give a copied regular file its lower metadata; the names of its xattrs."""
        entry = self.ops.index.entry(lower)
        if not cloned and entry.size:
            self._no_clone.add(entry.layer)
        self._copy_xattrs_fd(lower, src, dst)
        self.ops.set_owner(dst, entry.uid, entry.gid)
        os.fchmod(dst, stat.S_IMODE(entry.mode))  # after chown: it clears setuid
        os.setxattr(dst, self.ops.fmt.origin, str(entry.link_group).encode())
        os.utime(dst, ns=(entry.atime_ns, entry.mtime_ns))
        return frozenset(os.fsencode(n) for n in os.listxattr(dst))

    def _build_copy(self, lower: int, tmp: str) -> frozenset[bytes] | None:
        """`_write_copy` without a worker thread (anything but a large regular file)."""
        entry = self.ops.index.entry(lower)
        kind = stat.S_IFMT(entry.mode)
        if kind == stat.S_IFREG:
            src, dst = self._open_pair(lower, tmp)
            try:
                cloned = copy_data(src, dst, entry.size, entry.layer not in self._no_clone)
                return self._file_meta(lower, src, dst, cloned)
            finally:
                os.close(dst)
                os.close(src)
        lpfd, lname = self.ops.lower_loc(lower)
        if kind == stat.S_IFLNK:
            target = os.readlink(lname, dir_fd=lpfd)
            os.symlink(target, tmp, dir_fd=self.work_fd)
        else:
            os.mknod(tmp, kind | 0o600, entry.rdev, dir_fd=self.work_fd)
        self.ops.set_owner(tmp, entry.uid, entry.gid, dir_fd=self.work_fd, follow_symlinks=False)
        tpath = at(self.work_fd, os.fsencode(tmp))
        if kind != stat.S_IFLNK:
            os.chmod(tpath, stat.S_IMODE(entry.mode))
        origin = str(entry.link_group).encode()
        try:
            os.setxattr(tpath, self.ops.fmt.origin, origin, follow_symlinks=False)
            self._copy_xattrs(lower, tpath)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP):
                raise
        os.utime(
            tmp, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=self.work_fd, follow_symlinks=False
        )
        return None

    def link_name(self, node: Node, parent: Node, name: bytes) -> None:
        """Give a copied-up hard link another of its names in the upper dir (a name that
        still showed the lower file), so every name keeps showing one inode."""
        assert node.parent is not None
        self.copy_up_dir(parent)
        dst = self.ops.upper_dir_fd(parent)
        try:
            st = os.lstat(name, dir_fd=dst)
        except FileNotFoundError:
            pass
        else:
            if st.st_ino == node.upper_ino or not is_whiteout(st):
                return
            os.unlink(name, dir_fd=dst)
        src = self.ops.upper_dir_fd(node.parent)
        os.link(node.name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)

    def _link_aliases(self, node: Node, pfd: int) -> None:
        """Link the other visible names of a hard-linked lower file to the new upper copy."""
        index = self.ops.index
        entry = index.entry(node.lower)
        if entry.nlink <= 1:
            return
        for alias in index.link_group(node.lower):  # the copy's own name is found taken
            apath = index.path(alias)
            dir_fd = self._visible_parent(apath)
            if dir_fd is None:
                continue
            try:
                aname = apath.rpartition(b"/")[2]
                os.link(node.name, aname, src_dir_fd=pfd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                pass
            finally:
                os.close(dir_fd)

    def _visible_parent(self, path: bytes) -> int | None:
        """Upper fd of the parent of lower `path` if the merged view still shows the lower
        entry there (no whiteout, opaque dir, redirect or upper entry in the way)."""
        ops = self.ops
        parts = path.split(b"/")
        fd = os.dup(ops.upper_dir_fd(ops.root))
        lower = 1
        try:
            for part in parts[:-1]:
                lower = ops.index.lookup(lower, part) or 0
                try:
                    st = os.lstat(part, dir_fd=fd)
                except FileNotFoundError:
                    if not lower:
                        os.close(fd)
                        return None
                    self._make_dir(fd, part, lower)
                    st = os.lstat(part, dir_fd=fd)
                p = at(fd, part)
                if not stat.S_ISDIR(st.st_mode) or get_xattr(p, ops.fmt.opaque) == b"y":
                    os.close(fd)
                    return None
                if get_xattr(p, ops.fmt.redirect) is not None:
                    os.close(fd)
                    return None
                nfd = open_dir(fd, part)
                os.close(fd)
                fd = nfd
            try:
                os.lstat(parts[-1], dir_fd=fd)
            except FileNotFoundError:
                return fd
            os.close(fd)  # a whiteout, or an entry that replaced this name
            return None
        except BaseException:
            os.close(fd)
            raise

    # -- helpers -----------------------------------------------------------------

    def _drop_whiteouts(self, dir_fd: int) -> None:
        """Remove every whiteout in the upper tree below an O_PATH directory fd."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    sub = open_dir(fd, os.fsencode(entry.name))
                    try:
                        self._drop_whiteouts(sub)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    continue
                elif is_whiteout(entry.stat(follow_symlinks=False)):
                    with self._writable(fd, os.fstat(fd)):
                        os.unlink(entry.name, dir_fd=fd)
        finally:
            os.close(fd)

    def _tmp_name(self) -> str:
        return f"#{secrets.token_hex(8)}"

    def _install(self, tmp: str, pfd: int, name: bytes) -> None:
        """Move a finished copy into place; like overlayfs, the parent keeps its times."""
        st = os.stat(pfd)
        with self._writable(pfd, st):
            os.rename(tmp, name, src_dir_fd=self.work_fd, dst_dir_fd=pfd)
        os.utime(f"/proc/self/fd/{pfd}/.", ns=(st.st_atime_ns, st.st_mtime_ns))

    @contextlib.contextmanager
    def _writable(self, pfd: int, st: os.stat_result) -> Iterator[None]:
        """Let an unprivileged daemon copy into an upper dir it owns but may not write to
        (a copy of a read-only lower dir, e.g. 0555): root would not be stopped by its mode,
        and the caller's own permissions were checked against the merged view already."""
        needed = stat.S_IWUSR | stat.S_IXUSR
        ops = self.ops
        if not ops.unprivileged or st.st_uid != ops.euid or st.st_mode & needed == needed:
            yield
            return
        path = f"/proc/self/fd/{pfd}/."
        os.chmod(path, stat.S_IMODE(st.st_mode) | needed)
        try:
            yield
        finally:
            os.chmod(path, stat.S_IMODE(st.st_mode))

    def _copy_xattrs_fd(self, lower: int, src: int, dst: int) -> None:
        """`_copy_xattrs` from an open lower file (no second walk to it), which also fills
        the daemon's cache of the lower entry's xattr names on the way."""
        names = self.ops._lower_xattrs.get(lower)
        if names is None:
            names = frozenset(os.fsencode(n) for n in os.listxattr(src))
            self.ops._lower_xattrs[lower] = names
        for name in names:
            if self.ops.fmt.shown(name) is None:
                continue  # the overlay's own (opaque, redirect, origin): not copied
            try:
                os.setxattr(dst, name, os.getxattr(src, name))
            except OSError as e:
                if not self.ops.unprivileged or e.errno not in _NOT_SETTABLE:
                    raise

    def _copy_xattrs(self, lower: int, target: int | str) -> None:
        """Copy the lower entry's xattrs (but the overlay-private ones) to `target`."""
        path = self.ops._xattr_path_lower(lower)
        for name in os.listxattr(path, follow_symlinks=False):
            if self.ops.fmt.shown(os.fsencode(name)) is None:
                continue  # the overlay's own (opaque, redirect, origin): not copied
            value = os.getxattr(path, name, follow_symlinks=False)
            try:
                set_xattr(target, name, value)
            except OSError as e:
                # Unprivileged, security.* (capabilities, SELinux labels) may not be
                # set: the copy goes without them rather than fail.
                if not self.ops.unprivileged or e.errno not in _NOT_SETTABLE:
                    raise


_NOT_SETTABLE = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP)


def _below(node: Node, top: Node) -> bool:
    """Whether `node` is (by its primary name) somewhere beneath directory `top`."""
    parent = node.parent
    while parent is not None:
        if parent is top:
            return True
        parent = parent.parent
    return False


def copy_data(src: int, dst: int, size: int, clone: bool = True) -> bool:
    """Reflink when the filesystem can (and `clone`), else copy in the kernel, else read and
    write. Whether it reflinked."""
    if clone:
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return True
        except OSError:
            pass
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, size - copied, copied, copied)
            if n == 0:
                break
            copied += n
        return False
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while chunk := os.pread(src, 1 << 20, copied):
        os.pwrite(dst, chunk, copied)
        copied += len(chunk)
    return False
