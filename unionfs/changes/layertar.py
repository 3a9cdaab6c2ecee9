"""An OCI layer tar from a container's upper dir (kernel overlayfs format).

The upper dir already holds only what changed; this turns its overlayfs encoding into the
OCI layer encoding (image-spec layer.md):

- a whiteout (character device 0:0) becomes an empty file `.wh.NAME`;
- an opaque directory (`trusted.overlay.opaque=y`, or `user.overlay.opaque=y` in the
  `-o userxattr` format) gets a `DIR/.wh..wh..opq` entry;
- a renamed directory (`trusted.overlay.redirect`) has no OCI equivalent: a layer can only
  say "this path now holds this content". So the directory is written whole, as the
  container shows it: marked opaque, with its lower children (read from the merged index
  at the redirect target, through the layer dirs) merged with its upper children, and so on
  all the way down (a renamed directory's subdirectories are written whole too). Its old
  path needs nothing more: moving a lower directory away leaves a whiteout there, which is
  written like any other. A lower file written this way that has hard links elsewhere in
  the merged tree gets those other names written too (as tar hard links, with their parent
  directories' metadata), so that the names stay one inode in the committed image;
- hard links are tar hard links (LNKTYPE) to the group's first name in path order;
- symlinks, fifos and devices are kept; sockets cannot be put in a tar and are left out;
- ownership is numeric (no user or group names), modes keep setuid/setgid/sticky bits,
  mtimes keep nanoseconds (a PAX `mtime` record when the fraction is not zero);
- xattrs are PAX `SCHILY.xattr.NAME` records, except the overlay's own (`trusted.overlay.*`,
  including the copy-up origin) and the names OCI unpackers refuse as overlayfs-reserved:
  a user's own `trusted.overlay.X` (stored escaped as `trusted.overlay.overlay.X`) and
  `user.overlay.*`. Writing those would make the layer unloadable (imgfs's own unpacker
  rejects them as unsafe), so they are dropped.

The tar is deterministic: entries sorted by path (bytes), the root as `./`, headers built
here field by field (ustar + PAX, no user/group names, no atime/ctime, fixed whiteout
headers), so the same upper dir always gives the same bytes, hence the same diff_id.
Copied-up entries are written even when unchanged (as docker does).

The upper dir and the layer dirs are only read, beneath fds of them, without following
symlinks. Nothing is buffered but the list of entries: file contents stream through.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol

from unionfs.errors import ImgfsError
from unionfs.fs.layerfds import (
    OPAQUE_XATTR,
    REDIRECT_XATTR,
    at,
    get_xattr,
    is_whiteout,
    open_dir,
    shown_xattr,
)
from unionfs.index import ROOT_ID, MergedIndex
from unionfs.safeio import open_beneath

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["LayerTarStats", "write_layer_tar"]

BLOCK = 512
CHUNK = 1 << 20
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
RESERVED_XATTRS = (b"trusted.overlay.", b"user.overlay.")
"""Names an OCI unpacker refuses (ours does): the overlayfs private namespaces."""
FD_CACHE_SIZE = 64
# Both upper dir formats of kernel overlayfs are read: the default `trusted.overlay.*`
# and the `user.overlay.*` of `-o userxattr` (unprivileged mounts). A user's own
# `user.overlay.*` xattr could be mistaken for a marker in a trusted-format upper dir,
# but no layer could carry it anyway (OCI unpackers refuse the name).
_OPAQUE_XATTRS = (OPAQUE_XATTR, "user.overlay.opaque")
_REDIRECT_XATTRS = (REDIRECT_XATTR, "user.overlay.redirect")

_UPPER, _LOWER, _WHITEOUT, _OPAQUE = range(4)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TYPEFLAGS = {
    stat.S_IFREG: b"0",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFDIR: b"5",
    stat.S_IFIFO: b"6",
}


class _Progress(Protocol):
    total: int | None

    def advance(self, n: int) -> None: ...


@dataclass
class LayerTarStats:
    entries: int = 0
    bytes: int = 0
    """Content bytes of regular files."""
    skipped: list[str] = field(default_factory=list)
    """Paths left out because a tar cannot hold them (sockets)."""


@dataclass(slots=True)
class _Item:
    """One tar entry to write. `layer` is -1 for the upper dir."""

    path: bytes
    kind: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    rdev: int = 0
    mtime_ns: int = 0
    ino: int = 0
    layer: int = -1
    lower_id: int = 0
    link_key: tuple[object, ...] | None = None


def write_layer_tar(
    upper_dir: Path,
    index: MergedIndex,
    out: BinaryIO,
    progress: _Progress | None = None,
) -> LayerTarStats:
    """Write the OCI layer tar of `upper_dir` (over the lower tree of `index`) to `out`."""
    upper_fd = os.open(upper_dir, _DIR_FLAGS)
    try:
        writer = _LayerTar(upper_fd, index, out)
        try:
            items = writer.collect()
            if progress is not None:
                progress.total = _content_bytes(items)
            writer.emit(items, progress)
        finally:
            writer.close()
        return writer.stats
    finally:
        os.close(upper_fd)


class _LayerTar:
    def __init__(self, upper_fd: int, index: MergedIndex, out: BinaryIO) -> None:
        self.upper_fd = upper_fd
        self.index = index
        self.out = out
        self.stats = LayerTarStats()
        self.root_lower = ROOT_ID if len(index) > 0 else 0
        self.layer_fds: list[int] = []
        for d in index.lower_dirs:
            self.layer_fds.append(os.open(d, _DIR_FLAGS))
        self._fds: OrderedDict[tuple[int, bytes], int] = OrderedDict()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
        for fd in self.layer_fds:
            os.close(fd)
        self.layer_fds = []

    # -- what to write -------------------------------------------------------------

    def collect(self) -> list[_Item]:
        """Every entry of the layer, sorted by path."""
        items: list[_Item] = []
        root_st = os.fstat(self.upper_fd)
        items.append(self._upper_item(b"", root_st))
        root_lower = self.root_lower
        if _is_opaque(f"/proc/self/fd/{self.upper_fd}/."):
            items.append(_Item(OPAQUE_MARKER, _OPAQUE))
            root_lower = 0
        # (path, lower id, flattened, exists in the upper dir); an explicit stack, so that
        # deep trees cannot exhaust Python's recursion limit.
        stack: list[tuple[bytes, int, bool, bool]] = [(b"", root_lower, False, True)]
        while stack:
            path, lower, flat, in_upper = stack.pop()
            hidden: set[bytes] = set()
            if in_upper:
                hidden = self._scan_upper(path, lower, flat, items, stack)
            if flat and lower:
                for child in self.index.children(lower):
                    e = self.index.entry(child)
                    cpath = _join(path, e.name)
                    if e.name in hidden:
                        continue
                    if stat.S_ISSOCK(e.mode):
                        self.stats.skipped.append(_show(cpath))
                        continue
                    items.append(self._lower_item(cpath, child))
                    if stat.S_ISDIR(e.mode):
                        stack.append((cpath, child, True, False))
        items += self._hard_link_aliases(items)
        items.sort(key=lambda i: i.path)
        return items

    def _scan_upper(
        self,
        path: bytes,
        lower: int,
        flat: bool,
        items: list[_Item],
        stack: list[tuple[bytes, int, bool, bool]],
    ) -> set[bytes]:
        """Add the upper entries of directory `path` to `items` and its subdirectories to
        `stack`; returns every name the upper dir has there (whiteouts included)."""
        fd = self._open_upper_dir(path)
        try:
            with os.scandir(fd) as it:
                entries = [(os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in it]
            for name, st in entries:
                cpath = _join(path, name)
                if is_whiteout(st):
                    if not flat:  # in a flattened dir it only hid a lower name: now opaque
                        items.append(_Item(_join(path, WHITEOUT_PREFIX + name), _WHITEOUT))
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    self.stats.skipped.append(_show(cpath))
                    continue
                items.append(self._upper_item(cpath, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(self._subdir(fd, name, cpath, lower, flat, items))
        finally:
            os.close(fd)
        return {name for name, _ in entries}

    def _subdir(
        self, fd: int, name: bytes, path: bytes, lower: int, flat: bool, items: list[_Item]
    ) -> tuple[bytes, int, bool, bool]:
        """How to walk an upper subdirectory: (path, the lower dir it merges, flattened,
        in the upper dir). Opaque and renamed dirs get an opaque marker (unless already
        below one): a renamed dir is written whole from here down, as the layer format has
        no way to say "the lower content of another path"."""
        xpath = at(fd, name)
        if _is_opaque(xpath):
            if not flat:
                items.append(_Item(_join(path, OPAQUE_MARKER), _OPAQUE))
            return path, 0, flat, True
        redirect = _redirect(xpath)
        if redirect is None:
            return path, self._lower_child(lower, name), flat, True
        if not flat:
            items.append(_Item(_join(path, OPAQUE_MARKER), _OPAQUE))
        return path, self._resolve_redirect(lower, redirect), True, True

    def _lower_child(self, parent: int, name: bytes) -> int:
        """The lower directory a non-opaque, non-redirected upper dir merges (as the daemon)."""
        if not parent:
            return 0
        child = self.index.lookup(parent, name) or 0
        return child if child and self.index.is_dir(child) else 0

    def _resolve_redirect(self, parent: int, redirect: bytes) -> int:
        """The lower dir a redirect names: absolute from the root, else relative to the
        parent's lower dir (as kernel overlayfs and the daemon resolve it)."""
        if not redirect.startswith(b"/"):
            return self._lower_child(parent, redirect)
        ident = self.root_lower
        for part in redirect.strip(b"/").split(b"/"):
            if not ident:
                break
            ident = self.index.lookup(ident, part) or 0
        return ident if ident and self.index.is_dir(ident) else 0

    def _hard_link_aliases(self, items: list[_Item]) -> list[_Item]:
        """Other visible names of hard-linked lower files written from a renamed dir.

        Such a file is a new copy in this layer; its other names, still showing the lower
        inode, would stop being links of it. They are written too (same content, hard
        links in the tar), with their directories where the upper dir has none.
        """
        written = {i.lower_id for i in items if i.kind == _LOWER}
        extra: list[_Item] = []
        seen_paths: set[bytes] | None = None
        for item in [i for i in items if i.kind == _LOWER and i.link_key is not None]:
            for alias in self.index.link_group(item.lower_id):
                if alias in written:
                    continue
                written.add(alias)
                chain = self._visible_lower_chain(self.index.path(alias))
                if chain is None:
                    continue
                if seen_paths is None:
                    seen_paths = {i.path for i in items}
                for path, ident in chain:
                    if path not in seen_paths:
                        seen_paths.add(path)
                        extra.append(self._lower_item(path, ident))
        return extra

    def _visible_lower_chain(self, path: bytes) -> list[tuple[bytes, int]] | None:
        """If the container shows lower `path` as it is (no whiteout, opaque or renamed dir,
        or upper entry in the way), the (path, lower id) of it and of its ancestors that
        are not in the upper dir; else None."""
        parts = path.split(b"/")
        chain: list[tuple[bytes, int]] = []
        fd = os.dup(self.upper_fd)
        lower = self.root_lower
        prefix = b""
        in_upper = True
        try:
            for n, part in enumerate(parts):
                lower = (self.index.lookup(lower, part) or 0) if lower else 0
                if not lower:
                    return None
                cpath = prefix + part
                if in_upper:
                    try:
                        st = os.lstat(part, dir_fd=fd)
                    except FileNotFoundError:
                        in_upper = False
                    else:
                        if n == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
                            return None
                        xpath = at(fd, part)
                        if _is_opaque(xpath) or _redirect(xpath) is not None:
                            return None
                        nfd = open_dir(fd, part)
                        os.close(fd)
                        fd = nfd
                if not in_upper:
                    chain.append((cpath, lower))
                prefix = cpath + b"/"
            return chain
        finally:
            os.close(fd)

    def _upper_item(self, path: bytes, st: os.stat_result) -> _Item:
        key = None
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = ("upper", st.st_dev, st.st_ino)
        return _Item(
            path,
            _UPPER,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
            rdev=st.st_rdev,
            mtime_ns=st.st_mtime_ns,
            ino=st.st_ino,
            link_key=key,
        )

    def _lower_item(self, path: bytes, ident: int) -> _Item:
        e = self.index.entry(ident)
        key = None
        if not stat.S_ISDIR(e.mode) and e.nlink > 1:
            key = ("lower", e.link_group)
        return _Item(
            path,
            _LOWER,
            mode=e.mode,
            uid=e.uid,
            gid=e.gid,
            size=e.size if stat.S_ISREG(e.mode) else 0,
            rdev=e.rdev,
            mtime_ns=e.mtime_ns,
            layer=e.layer,
            lower_id=ident,
            link_key=key,
        )

    # -- writing -------------------------------------------------------------------

    def emit(self, items: list[_Item], progress: _Progress | None) -> None:
        first_name: dict[tuple[object, ...], bytes] = {}
        for item in items:
            self._fds_trim()
            if item.kind in (_WHITEOUT, _OPAQUE):
                self._write(_entry(item.path, b"0", 0o644, 0, 0, 0, 0))
            elif item.link_key is not None and item.link_key in first_name:
                self._write(
                    _entry(
                        item.path,
                        b"1",
                        item.mode,
                        item.uid,
                        item.gid,
                        0,
                        item.mtime_ns,
                        link=first_name[item.link_key],
                    )
                )
            else:
                if item.link_key is not None:
                    first_name[item.link_key] = item.path
                self._emit_entry(item, progress)
            self.stats.entries += 1
        self._write(bytes(2 * BLOCK))

    def _emit_entry(self, item: _Item, progress: _Progress | None) -> None:
        kind = stat.S_IFMT(item.mode)
        typeflag = _TYPEFLAGS.get(kind)
        if typeflag is None:  # nothing else is ever collected
            raise ImgfsError(f"{_show(item.path)}: cannot be put in a layer (mode {item.mode:o})")
        if not item.path:
            self._write(
                _entry(
                    b"./",
                    b"5",
                    item.mode,
                    item.uid,
                    item.gid,
                    0,
                    item.mtime_ns,
                    xattrs=_read_xattrs(self.upper_fd),
                )
            )
            return
        parent_fd, name = self._parent(item)
        xattrs = _read_xattrs(at(parent_fd, name))
        name_in_tar = item.path + b"/" if kind == stat.S_IFDIR else item.path
        link = b""
        if kind == stat.S_IFLNK:
            link = os.fsencode(os.readlink(name, dir_fd=parent_fd))
        dev = (os.major(item.rdev), os.minor(item.rdev)) if kind in _DEVICES else (0, 0)
        header = _entry(
            name_in_tar,
            typeflag,
            item.mode,
            item.uid,
            item.gid,
            item.size,
            item.mtime_ns,
            link=link,
            dev=dev,
            xattrs=xattrs,
        )
        if kind != stat.S_IFREG:
            self._write(header)
            return
        fd = self._open_file(item, parent_fd, name)
        try:
            self._write(header)
            self._copy(fd, item, progress)
        finally:
            os.close(fd)

    def _open_file(self, item: _Item, parent_fd: int, name: bytes) -> int:
        try:
            fd = os.open(name, _FILE_FLAGS | os.O_NOATIME, dir_fd=parent_fd)
        except PermissionError:  # O_NOATIME needs ownership (or root)
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent_fd)
        st = os.fstat(fd)
        if item.kind == _UPPER and (st.st_ino != item.ino or st.st_size != item.size):
            os.close(fd)
            raise ImgfsError(f"{_show(item.path)} changed while the layer was being written")
        return fd

    def _copy(self, fd: int, item: _Item, progress: _Progress | None) -> None:
        left = item.size
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                raise ImgfsError(f"{_show(item.path)} shrank while the layer was being written")
            self._write(chunk)
            left -= len(chunk)
            if progress is not None:
                progress.advance(len(chunk))
        pad = -item.size % BLOCK
        if pad:
            self._write(bytes(pad))
        self.stats.bytes += item.size

    def _write(self, data: bytes) -> None:
        self.out.write(data)

    def _parent(self, item: _Item) -> tuple[int, bytes]:
        """(O_PATH fd of the item's parent dir in its upper or layer dir, its name). A lower
        item is read where its layer has it, which differs from its path under a renamed dir."""
        source = item.path if item.layer < 0 else self.index.path(item.lower_id)
        parent, _, name = source.rpartition(b"/")
        key = (item.layer, parent)
        fd = self._fds.get(key)
        if fd is None:
            root = self.upper_fd if item.layer < 0 else self.layer_fds[item.layer]
            fd = open_dir(root, parent)
            self._fds[key] = fd
        else:
            self._fds.move_to_end(key)
        return fd, name

    def _fds_trim(self) -> None:
        while len(self._fds) > FD_CACHE_SIZE:
            os.close(self._fds.popitem(last=False)[1])

    def _open_upper_dir(self, path: bytes) -> int:
        if not path:
            return os.open(".", _DIR_FLAGS, dir_fd=self.upper_fd)
        return open_beneath(self.upper_fd, path, _DIR_FLAGS)


