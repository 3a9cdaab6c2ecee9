"""Serialize a merged tree into the index file format and write it atomically."""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path

from unionfs.index.format import (
    ENTRY,
    ENTRY_SIZE,
    HEADER,
    MAX_ID,
    MAX_LAYERS,
    MAX_NAME,
    SLOT_SIZE,
    Layout,
    align8,
    name_hash,
    pack_header,
)
from unionfs.index.lookup import native_hash
from unionfs.index.merge import MergedTree, merge_layers
from unionfs.store.atomic import write_atomic


def _u32_array(values: Sequence[int] | int) -> array:
    arr = array("I", values) if not isinstance(values, int) else array("I", bytes(4 * values))
    assert arr.itemsize == 4
    return arr


def _le_bytes(arr: array) -> bytes:
    if sys.byteorder == "big":
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def _hash_table(tree: MergedTree) -> tuple[int, bytes]:
    """Open addressing, linear probing, at most half full: (slot count, slot bytes)."""
    n = len(tree.nodes)
    slots = 2
    while slots < 2 * n:
        slots *= 2
    mask = slots - 1
    table = _u32_array(2 * slots)  # (id, tag) pairs
    hash_fn = native_hash or name_hash
    for id_, node in enumerate(tree.nodes[1:], start=2):  # the root has no (parent, name)
        h = hash_fn(node.parent, node.name)
        i = h & mask
        while table[2 * i]:
            i = (i + 1) & mask
        table[2 * i] = id_
        table[2 * i + 1] = h >> 32
    return slots, _le_bytes(table)


def _entries(tree: MergedTree) -> tuple[bytes, bytes, bytes]:
    """(records, names blob, links array) as bytes."""
    nodes = tree.nodes
    records = bytearray(len(nodes) * ENTRY_SIZE)
    names = bytearray()
    links: list[int] = []
    link_start: dict[int, int] = {}  # group leader -> position in links
    for ids in tree.groups:
        link_start[ids[0]] = len(links)
        links.extend(ids)
    pack = ENTRY.pack_into
    for i, node in enumerate(nodes):
        st = node.st
        if len(node.name) > MAX_NAME:
            raise ValueError(f"name too long for the index: {node.name!r}")
        start, count = (link_start[node.link_group], len(node.links)) if node.links else (0, 0)
        pack(
            records,
            i * ENTRY_SIZE,
            st.st_size,
            st.st_rdev,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_blocks,
            len(names),
            node.parent,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            node.nlink,
            node.link_group,
            node.first_child,
            node.child_count,
            start,
            count,
            len(node.name),
            node.layer,
            0,
        )
        names += node.name
    return bytes(records), bytes(names), _le_bytes(_u32_array(links))


def serialize(tree: MergedTree, layer_count: int) -> bytes:
    """The whole index file for `tree` over `layer_count` layers."""
    n = len(tree.nodes)
    if n > MAX_ID or layer_count > MAX_LAYERS:
        raise ValueError(f"too large for the index format: {n} entries, {layer_count} layers")
    records, names, links = _entries(tree)
    slots, table = _hash_table(tree)
    entries_off = HEADER.size
    hash_off = align8(entries_off + len(records))
    links_off = align8(hash_off + slots * SLOT_SIZE)
    names_off = align8(links_off + len(links))
    body = bytearray(names_off + len(names) - HEADER.size)
    for off, blob in ((entries_off, records), (hash_off, table), (links_off, links)):
        body[off - HEADER.size : off - HEADER.size + len(blob)] = blob
    body[names_off - HEADER.size :] = names
    layout = Layout(
        file_size=HEADER.size + len(body),
        entry_count=n,
        layer_count=layer_count,
        entries_off=entries_off,
        hash_off=hash_off,
        hash_slots=slots,
        links_off=links_off,
        links_count=len(links) // 4,
        names_off=names_off,
        names_len=len(names),
        body_crc32=zlib.crc32(body),
        header_crc32=0,
    )
    return pack_header(layout) + body


def build_index(lower_dirs: Sequence[Path], out: Path) -> None:
    """Merge the layers (top first) and persist the index at `out`, atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, serialize(merge_layers(lower_dirs), len(lower_dirs)))
