"""The daemon's C fast path (native/fastpath.c): what lower entries need, without Python.

Profiles of cold `stat` walks put the daemon's cost at ~50 us per request, almost all of
it pyfuse3 and trio (a task switch, a coroutine, the handler), for an answer that is one
hash probe in the mmapped merged index. The C handlers go in front of pyfuse3's LOOKUP,
GETATTR, FORGET, BATCH_FORGET, READDIRPLUS, OPEN, READ, RELEASE, FSYNC and GETXATTR
callbacks in the live session (the slots sessionhook finds) and answer what concerns only
entries the lower layers alone hold: a name in such a directory, an entry's attributes, a
whole listing that fits one reply, the forgetting of what the C side handed out, a
read-only open (beneath the layer's dir, as operations.open does; the C side then reads
and closes the file, its file handles tagged so that Python's are never taken for them,
and a copy-up re-points them at the copy: `reopen`),
and the security.capability probe of every exec. Everything else goes to pyfuse3's own
callback, unchanged. After an answer the C side busy-polls for the next request for up to
IMGFS_FASTPATH_SPIN_US and serves it too, so a burst of lookups never goes through trio
(waking an idle virtual CPU costs more than the answer).

Python stays the authority: NodeTable mirrors into the C map which inodes it holds and
which of them are pure lower entries (`Node.pure_lower`), and adopts, as an ordinary
Node, any inode the C side handed out the first time Python needs it (`adopt`). A
directory stops being pure before anything is written below it (copy-up sets
`node.upper` first), and every handler runs on the one trio thread, so the C side never
answers from a state Python has already left.

IMGFS_FASTPATH=0 (or IMGFS_NO_NATIVE=1) keeps every request in Python.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from unionfs.fs import sessionhook
from unionfs.fs.nodes import Node, NodeTable
from unionfs.index.lookup import HAVE_NATIVE

try:
    from unionfs._fastpath import ffi, lib
except ImportError:  # not built: every request goes through Python
    ffi = lib = None

log = logging.getLogger(__name__)

ENABLE_ENV = "IMGFS_FASTPATH"
STATS_ENV = "IMGFS_FASTPATH_STATS"
"""A file to write the fast path's counters to when the daemon stops (tests, diagnosis)."""
SPIN_ENV = "IMGFS_FASTPATH_SPIN_US"
SPIN_US = 200
"""How long the C side waits for a following request before handing the thread back to
trio: a process walking paths sends its next lookup within a few microseconds."""
_CALLBACKS = (
    "lookup", "getattr", "forget", "forget_multi", "readdirplus", "open", "read", "release",
    "fsync", "getxattr",
)  # fmt: skip
"""In the order of imgfs_fast_callback's numbers."""
_STAT_NAMES = (
    "lookups", "getattrs", "forgets", "passed_to_python", "read_in_c", "listings", "opens",
)  # fmt: skip


def wanted() -> bool:
    """Built, not turned off, and native code in use (IMGFS_NO_NATIVE, read by the index)."""
    return lib is not None and HAVE_NATIVE and os.environ.get(ENABLE_ENV, "1") != "0"


class FastPath:
    """Python's side of the C inode map."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self._buf = ffi.from_buffer("uint8_t[]", index.mapping)
        self._ident = ffi.new("uint32_t *")
        self._parent = ffi.new("uint64_t *")
        self._nlookup = ffi.new("uint64_t *")

    def set(self, ino: int, ident: int, parent: int, no_caps: bool) -> None:
        lib.imgfs_fast_py_set(ino, ident if 0 < ident <= 0xFFFF_FFFF else 0, parent, no_caps)

    def drop(self, ino: int) -> int:
        """Python's count of `ino` reached 0: the lookups the C side still has of it."""
        return lib.imgfs_fast_py_drop(ino)

    def reopen(self, ino: int, upper_fd: int) -> int:
        """Point the files the C side opened on lower file `ino` at `upper_fd` (or, with
        -1, count them)."""
        return lib.imgfs_fast_reopen(ino, upper_fd)

    def held(self) -> list[int]:
        n = lib.imgfs_fast_held(ffi.NULL, 0)
        out = ffi.new("uint64_t[]", max(n, 1))
        n = min(n, lib.imgfs_fast_held(out, n))
        return list(out[0:n])

    def adopt(self, ino: int, table: NodeTable) -> Node | None:
        """The Node for an inode only the C side holds (with its lookup count), now
        Python's; None if the C side holds no such inode."""
        if not lib.imgfs_fast_take(ino, self._ident, self._parent, self._nlookup):
            return None
        ident, nlookup = self._ident[0], self._nlookup[0]
        e = self.index.entry(ident)
        parent = table.get(self._parent[0])  # pinned by the kernel while this one lives
        node = Node(ino, parent, e.name, stat.S_ISDIR(e.mode), lower=ident, nlookup=nlookup)
        return table.add(node)

    def stats(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", len(_STAT_NAMES))
        lib.imgfs_fast_stats(out)
        return dict(zip(_STAT_NAMES, (int(v) for v in out), strict=True))

    def close(self) -> None:
        path = os.environ.get(STATS_ENV)
        if path:
            Path(path).write_text(json.dumps(self.stats()) + "\n")
        ffi.release(self._buf)


def _spin_ns() -> int:
    try:
        return max(0, int(os.environ.get(SPIN_ENV) or SPIN_US)) * 1000
    except ValueError:
        return SPIN_US * 1000


def install(table: NodeTable, index: Any, timeout: float, layer_fds: list[int]) -> FastPath | None:
    """Put the C handlers into the live session (after sessionhook.install) and mirror
    `table` into them; None, nothing changed, if they cannot be used."""
    slots = sessionhook.located
    if slots is None or not all(name in slots.slots for name in _CALLBACKS):
        return None
    if len(index) == 0:
        return None
    fast = FastPath(index)
    originals = ffi.new("void *[]", [ffi.cast("void *", slots.current(n)) for n in _CALLBACKS])
    session = ffi.cast("void *", slots.session)
    fds = ffi.new("int[]", layer_fds or [-1])
    spin = _spin_ns()
    if lib.imgfs_fast_setup(
        fast._buf, len(fast._buf), session, timeout, spin, originals, fds, len(layer_fds)
    ):
        log.warning("merged index not usable by the C fast path")
        ffi.release(fast._buf)
        return None
    table.mirror(fast)
    for i, name in enumerate(_CALLBACKS):
        slots.patch(name, int(ffi.cast("uintptr_t", lib.imgfs_fast_callback(i))))
    return fast