_DEVICES = (stat.S_IFCHR, stat.S_IFBLK)


def _is_opaque(xpath: str) -> bool:
    return any(get_xattr(xpath, name) == b"y" for name in _OPAQUE_XATTRS)


def _redirect(xpath: str) -> bytes | None:
    for name in _REDIRECT_XATTRS:
        value = get_xattr(xpath, name)
        if value is not None:
            return value
    return None


def _content_bytes(items: list[_Item]) -> int:
    """What the tar will hold of file contents (a hard link's content is written once)."""
    keys: set[tuple[object, ...]] = set()
    total = 0
    for item in items:
        if item.link_key is not None:
            if item.link_key in keys:
                continue
            keys.add(item.link_key)
        total += item.size
    return total


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _show(path: bytes) -> str:
    return "/" + os.fsdecode(path)


def _read_xattrs(target: int | str) -> list[tuple[bytes, bytes]]:
    """The entry's xattrs a layer can carry, sorted by name (see the module docstring)."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    result = []
    for raw in sorted(os.fsencode(n) for n in names):
        shown = shown_xattr(raw)
        if shown is None or shown.startswith(RESERVED_XATTRS):
            continue
        try:
            if isinstance(target, int):
                value = os.getxattr(target, raw)
            else:
                value = os.getxattr(target, raw, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue  # removed meanwhile
            raise
        result.append((shown, value))
    return result


# -- tar headers -------------------------------------------------------------------


def _entry(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime_ns: int,
    *,
    link: bytes = b"",
    dev: tuple[int, int] = (0, 0),
    xattrs: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """The header block(s) of one entry: a PAX extended header first when a field does not
    fit ustar (long names, big numbers, sub-second mtimes, xattrs), then the ustar header."""
    pax: list[tuple[bytes, bytes]] = []
    if len(name) > 100:
        pax.append((b"path", name))
        name = name[:100]
    if len(link) > 100:
        pax.append((b"linkpath", link))
        link = link[:100]
    mode = stat.S_IMODE(mode)
    seconds, fraction = divmod(mtime_ns, 1_000_000_000)
    if fraction or not 0 <= seconds < 8**11:
        sign = "-" if mtime_ns < 0 else ""
        whole, frac = divmod(abs(mtime_ns), 1_000_000_000)
        pax.append((b"mtime", f"{sign}{whole}.{frac:09d}".rstrip("0").rstrip(".").encode()))
        seconds = min(max(seconds, 0), 8**11 - 1)
    fields = {"uid": uid, "gid": gid, "size": size}
    for key, value in fields.items():
        if not 0 <= value < 8 ** (11 if key == "size" else 7):
            pax.append((key.encode(), str(value).encode()))
            fields[key] = 0
    for xname, value in xattrs or []:
        pax.append((b"SCHILY.xattr." + xname, value))
    out = b""
    if pax:
        records = b"".join(_pax_record(k, v) for k, v in pax)
        out = _ustar(b"././@PaxHeader", b"x", 0o644, 0, 0, len(records), 0, b"", (0, 0))
        out += records + bytes(-len(records) % BLOCK)
    return out + _ustar(
        name, typeflag, mode, fields["uid"], fields["gid"], fields["size"], seconds, link, dev
    )


def _pax_record(key: bytes, value: bytes) -> bytes:
    """`LEN KEY=VALUE\\n`, where LEN counts the whole record, its own digits included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body)
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _ustar(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    link: bytes,
    dev: tuple[int, int],
) -> bytes:
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(uid, 8)
    block[116:124] = _octal(gid, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(dev[0], 8)
    block[337:345] = _octal(dev[1], 8)
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)
