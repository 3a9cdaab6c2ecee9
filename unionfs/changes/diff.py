"""What changed in a container: its upper dir compared with the image's merged lower index.

The answer is the one `docker diff` gives. On overlay2, docker computes it as a comparison of
two whole trees, the container's and its image's (moby daemon/graphdriver/overlay2/overlay.go:
`Changes` -> `naiveDiff.Changes` -> pkg/archive/changes.go `ChangesDirs`); its rules
(`FileInfo.addChanges`, and `statDifferent` in changes_unix.go) are:

- a path only in the container's tree is `A`, and so is everything below it;
- a path only in the image's tree is `D`, and nothing below it is listed (a deleted
  directory is one line);
- a path in both is `C` when its type or permission bits, owner, group or device number
  differ, or, for anything but a directory, its size or mtime (a directory's size and mtime
  are not a measure of change), or its `security.capability`. A directory replaced by a
  non-directory is one `C` line (the old children are not listed); a non-directory replaced
  by a directory is `C` with every child `A`;
- a directory with any change below it is `C` too, up to (not including) `/`;
- docker sorts changes by path, byte-wise (`changesByPath`).

Here the container's tree is not walked: the upper dir says what differs. Its directories
are read, each name in them is looked up in the index, and a directory's lower children are
only listed where the upper dir makes the two trees differ there (an opaque directory, a
renamed one, or a new one over a lower directory): unchanged parts of the image cost
nothing. Where docker can only guess from stat fields, this looks closer, so that a file
copied up but left as it was (opened for writing, chmod-ed and back) is not reported: files
whose stat fields match are compared by content, symlinks by target, and entries also by
every xattr a user sees (not only `security.capability`), and mtimes are compared to the
nanosecond (docker tolerates a lost sub-second part, because tar used to drop it).

The upper dir is only read, beneath an fd of it, without following symlinks and without
updating atimes (O_NOATIME), so it can be diffed while the container is mounted
(`container_changes` first syncs the mount, whose writeback cache may still hold data
written to files not yet closed); what changes during the walk may or may not show.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from unionfs.errors import ImgfsError
from unionfs.fs.layerfds import (
    OPAQUE_XATTR,
    REDIRECT_XATTR,
    LayerDirs,
    at,
    get_xattr,
    is_whiteout,
    shown_xattr,
)
from unionfs.index import ROOT_ID, LowerEntry, MergedIndex
from unionfs.safeio import open_beneath, syncfs

if TYPE_CHECKING:
    from unionfs.containers import Container
    from unionfs.store.images import ImageStore

DOCKER_KINDS = {"C": 0, "A": 1, "D": 2}
"""docker's ChangeType numbers (the API's `Kind`): Modify, Add, Delete."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
"""What reading an upper entry that a live container just removed or replaced gives."""
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "A", "C" or "D"
    path: str  # absolute in the container, "/etc/passwd" (undecodable bytes surrogate-escaped)

    @property
    def docker_kind(self) -> int:
        return DOCKER_KINDS[self.kind]

    def to_json(self) -> dict[str, object]:
        """As docker's API (GET /containers/{id}/changes) reports one change."""
        return {"Path": self.path, "Kind": self.docker_kind}

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def changes(upper_dir: Path, index: MergedIndex, *, parents: bool = True) -> list[Change]:
    """The changes an upper dir makes to the tree of `index`, sorted by path (see the module
    doc). `parents=False` leaves out directories listed only because of a change below them."""
    fd = _open_dir(lambda flags: os.open(upper_dir, flags))
    try:
        return _Walk(fd, index).run(parents)
    finally:
        os.close(fd)


def container_changes(store: ImageStore, container: Container) -> list[Change]:
    """`changes` of a container's upper dir against its image's layers (a mounted container's
    writeback cache synced first)."""
    from unionfs.containers import ensure_index, lower_dirs_for

    lower = lower_dirs_for(store, container.diff_ids)
    for d in lower:
        if not d.is_dir():
            raise ImgfsError(f"container {container.name}: layer dir {d} is missing")
    _sync_mount(container)
    with MergedIndex.open(ensure_index(store, container.diff_ids, lower), lower) as index:
        return changes(container.upper, index)


