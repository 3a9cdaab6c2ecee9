"""Unpack an OCI layer tar into a directory in kernel overlayfs format.

The output can be handed to `mount -t overlay` as a lower dir:
- an OCI whiteout `dir/.wh.NAME` becomes a character device 0:0 `dir/NAME`;
- an opaque marker `dir/.wh..wh..opq` becomes the xattr trusted.overlay.opaque=y on `dir`.

Whiteouts only hide lower layers (OCI image-spec layer.md). Within one tar:
a whiteout is not created over a NAME this layer already has; a later entry NAME
replaces an earlier whiteout; and a directory that coexists with a whiteout of
its own name is made opaque, because the lower directory it replaces must not
show through it.

Safety: the tar is hostile until proven otherwise. Names are checked lexically
(no absolute paths, no `..`), every directory is opened relative to its parent's
fd with O_NOFOLLOW (via `open_beneath`), so a symlink planted by the tar can never
redirect a write, and hard links may only point at non-directories already
unpacked from this same tar.

The tar is read strictly sequentially (tarfile "r|") so the caller can hash the
stream while it is consumed; on success the stream is read to its end.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import shutil
import stat
import tarfile
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from unionfs.errors import BadInput, ImgfsError
from unionfs.safeio import open_beneath, set_xattr

__all__ = ["OPAQUE_XATTR", "UnpackStats", "unpack_tar"]

_T = TypeVar("_T")

CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"
"""Used instead of OPAQUE_XATTR when not root (kernel overlayfs `-o userxattr` format)."""

MAX_NAME_BYTES = 4096
"""Longest entry name accepted (PATH_MAX): bounds the work a hostile deep path can cause."""

FD_CACHE_SIZE = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RESERVED_XATTRS = ("trusted.overlay.", "user.overlay.")
_ID_LIMIT = 2**32 - 1  # (uid_t)-1 means "unchanged" to chown
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1
_PAX_TIME = re.compile(r"(-?)(\d+)(?:\.(\d*))?")
_ZEROS = bytes(CHUNK)
# Errors of the machine rather than of the tar: not reported as bad input.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


@dataclass
class UnpackStats:
    """What one unpack produced."""

    entries: int = 0
    bytes: int = 0
    """Content bytes of regular files."""
    whiteouts: int = 0
    opaque_dirs: int = 0


@dataclass(frozen=True, slots=True)
class _Attrs:
    """The metadata of one tar entry, parsed once."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    xattrs: dict[str, bytes]


class _EntryError(Exception):
    """A problem with one entry; `unpack_tar` adds the entry's name."""


class _Unsafe(_EntryError):
    """The entry would write outside the layer or through a symlink."""


class _Invalid(_EntryError):
    """The entry is well-formed tar but cannot be unpacked (type, owner, needs root…)."""


class _InputError(Exception):
    """An I/O error of the input stream, kept apart from errors writing the layer."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def unpack_tar(
    stream: BinaryIO,
    dest_fd: int,
    *,
    on_entry: Callable[[tarfile.TarInfo], None] | None = None,
) -> UnpackStats:
    """Unpack the uncompressed tar `stream` into the empty directory `dest_fd`.

    Raises BadInput for a corrupt, truncated or hostile tar. On failure `dest_fd`
    holds a partial tree that the caller deletes; every fd opened here is closed.
    """
    layer = _Layer(dest_fd)
    try:
        tar = open_tar_stream(stream)
        try:
            while (member := next_member(tar)) is not None:
                tar.members.clear()  # stream mode would keep every TarInfo alive
                layer.trim_cache()
                _unpack_member(layer, tar, member)
                layer.stats.entries += 1
                if on_entry is not None:
                    on_entry(member)
            layer.finish()
        finally:
            tar.close()
        while stream.read(CHUNK):  # the caller's digest must cover the end blocks
            pass
    finally:
        layer.close()
    return layer.stats


# --- reading the tar ------------------------------------------------------------


class _StrictTarInfo(tarfile.TarInfo):
    """A TarInfo whose header errors are fatal.

    tarfile treats a bad, truncated or missing header after the first one as the
    end of the archive, which would let a truncated or corrupt layer pass.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        offset = tarfile_.offset
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the regular end of the archive
        except tarfile.EmptyHeaderError:
            read = tarfile_.fileobj.tell()  # type: ignore[union-attr]
            if read == 0:
                raise BadInput("not a valid tar archive: the input is empty") from None
            raise BadInput(
                f"truncated tar archive: it ends at byte {read} without an end-of-archive marker"
            ) from None
        except tarfile.TruncatedHeaderError:
            raise BadInput(
                f"truncated tar archive: it ends inside the header at byte {offset}"
            ) from None
        except (tarfile.HeaderError, tarfile.ReadError, ValueError, IndexError) as e:
            raise BadInput(f"not a valid tar archive: {e} (header at byte {offset})") from None


