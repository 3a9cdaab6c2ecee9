"""Operations: generated from a seed, applied identically to each mount, outcomes as plain data.

An outcome is `(status, value, post)`: status "ok" with the operation's result, "err" with the
errno name, or "escape" when a mutating operation would resolve through a symlink to outside
the mount (it is then not run on either mount: writing through such a link legitimately
changes files outside, on both mounts, and would break the canary test). `post` is the lstat
summary of every path the operation changed (and the stat summary where it followed a link),
so a difference shows at the operation that caused it, not many operations later.

Generation looks at the oracle's tree before each operation (so that most operations meet
existing entries), but the operations it draws are concrete data: a seed reproduces the
same run, and any sub-list of a run's operations replays on its own (that is how a failing
run is shrunk, and what a saved repro file holds).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import excluded
from .layers import FILE_MODES, NAMES, Layers

AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
READ_CAP = 4 << 20
MAX_DEPTH = 5
FRESH = ("n0", "n1", "n2", "n3", "n4")
XATTR_NAMES = ("user.a", "user.b", "user.c", "user.overlay.opaque")
PRIVATE_XATTRS = ("trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.origin")
UMASKS = (0o022, 0o022, 0o002, 0o077, 0o000, 0o027)
IDS = (-1, 0, 1000, 1001, 65534, 123456)
NODES = ("chr", "whiteout", "blk", "sock", "fifo")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]


@dataclass(frozen=True)
class Blob:
    """Data written by an operation: `size` bytes from `seed` (so the log stays short)."""

    seed: int
    size: int

    def bytes(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)

    def __repr__(self) -> str:
        return f"Blob({self.seed}, {self.size})"


@dataclass(frozen=True)
class Op:
    index: int
    kind: str
    args: tuple[tuple[str, object], ...]

    @property
    def kw(self) -> dict[str, object]:
        return dict(self.args)

    def __str__(self) -> str:
        parts = []
        for k, v in self.args:
            text = oct(v) if k in ("mode", "umask") and isinstance(v, int) else repr(v)
            parts.append(f"{k}={text}")
        return f"#{self.index} {self.kind}({', '.join(parts)})"


# ---------------------------------------------------------------- applying an operation


# Never collected at all, so never compared (see KNOWN_DIFFERENCES for why).
NOT_COLLECTED = [n for n in ("st_dev", "st_ino", "atime_ctime", "statfs") if excluded(n)]


def summarize(st: os.stat_result) -> tuple:
    """The attributes compared for one entry: type, permission bits, owner, and for
    non-directories size, link count and device number (mtime only in utime's result)."""
    fmt = stat.S_IFMT(st.st_mode)
    kind = {
        stat.S_IFREG: "f",
        stat.S_IFDIR: "d",
        stat.S_IFLNK: "l",
        stat.S_IFCHR: "c",
        stat.S_IFBLK: "b",
        stat.S_IFIFO: "p",
        stat.S_IFSOCK: "s",
    }.get(fmt, "?")
    out: tuple = (kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid)
    if kind != "d":
        out += (st.st_size, st.st_nlink)
    else:
        excluded("dir_size_nlink")
    if kind in "cb":
        out += (f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",)
    return out


NLINK_NOT_COMPARED = "nlink not compared (lower hard link)"


def hide_nlink(summary: tuple) -> tuple:
    """`summary` (from summarize) with st_nlink replaced by a marker: for an inode that is (or
    was copied up from) a lower-layer hard link. Directories are returned unchanged."""
    excluded("lower_hardlink_nlink")
    if len(summary) < 6 or summary[0] == "d":
        return summary
    return (*summary[:5], NLINK_NOT_COMPARED, *summary[6:])


# Where a path leads (follow: through a final symlink) is a lower-layer hard link's inode.
LowerHardlink = Callable[[str, bool], bool]


def lower_hardlink_at(root: str, lower_inos: set[int]) -> LowerHardlink:
    """Classify paths by what they are on the kernel overlayfs mount at `root` (the oracle).

    With every layer on one filesystem and index=on, kernel overlayfs reports the lower st_ino
    for a lower hard link's inode, copied up or not; `lower_inos` are those of the layers'
    regular files with st_nlink > 1. This only classifies; it compares nothing.
    """

    def check(rel: str, follow: bool) -> bool:
        try:
            st = os.stat(os.path.join(root, rel), follow_symlinks=follow)
        except (OSError, ValueError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_ino in lower_inos

    return check


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()[:16]


def _open(path: str, flags: int, mode: int = 0o666) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode)


def _read_all(fd: int) -> bytes:
    chunks, total = [], 0
    while total < READ_CAP:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes, offset: int | None = None) -> int:
    done = 0
    while done < len(data):
        piece = data[done:]
        n = os.write(fd, piece) if offset is None else os.pwrite(fd, piece, offset + done)
        if n <= 0:
            break
        done += n
    return done


def _with_umask(umask: int, fn: Callable[[], object]) -> object:
    old = os.umask(umask)
    try:
        return fn()
    finally:
        os.umask(old)


def op_stat(path: str, follow: bool) -> tuple:
    return summarize(os.stat(path, follow_symlinks=follow))


def op_read(path: str) -> tuple:
    fd = _open(path, os.O_RDONLY)
    try:
        return digest(_read_all(fd))
    finally:
        os.close(fd)


def _write_op(path: str, flags: int, data: Blob, mode: int = 0o644, umask: int = 0o022) -> int:
    fd = _with_umask(umask, lambda: _open(path, flags, mode))
    try:
        return _write_all(fd, data.bytes())
    finally:
        os.close(fd)


def op_create(path: str, mode: int, umask: int, data: Blob) -> int:
    return _write_op(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, data, mode, umask)


def op_write(path: str, data: Blob, creat: bool, mode: int, umask: int) -> int:
    flags = os.O_WRONLY | os.O_TRUNC | (os.O_CREAT if creat else 0)
    return _write_op(path, flags, data, mode, umask)


def op_append(path: str, data: Blob) -> int:
    return _write_op(path, os.O_WRONLY | os.O_APPEND, data)


def op_pwrite(path: str, offset: int, data: Blob) -> int:
    fd = _open(path, os.O_WRONLY)
    try:
        return _write_all(fd, data.bytes(), offset)
    finally:
        os.close(fd)


def op_truncate(path: str, size: int) -> None:
    os.truncate(path, size)


def op_mkdir(path: str, mode: int, umask: int) -> None:
    _with_umask(umask, lambda: os.mkdir(path, mode))


def op_mkfifo(path: str, mode: int, umask: int) -> None:
    _with_umask(umask, lambda: os.mkfifo(path, mode))


def op_mknod(path: str, node: str, mode: int, umask: int) -> None:
    kind, dev = {
        "chr": (stat.S_IFCHR, os.makedev(1, 3)),
        "whiteout": (stat.S_IFCHR, os.makedev(0, 0)),  # overlayfs refuses to create one
        "blk": (stat.S_IFBLK, os.makedev(7, 200)),
        "sock": (stat.S_IFSOCK, 0),
        "fifo": (stat.S_IFIFO, 0),
    }[node]
    _with_umask(umask, lambda: os.mknod(path, kind | mode, dev))


def op_renameat2(src: str, dst: str, flags: int) -> None:
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def op_utime(path: str, atime_ns: int, mtime_ns: int, follow: bool) -> int:
    os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=follow)
    return os.stat(path, follow_symlinks=follow).st_mtime_ns  # set explicitly: compared