def _sync_mount(container: Container) -> None:
    """Data written through the mount by a file still open may be in the kernel's writeback
    cache only; syncfs hands it (and its mtime) to the daemon, which writes the upper dir.
    Best effort: a mount that went away in between has nothing cached."""
    from unionfs.fs.lifecycle import MountState

    record = container.mount_record()
    if record is None or container.mount_state() is not MountState.MOUNTED:
        return
    try:
        fd = os.open(record.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        syncfs(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def format_text(found: list[Change]) -> bytes:
    """docker diff's output: `KIND PATH` lines (paths as the raw bytes of the names)."""
    return b"".join(f"{c.kind} ".encode() + os.fsencode(c.path) + b"\n" for c in found)


# -- the walk ----------------------------------------------------------------------------

_DIFF, _ADD = 0, 1


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class _Walk:
    """One diff. Work items are directories present in the new (container's) tree:

    (_DIFF, path, in_upper, merged, old): `old` is the image's directory at `path`;
    (_ADD, path, in_upper, merged): there is no directory at `path` in the image;

    where `in_upper` says the directory exists in the upper dir and `merged` is the lower
    directory whose children show through it (0: none; opaque, or new). A stack of items,
    not recursion, and one upper fd open at a time: any depth works.
    """

    def __init__(self, upper_fd: int, index: MergedIndex) -> None:
        self.upper_fd = upper_fd
        self.index = index
        self.found: dict[bytes, str] = {}
        self.todo: list[tuple[int, bytes, bool, int, int]] = []

    def run(self, parents: bool) -> list[Change]:
        root = ROOT_ID if len(self.index) else 0
        self.layers = LayerDirs(self.index.lower_dirs)
        try:
            self.todo.append((_DIFF, b"", True, root, root))
            while self.todo:
                kind, path, in_upper, merged, old = self.todo.pop()
                if kind == _DIFF:
                    self._diff_dir(path, in_upper, merged, old)
                else:
                    self._add_dir(path, in_upper, merged)
        finally:
            self.layers.close()
        return self._finish(parents)

    def _finish(self, parents: bool) -> list[Change]:
        """Every directory with a change below it is `C` itself (unless already listed)."""
        found = self.found
        for path in list(found) if parents else ():
            up = _parent(path)
            while up and up not in found:
                found[up] = "C"
                up = _parent(up)
        return [Change(found[p], "/" + os.fsdecode(p)) for p in sorted(found)]

    # -- directories -------------------------------------------------------------------

    @contextlib.contextmanager
    def _upper(
        self, path: bytes, in_upper: bool
    ) -> Iterator[tuple[int, dict[bytes, os.stat_result]]]:
        """(fd, {name: lstat}) of the upper dir at `path`; (-1, {}) when it is not there
        (or no longer: a live container may have removed it since its parent was read)."""
        fd = -1
        if in_upper:
            try:
                if path:
                    fd = _open_dir(lambda flags: open_beneath(self.upper_fd, path, flags))
                else:
                    fd = os.dup(self.upper_fd)  # shares the root's O_NOATIME
            except OSError as e:
                if e.errno not in _GONE:
                    raise
        entries: dict[bytes, os.stat_result] = {}
        try:
            if fd >= 0:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            entries[os.fsencode(entry.name)] = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
            yield fd, entries
        finally:
            if fd >= 0:
                os.close(fd)

    def _diff_dir(self, path: bytes, in_upper: bool, merged: int, old: int) -> None:
        index = self.index
        with self._upper(path, in_upper) as (fd, upper):
            if merged == old:
                # The lower children showing through are the image's own: only names the
                # upper dir holds can differ.
                for name, st in upper.items():
                    ident = index.lookup(old, name) if old else None
                    self._upper_child(path, fd, name, st, ident, merged)
                return
            shown = self._lower_children(merged)
            before = self._lower_children(old)
            for name in upper.keys() | shown.keys() | before.keys():
                st = upper.get(name)
                if st is not None:
                    self._upper_child(path, fd, name, st, before.get(name), merged)
                elif name in shown:
                    self._lower_child(_join(path, name), shown[name], before.get(name))
                else:
                    self.found[_join(path, name)] = "D"

    def _add_dir(self, path: bytes, in_upper: bool, merged: int) -> None:
        """A directory the image does not have there: everything in it is new."""
        with self._upper(path, in_upper) as (fd, upper):
            for name, st in upper.items():
                if is_whiteout(st):
                    continue
                child = _join(path, name)
                self.found[child] = "A"
                if stat.S_ISDIR(st.st_mode):
                    with self._gone_ok():
                        self.todo.append((_ADD, child, True, self._merged(fd, name, merged), 0))
            for name, ident in self._lower_children(merged).items():
                if name in upper:
                    continue
                child = _join(path, name)
                self.found[child] = "A"
                if self.index.is_dir(ident):
                    self.todo.append((_ADD, child, False, ident, 0))

    def _lower_children(self, ident: int) -> dict[bytes, int]:
        if not ident:
            return {}
        return {self.index.entry(c).name: c for c in self.index.children(ident)}

    # -- one name ------------------------------------------------------------------------

    def _upper_child(
        self, path: bytes, fd: int, name: bytes, st: os.stat_result, old: int | None, merged: int
    ) -> None:
        """An entry of the upper dir (`merged`: its directory's lower), the image's `old`."""
        child = _join(path, name)
        if is_whiteout(st):
            if old:
                self.found[child] = "D"
            return
        with self._gone_ok():
            is_dir = stat.S_ISDIR(st.st_mode)
            below = self._merged(fd, name, merged) if is_dir else 0
            if not old:
                self.found[child] = "A"
                if is_dir:
                    self.todo.append((_ADD, child, True, below, 0))
                return
            if self._upper_differs(fd, name, st, self.index.entry(old)):
                self.found[child] = "C"
            if is_dir:
                kind = _DIFF if self.index.is_dir(old) else _ADD
                self.todo.append((kind, child, True, below, old))

    def _lower_child(self, child: bytes, ident: int, old: int | None) -> None:
        """A lower entry that shows through at `child`, where the image has `old`."""
        index = self.index
        if not old:
            self.found[child] = "A"
            if index.is_dir(ident):
                self.todo.append((_ADD, child, False, ident, 0))
            return
        if ident == old:
            return
        if self._lower_differs(index.entry(ident), index.entry(old)):
            self.found[child] = "C"
        if index.is_dir(ident):
            kind = _DIFF if index.is_dir(old) else _ADD
            self.todo.append((kind, child, False, ident, old))

    @contextlib.contextmanager
    def _gone_ok(self) -> Iterator[None]:
        """A live container may remove what was just listed: it then simply isn't there."""
        try:
            yield
        except OSError as e:
            if e.errno not in _GONE:
                raise

    def _merged(self, fd: int, name: bytes, parent_merged: int) -> int:
        """The lower directory an upper directory merges, as overlayfs looks it up: none
        when opaque, its redirect's target when renamed, else the lower dir of its name."""
        where = at(fd, name)
        if get_xattr(where, OPAQUE_XATTR) == b"y":
            return 0
        redirect = get_xattr(where, REDIRECT_XATTR)
        index = self.index
        if redirect is None:
            found = index.lookup(parent_merged, name) if parent_merged else None
        elif not redirect.startswith(b"/"):  # relative: beside its old name
            found = index.lookup(parent_merged, redirect) if parent_merged else None
        else:  # absolute: from the root of the lower layers
            found = ROOT_ID if len(index) else None
            for part in redirect.strip(b"/").split(b"/"):
                if not found:
                    break
                found = index.lookup(found, part)
        return found if found and index.is_dir(found) else 0

    # -- comparing one entry -------------------------------------------------------------

    def _upper_differs(self, fd: int, name: bytes, st: os.stat_result, old: LowerEntry) -> bool:
        if _meta(st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_size, st.st_mtime_ns) != _meta(
            old.mode, old.uid, old.gid, old.rdev, old.size, old.mtime_ns
        ):
            return True
        with self._lower(old) as lower:
            return not _same_inside(st.st_mode, st.st_size, _Side(fd, name, None), lower)

    def _lower_differs(self, new: LowerEntry, old: LowerEntry) -> bool:
        if new.link_group == old.link_group:  # one inode (hard links)
            return False
        if _meta(new.mode, new.uid, new.gid, new.rdev, new.size, new.mtime_ns) != _meta(
            old.mode, old.uid, old.gid, old.rdev, old.size, old.mtime_ns
        ):
            return True
        with self._lower(new) as a, self._lower(old) as b:
            return not _same_inside(new.mode, new.size, a, b)

    @contextlib.contextmanager
    def _lower(self, entry: LowerEntry) -> Iterator[_Side]:
        """A lower entry, reached through an O_PATH fd of its layer dir."""
        path = self.index.path(entry.id)

        def error(e: OSError) -> ImgfsError:
            where = self.index.lower_dirs[entry.layer] / os.fsdecode(path)
            return ImgfsError(f"layer entry {where}: {e.strerror or e} (was the layer changed?)")

        try:
            pfd, name = self.layers.parent_fd(entry.layer, path)
        except OSError as e:
            raise error(e) from None
        try:
            yield _Side(pfd, name, error)
        finally:
            os.close(pfd)


@dataclass(frozen=True, slots=True)
class _Side:
    """One entry being compared: its directory's fd and its name. Errors reading the upper
    dir are left as they are (a live container may have just removed the entry); layers are
    read-only, so an error reading one is a broken store (`layer_error`)."""

    fd: int
    name: bytes
    layer_error: Callable[[OSError], Exception] | None

    def run(self, call: Callable[[int, bytes], _T]) -> _T:
        try:
            return call(self.fd, self.name)
        except OSError as e:
            if self.layer_error is None:
                raise
            raise self.layer_error(e) from None


def _same_inside(mode: int, size: int, a: _Side, b: _Side) -> bool:
    """Whether two entries whose stat fields match also match in what stat does not show:
    contents, link target, xattrs."""
    if stat.S_ISLNK(mode):
        if a.run(_readlink) != b.run(_readlink):
            return False
    elif stat.S_ISREG(mode) and size:
        fa = a.run(_open_regular)
        try:
            fb = b.run(_open_regular)
            try:
                if not _same_content(fa, fb):
                    return False
            finally:
                os.close(fb)
        finally:
            os.close(fa)
    return a.run(_shown_xattrs) == b.run(_shown_xattrs)


def _readlink(fd: int, name: bytes) -> bytes:
    return os.readlink(name, dir_fd=fd)


def _open_regular(fd: int, name: bytes) -> int:
    return _open_file(lambda flags: os.open(name, flags, dir_fd=fd))


def _shown_xattrs(fd: int, name: bytes) -> dict[bytes, bytes]:
    return _xattrs(at(fd, name))


def _meta(mode: int, uid: int, gid: int, rdev: int, size: int, mtime_ns: int) -> tuple[int, ...]:
    """What a stat comparison looks at (docker's statDifferent, with exact mtimes)."""
    if stat.S_ISDIR(mode):
        return (mode, uid, gid, rdev)
    return (mode, uid, gid, rdev, size, mtime_ns)


def _noatime(opener: Callable[[int], int], flags: int) -> int:
    """Open without updating atimes (of the upper dir's entries, which the mount shows), when
    allowed: O_NOATIME needs ownership or CAP_FOWNER."""
    try:
        return opener(flags | os.O_NOATIME)
    except PermissionError:
        return opener(flags)


def _open_dir(opener: Callable[[int], int]) -> int:
    return _noatime(opener, _DIR_FLAGS)


def _open_file(opener: Callable[[int], int]) -> int:
    """A regular file for reading (without touching its atime when allowed)."""
    fd = _noatime(opener, _FILE_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was listed
        os.close(fd)
        raise OSError(errno.ENOENT, "not a regular file any more")
    return fd


def _same_content(a: int, b: int) -> bool:
    offset = 0
    while True:
        x = os.pread(a, _CHUNK, offset)
        y = os.pread(b, _CHUNK, offset)
        if x != y:
            return False
        if not x:
            return True
        offset += len(x)


def _xattrs(path: str) -> dict[bytes, bytes]:
    """The xattrs a user of the mount sees on an entry (the overlay's own left out)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        shown = shown_xattr(os.fsencode(name))
        if shown is None:
            continue
        try:
            out[shown] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return out
