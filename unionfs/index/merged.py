"""MergedIndex: read access to a persisted index, mmapped so opening is O(1).

Every mount of an image opens the same file; pages are shared through the page cache
and only the ones lookups touch are ever read. Records are decoded on demand. Index files
are only ever replaced by rename (build_index), never changed in place: a mapping keeps
the inode it opened, and truncating a mapped file would make reads fault (SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from unionfs.index import lookup as _lookup
from unionfs.index.build import build_index
from unionfs.index.format import (
    E_CHILDREN,
    E_LINKS,
    E_MODE,
    ENTRY,
    ENTRY_SIZE,
    HEADER,
    LINK,
    Layout,
    parse_layout,
)

ROOT_ID = 1
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class LowerEntry:
    """One merged entry: its place in the tree and the lstat of the layer providing it.

    `nlink` is what overlayfs reports: for a directory 2 + its merged subdirectories, for
    anything else the layer inode's own count (names hidden by higher layers included);
    `link_group` lists only the visible names.
    """

    id: int
    parent: int  # the root's parent is the root
    name: bytes  # b"" for the root
    layer: int  # index into lower_dirs (0 = top) of the layer holding this entry
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blocks: int
    link_group: int  # smallest id of its hard-link group; == id when not a hard link


_FIELD_SETTERS = tuple(getattr(LowerEntry, f.name).__set__ for f in fields(LowerEntry))


def _new_entry(values: tuple[Any, ...]) -> LowerEntry:
    """LowerEntry(*values), 2x faster than the frozen dataclass's __init__ (which goes
    through object.__setattr__ per field): entry() is behind every getattr."""
    entry = object.__new__(LowerEntry)
    for set_field, value in zip(_FIELD_SETTERS, values, strict=True):
        set_field(entry, value)
    return entry


class MergedIndex:
    """An open index file. Ids are 1..len(self); unknown ids raise KeyError, and a
    corrupt record found on the way raises ValueError (never a crash)."""

    lower_dirs: list[Path]

    def __init__(self, mm: mmap.mmap, layout: Layout, lower_dirs: Sequence[Path]) -> None:
        self.lower_dirs = [Path(d) for d in lower_dirs]
        self._mm: mmap.mmap | None = mm
        self._layout = layout
        self._n = layout.entry_count
        self._ptr: Any = None
        if _lookup.HAVE_NATIVE:
            self._ptr = _lookup.native_buffer(mm)
            self._c_lookup = _lookup._lib.imgfs_index_lookup
            self._len = len(mm)

    @classmethod
    def open(cls, path: Path, lower_dirs: Sequence[Path]) -> MergedIndex:
        """Map the index at `path`; ValueError if it is corrupt or not for len(lower_dirs)
        layers (OSError if it can't be read)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"{path}: empty merged index")
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        layout = parse_layout(mm, strict=True)
        if layout is None or layout.layer_count != len(lower_dirs):
            mm.close()
            why = "corrupt" if layout is None else f"built for {layout.layer_count} layers"
            raise ValueError(f"{path}: not a usable merged index ({why})")
        return cls(mm, layout, lower_dirs)

    @classmethod
    def build(cls, lower_dirs: Sequence[Path], path: Path) -> MergedIndex:
        """Build the index of `lower_dirs` (top first) at `path`, then open it."""
        build_index(lower_dirs, path)
        return cls.open(path, lower_dirs)

    @classmethod
    def open_or_build(cls, path: Path, lower_dirs: Sequence[Path]) -> MergedIndex:
        """Open the persisted index, (re)building it if it is missing or unusable."""
        try:
            return cls.open(path, lower_dirs)
        except (FileNotFoundError, ValueError):
            return cls.build(lower_dirs, path)

    def __len__(self) -> int:
        return self._n

    def __enter__(self) -> MergedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def mapping(self) -> mmap.mmap:
        """The mapped index file (the C fast path reads it in place)."""
        return self._buf

    @property
    def _buf(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError("merged index is closed")
        return self._mm

    def lookup(self, parent_id: int, name: bytes) -> int | None:
        """The id of `name` in directory `parent_id`, or None (also for a non-directory
        or unknown parent)."""
        if self._ptr is not None:
            try:
                return self._c_lookup(self._ptr, self._len, parent_id, name, len(name)) or None
            except OverflowError:  # a negative or huge parent id
                return None
        return _lookup.lookup_py(self._buf, parent_id, name, self._layout) or None

    def _record(self, id: int) -> int:
        if not 0 < id <= self._n:
            raise KeyError(id)
        return self._layout.entries_off + (id - 1) * ENTRY_SIZE

    def entry(self, id: int) -> LowerEntry:
        buf, layout = self._buf, self._layout
        rec = ENTRY.unpack_from(buf, self._record(id))
        (size, rdev, atime, mtime, ctime, blocks, name_off, parent, mode, uid, gid, nlink,
         link_group, _, _, _, _, name_len, layer, _) = rec  # fmt: skip
        if name_off > layout.names_len or name_len > layout.names_len - name_off:
            raise ValueError(f"merged index: entry {id} has its name out of bounds")
        start = layout.names_off + name_off
        name = buf[start : start + name_len]
        return _new_entry((
            id, parent, name, layer, mode, uid, gid, size, nlink, rdev,
            atime, mtime, ctime, blocks, link_group,
        ))  # fmt: skip

    def _span(self, id: int, field_off: int) -> tuple[int, int]:
        """The (start, count) pair at `field_off` of a record (children or links)."""
        return struct.unpack_from("<II", self._buf, self._record(id) + field_off)

    def children(self, dir_id: int) -> Sequence[int]:
        """Ids of the merged children of `dir_id`, sorted by name (empty for a non-dir)."""
        first, count = self._span(dir_id, E_CHILDREN)
        if not count:
            return range(0)
        if first <= dir_id or first + count - 1 > self._n:
            raise ValueError(f"merged index: children of {dir_id} out of range")
        return range(first, first + count)

    def path(self, id: int) -> bytes:
        """The entry's path relative to the root, b"a/b/c" (b"" for the root)."""
        parts: list[bytes] = []
        while id != ROOT_ID:
            e = self.entry(id)
            if not 0 < e.parent < id:  # breadth-first ids: parents come first
                raise ValueError(f"merged index: entry {id} has a bad parent")
            parts.append(e.name)
            id = e.parent
        return b"/".join(reversed(parts))

    def link_group(self, id: int) -> Sequence[int]:
        """Every id of the entry's hard-link group, ascending (just (id,) if none)."""
        start, count = self._span(id, E_LINKS)
        if not count:
            return (id,)
        layout = self._layout
        if start > layout.links_count or count > layout.links_count - start:
            raise ValueError(f"merged index: link group of {id} out of range")
        return struct.unpack_from(f"<{count}I", self._buf, layout.links_off + start * LINK.size)

    def verify(self) -> None:
        """Check the body checksum (reads the whole file, so `open` doesn't); ValueError."""
        if zlib.crc32(self._buf[HEADER.size :]) != self._layout.body_crc32:
            raise ValueError("merged index: checksum mismatch")

    def is_dir(self, id: int) -> bool:
        return stat.S_ISDIR(_U32.unpack_from(self._buf, self._record(id) + E_MODE)[0])

    def close(self) -> None:
        """Unmap the file. No lookup may be running (in any thread) while this runs."""
        if self._ptr is not None:
            _lookup._ffi.release(self._ptr)
            self._ptr = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