def op_listxattr(path: str, follow: bool) -> tuple:
    names = os.listxattr(path, follow_symlinks=follow)
    user = sorted(n for n in names if n.startswith("user."))
    private = sorted(n for n in names if n.startswith("trusted.overlay."))  # must stay hidden
    return tuple(user), tuple(private)


def op_mmap_read(path: str) -> object:
    fd = _open(path, os.O_RDONLY)
    try:
        size = min(os.fstat(fd).st_size, READ_CAP)
        if size == 0:
            return "empty"
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
            return digest(m[:])
    finally:
        os.close(fd)


def op_mmap_write(path: str, offset: int, data: Blob) -> object:
    fd = _open(path, os.O_RDWR)
    try:
        size = min(os.fstat(fd).st_size, READ_CAP)
        if size == 0:
            return "empty"
        off = offset % size
        chunk = data.bytes()[: size - off]
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[off : off + len(chunk)] = chunk
            m.flush()
    finally:
        os.close(fd)
    fd = _open(path, os.O_RDONLY)  # read back through read(2), not the mapping
    try:
        return digest(_read_all(fd))
    finally:
        os.close(fd)


HELD: dict[tuple[str, int], int] = {}
"""Files held open across operations, by (mount root, slot): reads through them after
other operations changed the file (a copy-up, a rename, an unlink) must match."""
HOLD_SLOTS = 3


