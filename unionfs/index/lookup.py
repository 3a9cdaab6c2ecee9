"""(parent, name) → id through the index's hash table: C via cffi, or the same in Python.

The C function (native/index.c) is the FUSE daemon's hot path: one call, no allocation,
re-validating the header each time so a corrupt file can never make it read out of
bounds. `lookup_py` is the fallback and follows the same steps in the same order, so
both give the same answer even on a corrupt file (a test checks it). IMGFS_NO_NATIVE=1
forces the fallback, as in unionfs.safeio.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from unionfs.index.format import (
    E_NAME_LEN,
    E_NAME_OFF,
    E_PARENT,
    ENTRY_SIZE,
    MAX_NAME,
    SLOT,
    SLOT_SIZE,
    Layout,
    name_hash,
    parse_layout,
)

try:
    from unionfs._native import ffi as _ffi
    from unionfs._native import lib as _lib
except ImportError:  # not built: the Python lookup still works
    _ffi = _lib = None

# A module built before the index code existed lacks the symbols: treat it as absent.
_HAS_SYMBOLS = _lib is not None and hasattr(_lib, "imgfs_index_lookup")
HAVE_NATIVE: bool = _HAS_SYMBOLS and os.environ.get("IMGFS_NO_NATIVE", "") in ("", "0")

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _native_hash(parent: int, name: bytes) -> int:
    return _lib.imgfs_index_hash(parent, name, len(name))


native_hash: Callable[[int, bytes], int] | None = _native_hash if HAVE_NATIVE else None
"""The C `name_hash` when native code is in use (the builder hashes every entry)."""


def native_buffer(buf: Any) -> Any:
    """A cffi pointer into `buf` (an mmap) for `lookup_native`; ffi.release() it before
    closing the mmap."""
    if not _HAS_SYMBOLS:
        raise RuntimeError("unionfs._native has no index lookup (not built?)")
    return _ffi.from_buffer("uint8_t[]", buf)


def lookup_native(ptr: Any, length: int, parent: int, name: bytes) -> int:
    """The C lookup, whatever HAVE_NATIVE says (tests compare both). 0 = not found."""
    if parent < 0 or parent > 0xFFFF_FFFF_FFFF_FFFF:
        return 0
    return _lib.imgfs_index_lookup(ptr, length, parent, name, len(name))


def lookup_py(buf: Any, parent: int, name: bytes, layout: Layout | None = None) -> int:
    """Pure-Python twin of imgfs_index_lookup. `layout` skips re-parsing the header
    (pass it only for the buffer it came from). 0 = not found."""
    if layout is None:
        layout = parse_layout(buf, strict=False)
        if layout is None:
            return 0
    n = layout.entry_count
    namelen = len(name)
    if not 0 < parent <= n or not 0 < namelen <= MAX_NAME:
        return 0
    h = name_hash(parent, name)
    tag = h >> 32
    slots = layout.hash_slots
    mask = slots - 1
    i = h & mask
    hash_off, entries_off = layout.hash_off, layout.entries_off
    names_off, names_len = layout.names_off, layout.names_len
    for _ in range(slots):
        id_, slot_tag = SLOT.unpack_from(buf, hash_off + i * SLOT_SIZE)
        if id_ == 0:
            return 0
        if slot_tag == tag and id_ <= n:
            rec = entries_off + (id_ - 1) * ENTRY_SIZE
            if (
                _U32.unpack_from(buf, rec + E_PARENT)[0] == parent
                and _U16.unpack_from(buf, rec + E_NAME_LEN)[0] == namelen
            ):
                off = _U64.unpack_from(buf, rec + E_NAME_OFF)[0]
                start = names_off + off
                in_bounds = off <= names_len and namelen <= names_len - off
                if in_bounds and buf[start : start + namelen] == name:
                    return id_
        i = (i + 1) & mask
    return 0
