"""Two things pyfuse3 (3.5) cannot do, done in front of its callbacks in the live session.

Tell the readdir handler which directory it lists, so opendir can be left to the kernel.

A filesystem that answers OPENDIR with ENOSYS gets no opendir/releasedir requests any
more, and the kernel (6.6+) then caches directory listings itself (FOPEN_CACHE_DIR by
default): a warm `find` sends nothing at all. Every READDIRPLUS then carries file handle
0, though, and pyfuse3 (3.5) passes the handler only the file handle, never the inode
the kernel sent. This module puts a small trampoline in front of pyfuse3's readdirplus
and fsyncdir callbacks in the live libfuse session: it records the inode and calls
pyfuse3's own callback, whose coroutine pyfuse3 runs at once, so `current_ino` is the
directory the handler is answering for (the handler reads it before its first await).

The session and callbacks are found through pyfuse3's symbol table, and the slots are
patched only after checking that the session's callback table is a byte-for-byte copy
of pyfuse3's and that each slot holds the expected function; anything unexpected (a
stripped or different pyfuse3 build) leaves the session untouched and `install` returns
False, and the daemon keeps answering opendir with handles as before.

It also finds the slots of the callbacks in `_FAST` and of readdirplus (`located`), where
fs/fastpath.py puts its C handlers.

Ask for init flags pyfuse3 never asks for: FUSE_CAP_CACHE_SYMLINKS (the kernel keeps
symlink targets: `ls -l` and path walks through links stop sending readlink), and, with
POSIX ACLs on, FUSE_CAP_DONT_MASK, so that the daemon gets the mode unmasked and the
caller's umask, and can apply the umask itself except under a default ACL, as the kernel
does for a local filesystem.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
from dataclasses import dataclass
from typing import Any

import pyfuse3

log = logging.getLogger(__name__)

current_ino = 0
"""The inode of the READDIRPLUS or FSYNCDIR request being handled."""

_SESSION = "__pyx_v_7pyfuse3_session"
_OPS = "__pyx_v_7pyfuse3_fuse_ops"
_ANCHOR = "PyInit_pyfuse3"
_READDIRPLUS = "__pyx_f_7pyfuse3_fuse_readdirplus"
_FSYNCDIR = "__pyx_f_7pyfuse3_fuse_fsyncdir"
_INIT = "__pyx_f_7pyfuse3_fuse_init"
_FAST = {
    "lookup": "__pyx_f_7pyfuse3_fuse_lookup",
    "getattr": "__pyx_f_7pyfuse3_fuse_getattr",
    "forget": "__pyx_f_7pyfuse3_fuse_forget",
    "forget_multi": "__pyx_f_7pyfuse3_fuse_forget_multi",
    "open": "__pyx_f_7pyfuse3_fuse_open",
    "read": "__pyx_f_7pyfuse3_fuse_read",
    "release": "__pyx_f_7pyfuse3_fuse_release",
    "fsync": "__pyx_f_7pyfuse3_fuse_fsync",
    "getxattr": "__pyx_f_7pyfuse3_fuse_getxattr",
}
"""pyfuse3's callbacks that fs/fastpath.py may put its C handlers in front of."""
_REQUIRED = frozenset({_SESSION, _OPS, _ANCHOR, _READDIRPLUS, _FSYNCDIR, _INIT})
_WANTED = _REQUIRED | frozenset(_FAST.values())
_CAP_DONT_MASK = 1 << 6
_CAP_POSIX_ACL = 1 << 19
_CAP_CACHE_SYMLINKS = 1 << 23
_CONN_CAPABLE, _CONN_WANT = 20, 24
"""Offsets in struct fuse_conn_info (public, stable since libfuse 3.0)."""
_MAX_OPS_OFFSET = 512
"""How far into struct fuse_session its callback table may start (libfuse 3: 32)."""

# void readdirplus(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *)
_READDIR_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int64, ctypes.c_void_p)
# void fsyncdir(fuse_req_t, fuse_ino_t, int datasync, struct fuse_file_info *)
_FSYNCDIR_ARGS = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p)
# void init(void *userdata, struct fuse_conn_info *conn)
_INIT_ARGS = (ctypes.c_void_p, ctypes.c_void_p)

_keep: list[Any] = []
"""The trampolines: they must live as long as the session."""


@dataclass(frozen=True)
class Slots:
    """Where fastpath may patch: the live session, and per callback name the address of
    its slot in the session's table."""

    session: int
    slots: dict[str, int]

    def current(self, name: str) -> int:
        """The function the slot holds now (pyfuse3's, or this module's trampoline)."""
        return ctypes.c_void_p.from_address(self.slots[name]).value or 0

    def patch(self, name: str, fn: int) -> None:
        ctypes.c_void_p.from_address(self.slots[name]).value = fn


located: Slots | None = None
"""Set by a successful `install`: the slots fastpath may take (only those found)."""