def op_hold(path: str, slot: int, root: str, write: bool = False) -> None:
    fd = _open(path, os.O_RDWR if write else os.O_RDONLY)
    old = HELD.pop((root, slot), None)
    if old is not None:
        os.close(old)
    HELD[(root, slot)] = fd


def op_held_read(slot: int, root: str, kernel: bool) -> object:
    """Mode, owner, size and contents through a held fd, after the page cache let go of
    the file (so the filesystem is asked, not the cache); a directory's listing."""
    fd = HELD.get((root, slot))
    if fd is None:
        return "none"
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):  # a directory's listing, read anew from the start
        return ("dir", tuple(sorted(existing(fd, os.listdir(fd), kernel))))
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, digest(os.pread(fd, READ_CAP, 0)))


def op_held_write(slot: int, root: str, offset: int, data: Blob) -> object:
    """Write through a held fd (the file may have been renamed, replaced or deleted)."""
    fd = HELD.get((root, slot))
    if fd is None:
        return "none"
    return _write_all(fd, data.bytes(), offset)


def release_held(root: str) -> None:
    """Close the files held open on the mount at `root` (before it is unmounted)."""
    for key in [k for k in HELD if k[0] == root]:
        os.close(HELD.pop(key))


def existing(path: str | int, names: list[str], kernel: bool) -> list[str]:
    """`names` listed in directory `path` (or open dir fd), without kernel overlayfs's
    listed whiteouts."""
    if not kernel or not excluded("readdir_lists_lower_whiteouts"):
        return names
    out = []
    for name in names:
        try:
            if isinstance(path, int):
                os.lstat(name, dir_fd=path)
            else:
                os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            continue
        out.append(name)
    return out


def op_listdir(path: str, kernel: bool) -> tuple[str, ...]:
    return tuple(sorted(existing(path, os.listdir(path), kernel)))


# kind -> (function, which arguments are paths). Path arguments are joined to the mount root.
HANDLERS: dict[str, tuple[Callable[..., object], tuple[str, ...]]] = {
    "stat": (op_stat, ("path",)),
    "read": (op_read, ("path",)),
    "create": (op_create, ("path",)),
    "write": (op_write, ("path",)),
    "pwrite": (op_pwrite, ("path",)),
    "append": (op_append, ("path",)),
    "truncate": (op_truncate, ("path",)),
    "unlink": (lambda path: os.unlink(path), ("path",)),
    "mkdir": (op_mkdir, ("path",)),
    "rmdir": (lambda path: os.rmdir(path), ("path",)),
    "rename": (lambda src, dst: os.rename(src, dst), ("src", "dst")),
    "renameat2": (op_renameat2, ("src", "dst")),
    "symlink": (lambda target, path: os.symlink(target, path), ("path",)),
    "readlink": (lambda path: os.readlink(path), ("path",)),
    "link": (lambda src, dst, follow: os.link(src, dst, follow_symlinks=follow), ("src", "dst")),
    "chmod": (lambda path, mode: os.chmod(path, mode), ("path",)),
    "chown": (
        lambda path, uid, gid, follow: os.chown(path, uid, gid, follow_symlinks=follow),
        ("path",),
    ),
    "utime": (op_utime, ("path",)),
    "setxattr": (
        lambda path, name, value, flags, follow: os.setxattr(
            path, name, value.bytes(), flags, follow_symlinks=follow
        ),
        ("path",),
    ),
    "getxattr": (
        lambda path, name, follow: os.getxattr(path, name, follow_symlinks=follow),
        ("path",),
    ),
    "listxattr": (op_listxattr, ("path",)),
    "removexattr": (
        lambda path, name, follow: os.removexattr(path, name, follow_symlinks=follow),
        ("path",),
    ),
    "mkfifo": (op_mkfifo, ("path",)),
    "mknod": (op_mknod, ("path",)),
    "listdir": (op_listdir, ("path",)),
    "mmap_read": (op_mmap_read, ("path",)),
    "mmap_write": (op_mmap_write, ("path",)),
    "hold": (op_hold, ("path",)),
    "held_read": (op_held_read, ()),
    "held_write": (op_held_write, ()),
}

