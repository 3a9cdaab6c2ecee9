"""The on-disk format of a merged lower index: one file, mmapped read-only by every mount.

Everything is little-endian and every region starts at an 8-byte aligned offset::

    header   128 bytes, HEADER below
    entries  entry_count records of ENTRY_SIZE bytes; id N is record N-1
    hash     hash_slots slots of 8 bytes: u32 id (0 = empty), u32 tag (hash >> 32)
    links    links_count u32 ids: the hard-link groups, each contiguous and ascending
    names    names_len bytes: every entry's name, concatenated (no separators)

Ids are dense, 1 = root, numbered breadth-first with each directory's children sorted by
name bytes. So a directory's children are the consecutive ids first_child ..
first_child+child_count-1, already in name order: no separate children array is needed,
and the parent of every non-root entry has a smaller id, so walks up always end.

The hash table maps (parent, name) to id with open addressing (linear probing, at most
half full), keyed by `name_hash`: FNV-1a 64 over the parent id as u32 LE then the name,
finished with murmur3's fmix64 so the low bits (the slot) are well mixed. The tag lets a
probe skip most non-matching slots without touching their records. The same function is
written in native/index.c; a test checks they agree.

Opening needs only the header (O(1)); `body_crc32` covers everything after it and is
checked only by an explicit verify, since that costs a full read of the file.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import astuple, dataclass

MAGIC = b"IMGFSIDX"
VERSION = 1
MAX_ID = 0xFFFF_FFFF
MAX_LAYERS = 0xFFFF
MAX_NAME = 0xFFFF

# magic, version, entry_size, file_size, entry_count, layer_count, entries_off,
# hash_off, hash_slots, links_off, links_count, names_off, names_len, body_crc32,
# header_crc32 (of the bytes before it), reserved.
HEADER = struct.Struct("<8sIIQQQQQQQQQQII24x")
HEADER_CRC_SPAN = 100
assert HEADER.size == 128

# size, rdev, atime_ns, mtime_ns, ctime_ns, blocks, name_off, parent, mode, uid, gid,
# nlink, link_group, first_child, child_count, links_start, links_count, name_len,
# layer, reserved.
ENTRY = struct.Struct("<QQqqqQQIIIIIIIIIIHHI")
ENTRY_SIZE = ENTRY.size
assert ENTRY_SIZE == 104
# Offsets of the fields lookups read without decoding a whole record (also in index.c).
E_NAME_OFF, E_PARENT, E_MODE, E_NAME_LEN = 48, 56, 60, 96
# (u32 start, u32 count) pairs: first_child/child_count and links_start/links_count.
E_CHILDREN, E_LINKS = 80, 88

SLOT = struct.Struct("<II")
SLOT_SIZE = SLOT.size
LINK = struct.Struct("<I")

_M64 = 0xFFFF_FFFF_FFFF_FFFF
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def name_hash(parent: int, name: bytes) -> int:
    """The table's key hash (pure Python; native/index.c has the same function)."""
    h = _FNV_OFFSET
    for b in (parent & 0xFFFF_FFFF).to_bytes(4, "little"):
        h = ((h ^ b) * _FNV_PRIME) & _M64
    for b in name:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the regions are, from a header that passed `parse_layout`."""

    file_size: int
    entry_count: int
    layer_count: int
    entries_off: int
    hash_off: int
    hash_slots: int
    links_off: int
    links_count: int
    names_off: int
    names_len: int
    body_crc32: int
    header_crc32: int


def _region_ok(length: int, off: int, count: int, size: int) -> bool:
    return off <= length and count <= (length - off) // size


def parse_layout(buf: bytes | memoryview, *, strict: bool) -> Layout | None:
    """The layout if the header is sane for a buffer of this length, else None.

    Non-strict is exactly the check native/index.c repeats on every lookup (enough to
    never read out of bounds); strict adds what only `open` checks: the header CRC, the
    exact file size and the links region.
    """
    length = len(buf)
    if length < HEADER.size:
        return None
    fields = HEADER.unpack_from(buf, 0)
    magic, version, entry_size = fields[:3]
    layout = Layout(*fields[3:])
    if magic != MAGIC or version != VERSION or entry_size != ENTRY_SIZE:
        return None
    n, slots = layout.entry_count, layout.hash_slots
    if not 1 <= n <= MAX_ID or slots == 0 or slots & (slots - 1):
        return None
    if not (
        _region_ok(length, layout.entries_off, n, ENTRY_SIZE)
        and _region_ok(length, layout.hash_off, slots, SLOT_SIZE)
        and _region_ok(length, layout.names_off, layout.names_len, 1)
    ):
        return None
    if strict and (
        layout.file_size != length
        or zlib.crc32(buf[:HEADER_CRC_SPAN]) != layout.header_crc32
        or layout.layer_count > MAX_LAYERS
        or not _region_ok(length, layout.links_off, layout.links_count, LINK.size)
    ):
        return None
    return layout


def pack_header(layout: Layout) -> bytes:
    """The header for `layout`, with header_crc32 computed (the one given is ignored)."""
    raw = bytearray(HEADER.pack(MAGIC, VERSION, ENTRY_SIZE, *astuple(layout)[:-1], 0))
    struct.pack_into("<I", raw, HEADER_CRC_SPAN, zlib.crc32(raw[:HEADER_CRC_SPAN]))
    return bytes(raw)