def open_tar_stream(stream: BinaryIO) -> tarfile.TarFile:
    try:
        return tarfile.open(
            fileobj=stream,
            mode="r|",
            tarinfo=_StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise BadInput(f"not a valid tar archive: {e}") from None


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except tarfile.ReadError as e:
        raise BadInput(f"truncated tar archive: {e}") from None
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise BadInput(f"not a valid tar archive: {e}") from None


def _unpack_member(layer: _Layer, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Unpack one member, turning every failure into an error that names it."""
    name = member.name
    try:
        _dispatch(layer, tar, member)
    except _Unsafe as e:
        raise BadInput(f"unsafe entry {name!r} in tar: {e}") from None
    except _Invalid as e:
        raise BadInput(f"cannot unpack entry {name!r}: {e}") from None
    except _InputError as e:
        raise e.error from None
    except tarfile.ReadError as e:
        raise BadInput(f"truncated tar archive: {e} in entry {name!r}") from None
    except (tarfile.TarError, EOFError) as e:
        raise BadInput(f"not a valid tar archive: {e} in entry {name!r}") from None
    except OSError as e:
        message = f"cannot unpack entry {name!r}: {e.strerror or e}"
        if e.errno in _ENVIRONMENT_ERRNOS:
            raise ImgfsError(message) from e
        raise BadInput(message) from e


def _dispatch(layer: _Layer, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    parts = _split_name(member.name)
    if parts and parts[-1].startswith(WHITEOUT_PREFIX):
        _whiteout(layer, parts)
        return
    if member.size < 0:
        raise _Invalid("negative size")
    if member.islnk():
        layer.hardlink(parts, _split_name(member.linkname, what="hard link target"))
        return
    attrs = _attrs(member)
    if not parts:
        if not member.isdir():
            raise _Unsafe("the layer root must be a directory")
        layer.set_root(attrs)
    elif member.isdir():
        layer.mkdir(parts, attrs)
    elif member.isreg():
        source = tar.extractfile(member)
        assert source is not None
        layer.write_file(parts, attrs, source, sparse=member.issparse())
    elif member.issym():
        layer.symlink(parts, member.linkname, attrs)
    elif member.isfifo():
        layer.mknod(parts, stat.S_IFIFO, 0, attrs)
    elif member.ischr() or member.isblk():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            device = os.makedev(member.devmajor, member.devminor)
        except (OverflowError, ValueError):
            raise _Invalid("device number out of range") from None
        layer.mknod(parts, kind, device, attrs)
    else:
        raise _Invalid(f"unsupported entry type {member.type!r}")


def _whiteout(layer: _Layer, parts: list[str]) -> None:
    base = parts[-1]
    if base == OPAQUE_MARKER:
        layer.make_opaque(parts[:-1])
    elif base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        raise _Unsafe("reserved whiteout name")
    elif base[len(WHITEOUT_PREFIX) :] in ("", ".", ".."):
        raise _Unsafe("whiteout of an invalid name")
    else:
        layer.whiteout(parts[:-1], base[len(WHITEOUT_PREFIX) :])


def _split_name(name: str, *, what: str = "name") -> list[str]:
    """The components of a tar name below the layer root; raises _Unsafe if it escapes."""
    if "\x00" in name:
        raise _Unsafe(f"{what} contains a NUL byte")
    if not name:
        raise _Unsafe(f"{what} is empty (or was '/')")
    if name.startswith("/"):
        raise _Unsafe(f"{what} is absolute")
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise _Unsafe(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _Unsafe(f"{what} has a '..' component")
    for part in parts[:-1]:
        if part.startswith(WHITEOUT_PREFIX):
            raise _Unsafe(f"{what} has a whiteout {part!r} as a directory")
    return parts


def _attrs(member: tarfile.TarInfo) -> _Attrs:
    for id_ in (member.uid, member.gid):
        if not 0 <= id_ < _ID_LIMIT:
            raise _Invalid(f"owner id {id_} out of range")
    mtime_ns = _pax_time_ns(member.pax_headers.get("mtime"))
    if mtime_ns is None:
        mtime_ns = _clamp_ns(int(member.mtime) * 1_000_000_000)
    atime_ns = _pax_time_ns(member.pax_headers.get("atime"))
    return _Attrs(
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        atime_ns=mtime_ns if atime_ns is None else atime_ns,
        mtime_ns=mtime_ns,
        xattrs=_xattrs(member.pax_headers),
    )


def _pax_time_ns(value: str | None) -> int | None:
    """A pax time ("1700000000.123456789") in ns; tarfile's float drops the last digits."""
    if value is None:
        return None
    match = _PAX_TIME.fullmatch(value)
    if match is None:
        return None
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
    return _clamp_ns(-ns if sign else ns)


def _clamp_ns(ns: int) -> int:
    return min(max(ns, _NS_MIN), _NS_MAX)


def _xattrs(pax: dict[str, str]) -> dict[str, bytes]:
    """Extended attributes from SCHILY.xattr.* (raw) and LIBARCHIVE.xattr.* (base64) records."""
    result: dict[str, bytes] = {}
    for key, value in pax.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            # tarfile decodes values as UTF-8 with surrogateescape: this restores the bytes
            result[name] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(
                key[len("LIBARCHIVE.xattr.") :], encoding="utf-8", errors="surrogateescape"
            )
            try:
                result[name] = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise _Invalid(f"bad base64 value of xattr {name!r}") from None
    for name in result:
        if not name or "\x00" in name:
            raise _Invalid(f"invalid xattr name {name!r}")
        if name.startswith(_RESERVED_XATTRS):
            raise _Unsafe(f"xattr {name!r} is reserved for overlayfs")
    return result


# --- writing the layer ----------------------------------------------------------


class _Layer:
    """The layer directory being written, with an LRU cache of open directory fds.

    Every directory is reached from a cached ancestor fd, one component at a
    time with O_NOFOLLOW, so no path is re-walked per entry and no symlink is
    ever followed. The cache is trimmed only between entries, so an fd in use by
    the current entry is never closed under it; removing a directory closes the
    fds of its whole subtree.
    """

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.is_root = os.geteuid() == 0
        self.stats = UnpackStats()
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._dir_attrs: dict[str, _Attrs] = {}
        self._whiteouts: set[str] = set()
        self._opaque: set[str] = set()
        # Like an implicit directory until a "./" entry says otherwise.
        self._own(root_fd, 0, 0)
        os.fchmod(root_fd, 0o755)

    # -- fd cache

    def dir_fd(self, key: str, *, create: bool) -> int:
        """An fd of directory `key` ("a/b"); missing directories are made if `create`."""
        if not key:
            return self.root_fd
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        missing = []
        ancestor = key
        while ancestor and ancestor not in self._fds:
            missing.append(ancestor)
            ancestor = ancestor.rpartition("/")[0]
        fd = self._fds[ancestor] if ancestor else self.root_fd
        for path in reversed(missing):
            fd = self._open_dir(fd, path, create=create)
            self._fds[path] = fd
        return fd

    def _open_dir(self, parent_fd: int, key: str, *, create: bool) -> int:
        name = key.rpartition("/")[2]
        try:
            return open_beneath(parent_fd, name, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                raise
            return self._mkdir_implicit(parent_fd, name)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent_fd).st_mode):
            raise _Unsafe(f"parent {key!r} is a symlink")
        if not (create and key in self._whiteouts):
            raise _Unsafe(f"parent {key!r} is not a directory")
        # A directory over this layer's own whiteout: opaque, it replaces the lower one.
        os.unlink(name, dir_fd=parent_fd)
        self._whiteouts.discard(key)
        fd = self._mkdir_implicit(parent_fd, name)
        self._set_opaque(fd, key)
        return fd

    def _mkdir_implicit(self, parent_fd: int, name: str) -> int:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
        fd = open_beneath(parent_fd, name, _DIR_FLAGS)
        try:
            self._own(fd, 0, 0)
            os.fchmod(fd, 0o755)  # the umask may have masked mkdir's mode
        except BaseException:
            os.close(fd)
            raise
        return fd

    def trim_cache(self) -> None:
        while len(self._fds) > FD_CACHE_SIZE:
            os.close(self._fds.popitem(last=False)[1])

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def _forget_tree(self, key: str) -> None:
        """Drop all state about directory `key` and its subtree (it was removed)."""
        prefix = key + "/"
        for path in [p for p in self._fds if p == key or p.startswith(prefix)]:
            os.close(self._fds.pop(path))
        self._dir_attrs = {
            p: a for p, a in self._dir_attrs.items() if p != key and not p.startswith(prefix)
        }
        self._whiteouts = {p for p in self._whiteouts if not p.startswith(prefix)}
        self._opaque = {p for p in self._opaque if p != key and not p.startswith(prefix)}

    # -- entries

    def set_root(self, attrs: _Attrs) -> None:
        self._own(self.root_fd, attrs.uid, attrs.gid)
        _set_xattrs(self.root_fd, attrs.xattrs)
        self._dir_attrs[""] = attrs

    def mkdir(self, parts: list[str], attrs: _Attrs) -> None:
        parent_fd, key, name = self._parent(parts)
        opaque = False
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
                opaque = self._remove(parent_fd, key, name)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = self.dir_fd(key, create=False)
        if opaque:
            self._set_opaque(fd, key)
        self._own(fd, attrs.uid, attrs.gid)
        _set_xattrs(fd, attrs.xattrs)
        self._dir_attrs[key] = attrs  # mode and times once all children exist

    def write_file(
        self, parts: list[str], attrs: _Attrs, source: BinaryIO, *, sparse: bool
    ) -> None:
        parent_fd, key, name = self._parent(parts)
        fd = self._create(
            parent_fd, key, name, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
        )
        try:
            self.stats.bytes += _copy_sparse(source, fd) if sparse else _copy(source, fd)
            self._own(fd, attrs.uid, attrs.gid)
            os.fchmod(fd, attrs.mode)  # after chown, which clears setuid/setgid
            _set_xattrs(fd, attrs.xattrs)  # after chown, which clears security.capability
            os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))
        finally:
            os.close(fd)

    def symlink(self, parts: list[str], target: str, attrs: _Attrs) -> None:
        if not target or "\x00" in target:
            raise _Invalid("symlink target is empty or contains a NUL byte")
        parent_fd, key, name = self._parent(parts)
        self._create(parent_fd, key, name, lambda: os.symlink(target, name, dir_fd=parent_fd))
        self._finish_special(parent_fd, name, attrs, chmod=False)

    def mknod(self, parts: list[str], kind: int, device: int, attrs: _Attrs) -> None:
        parent_fd, key, name = self._parent(parts)

        def make() -> None:
            if kind == stat.S_IFIFO:
                os.mkfifo(name, 0o600, dir_fd=parent_fd)
                return
            try:
                os.mknod(name, kind | 0o600, device, dir_fd=parent_fd)
            except PermissionError:
                raise _Invalid("creating a device node needs root") from None

        self._create(parent_fd, key, name, make)
        self._finish_special(parent_fd, name, attrs, chmod=True)

    def hardlink(self, parts: list[str], target: list[str]) -> None:
        if not parts:
            raise _Unsafe("a hard link cannot replace the layer root")
        if not target:
            raise _Unsafe("hard link target is the layer root")
        tkey = "/".join(target)
        if tkey in self._whiteouts or target[-1].startswith(WHITEOUT_PREFIX):
            raise _Unsafe(f"hard link target {tkey!r} is a whiteout")
        try:
            tparent_fd = self.dir_fd("/".join(target[:-1]), create=False)
            mode = os.lstat(target[-1], dir_fd=tparent_fd).st_mode
        except _Unsafe as e:
            raise _Unsafe(f"hard link target {tkey!r}: {e}") from None
        except FileNotFoundError:
            raise _Unsafe(f"hard link target {tkey!r} is not earlier in this layer") from None
        if stat.S_ISDIR(mode):
            raise _Unsafe(f"hard link target {tkey!r} is a directory")
        parent_fd, key, name = self._parent(parts)
        if key == tkey:
            return  # linked to itself: already there
        if tkey.startswith(key + "/"):
            raise _Unsafe(f"hard link target {tkey!r} is inside the entry it replaces")
        self._create(
            parent_fd,
            key,
            name,
            # follow_symlinks=False: a link to a symlink links the symlink itself
            lambda: os.link(
                target[-1], name, src_dir_fd=tparent_fd, dst_dir_fd=parent_fd, follow_symlinks=False
            ),
        )

    def whiteout(self, dir_parts: list[str], name: str) -> None:
        parent_fd = self.dir_fd("/".join(dir_parts), create=True)
        key = "/".join([*dir_parts, name])
        try:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd)
        except FileExistsError:
            # This layer has NAME itself; a directory must still hide the lower one.
            if stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
                self._set_opaque(self.dir_fd(key, create=False), key)
            return
        self._whiteouts.add(key)

    def make_opaque(self, dir_parts: list[str]) -> None:
        key = "/".join(dir_parts)
        self._set_opaque(self.dir_fd(key, create=True), key)

    def finish(self) -> None:
        """Apply directory modes and times, children before parents (creating children
        changes a directory's mtime, and a read-only directory would refuse them)."""
        for key in sorted(self._dir_attrs, reverse=True):  # "a/b" sorts after "a"
            attrs = self._dir_attrs[key]
            fd = self.dir_fd(key, create=False)
            os.fchmod(fd, attrs.mode)
            os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))
            self.trim_cache()
        self.stats.whiteouts = len(self._whiteouts)
        self.stats.opaque_dirs = len(self._opaque)

    # -- helpers

    def _parent(self, parts: list[str]) -> tuple[int, str, str]:
        """(fd of the entry's parent, created if missing; the entry's key; its name)."""
        parent_fd = self.dir_fd("/".join(parts[:-1]), create=True)
        return parent_fd, "/".join(parts), parts[-1]

    def _create(self, parent_fd: int, key: str, name: str, make: Callable[[], _T]) -> _T:
        """Run `make`; if the name exists, remove the old entry and run it again."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, key, name)
            return make()

    def _remove(self, parent_fd: int, key: str, name: str) -> bool:
        """Remove an earlier entry without following symlinks; True if it was a whiteout."""
        was_whiteout = key in self._whiteouts
        if stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
            self._forget_tree(key)
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
            self._whiteouts.discard(key)
        return was_whiteout

    def _finish_special(self, parent_fd: int, name: str, attrs: _Attrs, *, chmod: bool) -> None:
        """Metadata of an entry that is not opened (symlink, fifo, device)."""
        if self.is_root:
            os.chown(name, attrs.uid, attrs.gid, dir_fd=parent_fd, follow_symlinks=False)
        if chmod:  # the entry was just created by mknod: not a symlink
            os.chmod(name, attrs.mode, dir_fd=parent_fd)
        if attrs.xattrs:
            # No *xattrat syscalls: reach the entry through the verified parent fd.
            _set_xattrs(f"/proc/self/fd/{parent_fd}/{name}", attrs.xattrs)
        os.utime(name, ns=(attrs.atime_ns, attrs.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _own(self, fd: int, uid: int, gid: int) -> None:
        if self.is_root:  # ownership cannot be preserved otherwise
            os.fchown(fd, uid, gid)

    def _set_opaque(self, fd: int, key: str) -> None:
        os.setxattr(fd, OPAQUE_XATTR if self.is_root else USER_OPAQUE_XATTR, b"y")
        self._opaque.add(key)


def _set_xattrs(target: int | str, xattrs: dict[str, bytes]) -> None:
    """Set xattrs on an fd, or on a path whose last component is never followed."""
    for name, value in xattrs.items():
        try:
            set_xattr(target, name, value)
        except OSError as e:
            if e.errno in _ENVIRONMENT_ERRNOS:
                raise
            raise _Invalid(f"cannot set xattr {name!r}: {e.strerror}") from None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read(source: BinaryIO) -> bytes:
    try:
        return source.read(CHUNK)
    except OSError as e:
        raise _InputError(e) from e


def _copy(source: BinaryIO, fd: int) -> int:
    total = 0
    while chunk := _read(source):
        _write_all(fd, chunk)
        total += len(chunk)
    return total


def _copy_sparse(source: BinaryIO, fd: int) -> int:
    """Copy a sparse member, leaving holes where it reads zeros."""
    total = 0
    while chunk := _read(source):
        if chunk == _ZEROS[: len(chunk)]:
            os.lseek(fd, len(chunk), os.SEEK_CUR)
        else:
            _write_all(fd, chunk)
        total += len(chunk)
    os.ftruncate(fd, total)
    return total