READ_ONLY = frozenset(
    {"stat", "read", "readlink", "getxattr", "listxattr", "listdir", "mmap_read", "hold",
     "held_read"}
)  # fmt: skip


def changed_paths(op: Op) -> list[tuple[str, bool]]:
    """(path, final component followed) for every path a mutating operation changes."""
    kw = op.kw
    if op.kind == "hold" and kw.get("write"):
        return [(kw["path"], True)]  # opening for writing copies up
    if op.kind == "held_write":
        return []  # through an fd opened for writing, inside the mount: no path to check
    if op.kind in READ_ONLY:
        return []
    if op.kind in ("rename", "renameat2"):
        return [(kw["src"], False), (kw["dst"], False)]
    if op.kind == "link":
        return [(kw["src"], bool(kw["follow"])), (kw["dst"], False)]
    if op.kind in ("write", "pwrite", "append", "truncate", "mmap_write", "chmod"):
        return [(kw["path"], True)]
    if op.kind in ("chown", "utime", "setxattr", "removexattr"):
        return [(kw["path"], bool(kw["follow"]))]
    return [(kw["path"], False)]  # create (O_EXCL), unlink, rmdir, mkdir, symlink, mk*


def escapes(root: str, rel: str, follow_final: bool) -> bool:
    """Would resolving `rel` under `root` (as the kernel does) leave the mount?"""
    raw = rel.split("/")
    if len(raw) > 1 and raw[-1] in ("", ".", ".."):
        follow_final = True  # "link/" and "link/." resolve the link even for *at NOFOLLOW
    parts = [p for p in raw if p not in ("", ".")]
    cur: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if not cur:
                return True
            cur.pop()
            continue
        full = os.path.join(root, *cur, name)
        try:
            st = os.lstat(full)
        except OSError:
            cur.append(name)  # missing: nothing further resolves
            continue
        if stat.S_ISLNK(st.st_mode) and (parts or follow_final):
            links += 1
            if links > 40:
                return False  # ELOOP for the operation itself
            target = os.readlink(full)
            if target.startswith("/"):
                return True
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        cur.append(name)
    return False


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _summary(st: os.stat_result, rel: str, follow: bool, lower: LowerHardlink | None) -> tuple:
    summary = summarize(st)
    if lower is not None and lower(rel, follow):
        return hide_nlink(summary)
    return summary


def _post(root: str, rel: str, follow: bool, lower: LowerHardlink | None) -> tuple:
    p = os.path.join(root, rel)
    out = []
    for f in (False, True) if follow else (False,):
        try:
            out.append(_summary(os.stat(p, follow_symlinks=f), rel, f, lower))
        except OSError as e:
            out.append(_errname(e))
    return tuple(out)


def apply(op: Op, root: str, kernel: bool, lower: LowerHardlink | None = None) -> tuple:
    """Run `op` on the mount at `root` (a kernel overlayfs mount if `kernel`); the outcome is
    plain data, equal on equal filesystems.

    `lower` (see lower_hardlink_at; the oracle's, for either mount) tells which stat results
    are of a lower hard link's inode: their st_nlink is left out (lower_hardlink_nlink)."""
    fn, path_args = HANDLERS[op.kind]
    kw = op.kw
    if op.kind in ("listdir", "held_read"):
        kw["kernel"] = kernel
    if op.kind in ("hold", "held_read", "held_write"):
        kw["root"] = root
    changed = changed_paths(op)
    escaping = [rel for rel, follow in changed if escapes(root, rel, follow)]
    if escaping:
        return ("escape", tuple(escaping), ())
    for name in path_args:
        kw[name] = os.path.join(root, str(kw[name]))
    try:
        outcome: tuple = ("ok", fn(**kw))
    except OSError as e:
        outcome = ("err", _errname(e))
    except (ValueError, OverflowError) as e:
        outcome = ("exc", type(e).__name__)
    if op.kind == "stat" and outcome[0] == "ok" and lower is not None:
        rel, follow = str(op.kw["path"]), bool(op.kw["follow"])
        if lower(rel, follow):
            outcome = ("ok", hide_nlink(outcome[1]))
    post = tuple(_post(root, rel, follow, lower) for rel, follow in changed)
    return (*outcome, post)