@functools.cache
def _symbols(path: str, wanted: frozenset[str]) -> dict[str, tuple[int, int]]:
    """{name: (value, size)} of `wanted` from an ELF64 little-endian file's .symtab (read
    once per process: the mount server reads it before it forks daemons)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    header = "<IIQQQQIIQQ"
    sections = [struct.unpack_from(header, data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, tuple[int, int]] = {}
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        str_off = sections[sec[6]][4]
        for pos in range(sec[4], sec[4] + sec[5], 24):
            st_name, _, _, _, value, size = struct.unpack_from("<IBBHQQ", data, pos)
            end = data.index(b"\0", str_off + st_name)
            name = data[str_off + st_name : end].decode("ascii", "replace")
            if name in wanted:
                found[name] = (value, size)
    return found


def preload() -> None:
    """Read pyfuse3's symbol table now (some 3 ms of Python), e.g. before forking."""
    if pyfuse3.__file__ is not None:
        _symbols(pyfuse3.__file__, _WANTED)


def install() -> bool:
    """Patch the live session (after pyfuse3.init); False, untouched, if anything is off."""
    try:
        return _install()
    except Exception:  # any surprise: keep the plain path
        log.warning("readdir trampoline not installed", exc_info=True)
        return False


def _install() -> bool:
    path = pyfuse3.__file__
    assert path is not None
    syms = _symbols(path, _WANTED)
    if not syms.keys() >= _REQUIRED:
        return False
    lib = ctypes.PyDLL(path)
    base = ctypes.cast(getattr(lib, _ANCHOR), ctypes.c_void_p).value
    if not base:
        return False
    base -= syms[_ANCHOR][0]
    session = ctypes.c_void_p.from_address(base + syms[_SESSION][0]).value
    ops_addr, ops_size = base + syms[_OPS][0], syms[_OPS][1]
    if not session or ops_size % 8:
        return False
    ops = ctypes.string_at(ops_addr, ops_size)
    offsets = [
        off
        for off in range(0, _MAX_OPS_OFFSET, 8)
        if ctypes.string_at(session + off, ops_size) == ops
    ]
    if len(offsets) != 1:
        return False
    table = session + offsets[0]
    slots = struct.unpack(f"<{ops_size // 8}Q", ops)

    def slot_of(sym: str) -> int:
        if sym not in syms:
            return -1
        fn = base + syms[sym][0]
        return slots.index(fn) if slots.count(fn) == 1 else -1

    readdir_slot, fsync_slot, init_slot = slot_of(_READDIRPLUS), slot_of(_FSYNCDIR), slot_of(_INIT)
    if min(readdir_slot, fsync_slot, init_slot) < 0:
        return False

    # PYFUNCTYPE: pyfuse3's callbacks run Python code, so the GIL must stay held.
    orig_readdir = ctypes.PYFUNCTYPE(None, *_READDIR_ARGS)(slots[readdir_slot])
    orig_fsync = ctypes.PYFUNCTYPE(None, *_FSYNCDIR_ARGS)(slots[fsync_slot])
    orig_init = ctypes.PYFUNCTYPE(None, *_INIT_ARGS)(slots[init_slot])

    def readdirplus(req: int, ino: int, size: int, off: int, fi: int) -> None:
        global current_ino
        current_ino = ino
        orig_readdir(req, ino, size, off, fi)

    def fsyncdir(req: int, ino: int, datasync: int, fi: int) -> None:
        global current_ino
        current_ino = ino
        orig_fsync(req, ino, datasync, fi)

    def init(userdata: int, conn: int) -> None:
        orig_init(userdata, conn)
        capable = ctypes.c_uint.from_address(conn + _CONN_CAPABLE)
        want = ctypes.c_uint.from_address(conn + _CONN_WANT)
        more = _CAP_CACHE_SYMLINKS
        if want.value & _CAP_POSIX_ACL:
            more |= _CAP_DONT_MASK
        want.value |= capable.value & more

    new_readdir = ctypes.CFUNCTYPE(None, *_READDIR_ARGS)(readdirplus)
    new_fsync = ctypes.CFUNCTYPE(None, *_FSYNCDIR_ARGS)(fsyncdir)
    new_init = ctypes.CFUNCTYPE(None, *_INIT_ARGS)(init)
    _keep.extend((orig_readdir, orig_fsync, orig_init, new_readdir, new_fsync, new_init))
    patches = ((readdir_slot, new_readdir), (fsync_slot, new_fsync), (init_slot, new_init))
    for slot, fn in patches:
        ctypes.c_void_p.from_address(table + 8 * slot).value = ctypes.cast(
            fn, ctypes.c_void_p
        ).value
    global located
    found = {name: slot_of(sym) for name, sym in _FAST.items()}
    found["readdirplus"] = readdir_slot  # in front of the trampoline above
    located = Slots(session, {name: table + 8 * i for name, i in found.items() if i >= 0})
    return True