# ---------------------------------------------------------------- generating operations

WEIGHTS = {
    "stat": 12,
    "read": 8,
    "create": 5,
    "write": 5,
    "pwrite": 4,
    "append": 3,
    "truncate": 4,
    "unlink": 5,
    "mkdir": 5,
    "rmdir": 4,
    "rename": 10,
    "renameat2": 7,
    "symlink": 3,
    "readlink": 3,
    "link": 5,
    "chmod": 3,
    "chown": 3,
    "utime": 3,
    "setxattr": 4,
    "getxattr": 3,
    "listxattr": 3,
    "removexattr": 3,
    "mkfifo": 2,
    "mknod": 2,
    "listdir": 5,
    "mmap_read": 2,
    "mmap_write": 2,
    "hold": 3,
    "held_read": 5,
    "held_write": 3,
}

# What kind of entry an operation mostly wants (d_type letters: d, f, l; "n" = non-dir).
WANTS = {
    "read": "f",
    "write": "f",
    "pwrite": "f",
    "append": "f",
    "truncate": "f",
    "mmap_read": "f",
    "mmap_write": "f",
    "hold": "f",
    "rmdir": "d",
    "listdir": "d",
    "readlink": "l",
    "unlink": "n",
    "link": "n",
}


def view(root: str) -> list[tuple[str, str]]:
    """(path, d_type letter) of everything in the tree at `root`, without following links."""
    out: list[tuple[str, str]] = [("", "d")]

    def walk(rel: str) -> None:
        try:
            entries = sorted(os.scandir(os.path.join(root, rel)), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                out.append((path, "d"))
                walk(path)
            elif e.is_symlink():
                out.append((path, "l"))
            else:
                out.append((path, "f" if e.is_file(follow_symlinks=False) else "s"))

    walk("")
    return out


class Generator:
    """Operations for one seed. Each one is drawn looking at the oracle's tree as it is (so
    most operations meet existing entries of the kind they want), at names that existed
    before (whited out, renamed away), and at names that never did. The operations drawn are
    concrete: any sub-list of them replays without the generator."""

    def __init__(self, seed: int, layers: Layers, focus_symlinks: bool = False) -> None:
        self.rng = random.Random(f"ops-{seed}")
        # Paths through the layers' symlinks (most lead out of the layers, to the canary).
        self.focus = list(layers.symlinks) if focus_symlinks else []
        self.canary = str(layers.canary)
        self.known: list[str] = ["", *layers.names]
        self.seen = set(self.known)
        self.count = 0
        self.kinds = list(WEIGHTS)
        self.weights = list(WEIGHTS.values())
        self.now: list[tuple[str, str]] = [("", "d")]
        self.by_type: dict[str, list[str]] = {}
        self.xattrs: list[tuple[str, str]] = []  # (path, name) of recent setxattr operations

    def observe(self, root: str) -> None:
        self.now = view(root)
        # d: directories (with the root), f: regular files, l: symlinks, n: non-directories,
        # e: empty directories, a: anything but the root, D: directories but the root
        by: dict[str, list[str]] = {k: [] for k in "dflneaD"}
        parents = {os.path.dirname(p) for p, _ in self.now if p}
        for path, t in self.now:
            by.setdefault(t, []).append(path)
            if t != "d":
                by["n"].append(path)
            elif path not in parents:
                by["e"].append(path)
            if path:
                by["a"].append(path)
                if t == "d":
                    by["D"].append(path)
            self.add(path)
        self.by_type = by

    # paths ------------------------------------------------------------
    def add(self, path: str) -> None:
        parts = path.split("/")
        if path in self.seen or "" in parts or "." in parts or ".." in parts:
            return
        if len(parts) > MAX_DEPTH:
            return
        self.seen.add(path)
        self.known.append(path)

    def existing(self, want: str | None = None) -> str:
        rng = self.rng
        if want == "d" and rng.random() < 0.5 and self.by_type["e"]:
            want = "e"  # rmdir, listdir: half of the time an empty directory
        if want == "d":
            want = "D"
        if want and self.by_type.get(want) and rng.random() < 0.75:
            return rng.choice(self.by_type[want])
        if rng.random() < 0.02 or not self.by_type["a"]:
            return ""  # the mount's root itself
        return rng.choice(self.by_type["a"])

    def child(self, names: tuple[str, ...], parent: str | None = None) -> str:
        if parent is None:
            parent = self.rng.choice(self.by_type["d"])
        name = self.rng.choice(names)
        return f"{parent}/{name}" if parent else name

    def path(self, want: str | None = None) -> str:
        rng = self.rng
        if self.focus and rng.random() < 0.4:
            link = rng.choice(self.focus)
            below = rng.choice(["", "/secret", "/inner", "/sub", "/sub/inner", "/n0", "/"])
            return link + below
        r = rng.random()
        if r < 0.66:
            return self.existing(want)
        if r < 0.78:
            return rng.choice(self.known)  # existed once, or in some layer
        if r < 0.86:
            return self.child(FRESH)  # does not exist
        if r < 0.92:
            return self.child(NAMES, self.existing())  # maybe below a non-directory
        if r < 0.96:
            p = self.existing(want)
            return p + "/" if p else p
        p = self.existing()
        weird = rng.choice([f"{p}/../{rng.choice(NAMES)}", f"{p}/.", f"./{p}"])
        return weird.lstrip("/")

    def new_path(self) -> str:
        """Mostly a name that does not exist yet, in an existing directory."""
        r = self.rng.random()
        if r < 0.45:
            return self.child(FRESH)
        return self.child(NAMES) if r < 0.6 else self.path()

    # values -----------------------------------------------------------
    def blob(self) -> Blob:
        rng = self.rng
        size = rng.choices(
            [0, rng.randint(1, 100), rng.randint(100, 5000), rng.randint(5000, 150_000)],
            weights=[1, 4, 4, 1],
        )[0]
        return Blob(rng.getrandbits(32), size)

    def mode(self, file: bool = True) -> int:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.randrange(0o10000)
        return rng.choice(FILE_MODES if file else (0o755, 0o700, 0o777, 0o1777, 0o2755, 0o2777))

    def symlink_target(self, path: str) -> str:
        rng = self.rng
        depth = path.count("/")
        up = "../" * (depth + 1)
        return rng.choice(
            [
                self.canary + "/secret",
                self.canary + "/sub",
                self.canary + "/missing",
                f"{up}{os.path.basename(self.canary)}/secret",
                rng.choice(self.known) or ".",
                "../" * depth + rng.choice(self.known) if depth else rng.choice(NAMES),
                "nowhere",
                rng.choice(NAMES),
            ]
        )

    # operations -------------------------------------------------------
    def next(self, root: str) -> Op:
        """The next operation, drawn looking at the tree of the (oracle) mount at `root`."""
        self.observe(root)
        rng = self.rng
        kind = rng.choices(self.kinds, weights=self.weights)[0]
        want = WANTS.get(kind)
        args: dict[str, object]
        follow = rng.random() < 0.7
        if kind == "stat":
            args = {"path": self.path(), "follow": follow}
        elif kind in ("read", "readlink", "listdir", "mmap_read", "unlink", "rmdir"):
            args = {"path": self.path(want)}
        elif kind == "create":
            args = {
                "path": self.new_path(),
                "mode": self.mode(),
                "umask": rng.choice(UMASKS),
                "data": self.blob(),
            }
        elif kind == "write":
            creat = rng.random() < 0.3
            args = {
                "path": self.new_path() if creat else self.path(want),
                "data": self.blob(),
                "creat": creat,
                "mode": self.mode(),
                "umask": rng.choice(UMASKS),
            }
        elif kind == "pwrite":
            offset = rng.choice([0, rng.randint(0, 6000), rng.randint(0, 200_000)])
            args = {"path": self.path(want), "offset": offset, "data": self.blob()}
        elif kind == "mmap_write":
            args = {
                "path": self.path(want),
                "offset": rng.randint(0, 100_000),
                "data": self.blob(),
            }
        elif kind == "append":
            args = {"path": self.path(want), "data": self.blob()}
        elif kind == "truncate":
            size = rng.choice(
                [0, rng.randint(1, 100), rng.randint(100, 10_000), rng.randint(10_000, 300_000)]
            )
            args = {"path": self.path(want), "size": size}
        elif kind == "mkdir":
            args = {"path": self.new_path(), "mode": self.mode(False), "umask": rng.choice(UMASKS)}
        elif kind == "mkfifo":
            args = {"path": self.new_path(), "mode": self.mode(), "umask": rng.choice(UMASKS)}
        elif kind == "mknod":
            args = {
                "path": self.new_path(),
                "node": rng.choice(NODES),
                "mode": rng.choice([0o644, 0o600, 0o666]),
                "umask": rng.choice(UMASKS),
            }
        elif kind in ("rename", "renameat2"):
            src = self.path()
            r = rng.random()
            if r < 0.1:
                dst = f"{src}/{rng.choice(FRESH)}".lstrip("/")  # into its own subdirectory
            elif r < 0.3:
                parent = os.path.dirname(src.rstrip("/"))
                dst = f"{parent}/{rng.choice(FRESH + NAMES)}".lstrip("/")  # a sibling
            elif r < 0.6:
                same = "d" if (src, "d") in self.now else "n"
                dst = self.existing(same)  # over something that exists, mostly alike
            else:
                dst = self.new_path()
            args = {"src": src, "dst": dst}
            if kind == "renameat2":
                args["flags"] = rng.choices(
                    [
                        RENAME_NOREPLACE,
                        RENAME_EXCHANGE,
                        RENAME_WHITEOUT,
                        RENAME_NOREPLACE | RENAME_EXCHANGE,
                        0,
                    ],
                    weights=[10, 10, 1, 1, 2],
                )[0]
        elif kind == "symlink":
            path = self.new_path()
            args = {"target": self.symlink_target(path), "path": path}
        elif kind == "link":
            args = {"src": self.path(want), "dst": self.new_path(), "follow": rng.random() < 0.3}
        elif kind == "chmod":
            args = {"path": self.path(), "mode": self.mode()}
        elif kind == "chown":
            args = {
                "path": self.path(),
                "uid": rng.choice(IDS),
                "gid": rng.choice(IDS),
                "follow": follow,
            }
        elif kind == "utime":
            args = {
                "path": self.path(),
                "atime_ns": rng.randint(0, 2_000_000_000) * 10**9 + rng.randrange(10**9),
                "mtime_ns": rng.randint(0, 2_000_000_000) * 10**9 + rng.randrange(10**9),
                "follow": follow,
            }
        elif kind in ("setxattr", "getxattr", "removexattr"):
            names = XATTR_NAMES if rng.random() < 0.92 else PRIVATE_XATTRS
            args = {"path": self.path(), "name": rng.choice(names)}
            if kind != "setxattr" and self.xattrs and rng.random() < 0.5:
                path, name = rng.choice(self.xattrs[-20:])  # one that was set
                args = {"path": path, "name": name}
            if kind == "setxattr":
                self.xattrs.append((str(args["path"]), str(args["name"])))
                args["value"] = Blob(rng.getrandbits(32), rng.choice([0, 1, 7, 40, 300]))
                args["flags"] = rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
            args["follow"] = follow
        elif kind == "listxattr":
            args = {"path": self.path(), "follow": follow}
        elif kind == "hold":
            held = self.path("d" if rng.random() < 0.3 else want)
            args = {"path": held, "slot": rng.randrange(HOLD_SLOTS), "write": rng.random() < 0.3}
        elif kind == "held_read":
            args = {"slot": rng.randrange(HOLD_SLOTS)}
        elif kind == "held_write":
            offset = rng.choice([0, rng.randint(0, 6000), rng.randint(0, 200_000)])
            args = {"slot": rng.randrange(HOLD_SLOTS), "offset": offset, "data": self.blob()}
        else:
            raise AssertionError(kind)
        op = Op(self.count, kind, tuple(args.items()))
        self.count += 1
        return op


# ---------------------------------------------------------------- saving operations


def to_json(ops: list[Op]) -> str:
    def enc(v: object) -> object:
        return {"blob": [v.seed, v.size]} if isinstance(v, Blob) else v

    rows = [{"i": op.index, "kind": op.kind, "args": {k: enc(v) for k, v in op.args}} for op in ops]
    return json.dumps(rows, indent=0)


def from_json(text: str) -> list[Op]:
    def dec(v: object) -> object:
        return Blob(*v["blob"]) if isinstance(v, dict) else v

    return [
        Op(row["i"], row["kind"], tuple((k, dec(v)) for k, v in row["args"].items()))
        for row in json.loads(text)
    ]
