"""pyfuse3 operations with kernel overlayfs semantics over a merged index and an upper dir.

Reads of lower entries are answered from the merged index (no syscall for metadata);
anything that changes an entry first copies it up into the upper dir, deletions leave
whiteouts (char device 0:0), a directory made over a whiteout is opaque, and a renamed
lower directory carries a `trusted.overlay.redirect` to its origin, exactly as kernel
overlayfs (redirect_dir=on) writes them, so the upper dir stays mountable by the kernel.
Handlers are short; lookups of names go through `_probe`, the one place that decides
what a name is.

A daemon that cannot write trusted.* xattrs (not root), or one asked to (`userxattr`),
writes kernel overlayfs's `-o userxattr` format instead (`user.overlay.*`, see
`layerfds.XattrFormat`). The kernel never follows redirects in that format, so there a
renamed lower directory is copied up whole and made opaque rather than redirected. An
unprivileged daemon also cannot give files away: new entries and copies keep its own ids
where the asked ones are not its to give (see `set_owner`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3

from unionfs.fs import sessionhook
from unionfs.fs.control import WriteGate
from unionfs.fs.copyup import CopyUp
from unionfs.fs.layerfds import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    LayerDirs,
    at,
    default_format,
    get_xattr,
    is_whiteout,
    open_dir,
    renameat2,
)
from unionfs.fs.nodes import ROOT_INO, UPPER_INO_BASE, Node, NodeTable
from unionfs.fs.spec import MountSpec

log = logging.getLogger(__name__)

TIMEOUT = 86400.0
"""Entry/attr cache time: every change goes through this daemon, so the kernel may keep
what it was told until the daemon itself tells it otherwise."""
_UPPER_INO_MASK = UPPER_INO_BASE - 1
_ACL_DEFAULT = "system.posix_acl_default"
_NO_STAT = os.stat_result((0,) * 10)
_INDEX_ROOT = 1
"""The merged index's id of the root dir."""
MAX_LISTINGS = 64
"""Listings kept between readdir calls without opendir (see `_listing`)."""
SELINUX_XATTR = b"security.selinux"
SELINUX_ENABLED = os.path.exists("/sys/fs/selinux/enforce")
"""With SELinux, the kernel labels FUSE files itself and rarely asks the daemon."""
MAX_LOWER_DIR_FDS = 64
"""Lower dirs kept open for opening their files by name (see `lower_loc`)."""


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@dataclass(slots=True)
class Probe:
    """What a name in a directory is, as the merged view shows it."""

    ino: int
    is_dir: bool
    lower: int
    upper: bool
    opaque: bool = False
    upper_st: os.stat_result | None = None
    nlink_bias: int = 0
    entry: Any = None
    """The decoded lower entry, when the probe already read it."""


@dataclass(slots=True)
class DirHandle:
    node: Node
    names: list[bytes] | None = None
    """Names of a merged directory, "." and ".." first (empty when `ids` lists it)."""
    ids: list[int] | None = None
    """Lower entry ids, for a directory only the lower layers have (no names needed)."""


class UnionOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = True
    enable_acl = True
    """The kernel caches ACLs (no getxattr of system.posix_acl_* per `ls -l` entry). It
    also leaves the umask to the daemon then (see sessionhook and `_create_mode`)."""

    def __init__(self, spec: MountSpec, index: Any) -> None:
        super().__init__()
        self.spec = spec
        self.index = index
        self.layers = LayerDirs(list(spec.lower_dirs))
        self.read_only = spec.read_only
        self.fmt = default_format(spec.userxattr)
        """The upper dir's format: which overlay-private xattr names this mount writes."""
        self.euid = os.geteuid()
        self.egid = os.getegid()
        self.groups = frozenset({self.egid, *os.getgroups()})
        self.unprivileged = self.euid != 0
        """chown is limited to what an unprivileged process may do (see set_owner)."""
        self.table = NodeTable()
        self.files: dict[int, int] = {}
        self.lower_reads: dict[int, int] = {}
        """File handles open on a lower file (→ its inode): a copy-up re-points them."""
        self.dirs: dict[int, DirHandle] = {}
        self.stateless_dirs = False
        """Set by the daemon once sessionhook is in place: opendir answers ENOSYS."""
        self._listings: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._dynamic: dict[tuple[str, int], int] = {}
        self.copied_inos: dict[int, int] = {}
        """Upper st_ino -> inode number of entries copied up by this mount that cannot carry
        the origin xattr (see carries_origin), so they keep their number while it lasts."""
        self._lower_xattrs: dict[int, frozenset[bytes]] = {}
        self._lower_dir_fds: dict[tuple[int, int], int] = {}
        """(index id of a lower dir, layer) -> O_PATH fd, most recently used last."""
        self.upper_fd = -1
        self.upper_dev = -1
        self.copyup: CopyUp | None = None
        self.gate = WriteGate()
        has_lower = bool(spec.lower_dirs) and len(index) > 0
        root = Node(ROOT_INO, None, b"", True, lower=1 if has_lower else 0, nlookup=1)
        if spec.upper_dir is not None:
            # A read-only mount of a container still shows its changes.
            self.upper_fd = os.open(spec.upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.upper_dev = os.fstat(self.upper_fd).st_dev
            root.upper = True
            root.ufd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.upper_fd)
        if not self.read_only:
            assert spec.work_dir is not None
            self.copyup = CopyUp(self, spec.work_dir)
        self.table.add(root)
        self.root = root

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()
        self.lower_reads.clear()
        for fd in self._lower_dir_fds.values():
            os.close(fd)
        self._lower_dir_fds.clear()
        self.table.close()
        self.layers.close()
        if self.copyup is not None:
            self.copyup.close()
        if self.upper_fd >= 0:
            os.close(self.upper_fd)
            self.upper_fd = -1

    # -- resolving names ---------------------------------------------------------

    def upper_dir_fd(self, node: Node) -> int:
        """O_PATH fd of a directory node in the upper dir (it must exist there)."""
        if node.ufd < 0:
            assert node.parent is not None
            node.ufd = open_dir(self.upper_dir_fd(node.parent), node.name)
        return node.ufd

    def lower_child(self, parent: Node, name: bytes) -> int:
        return (self.index.lookup(parent.lower, name) or 0) if parent.lower else 0

    def _probe(self, parent: Node, name: bytes) -> Probe | None:
        lower = self.lower_child(parent, name)
        if parent.upper:
            try:
                st = os.lstat(name, dir_fd=self.upper_dir_fd(parent))
            except FileNotFoundError:
                st = None
            if st is not None:
                if is_whiteout(st):
                    return None
                return self._probe_upper(parent, name, st, lower)
        if not lower:
            return None
        return self._lower_probe(lower)

    def _lower_probe(self, ident: int) -> Probe:
        e = self.index.entry(ident)
        return Probe(e.link_group, stat.S_ISDIR(e.mode), ident, False, entry=e)

    def _probe_upper(self, parent: Node, name: bytes, st: os.stat_result, lower: int) -> Probe:
        path = at(self.upper_dir_fd(parent), name)
        fmt = self.fmt
        if stat.S_ISDIR(st.st_mode):
            opaque = get_xattr(path, fmt.opaque) == b"y"
            merged = 0
            if not opaque:
                redirect = get_xattr(path, fmt.redirect)
                if redirect is not None:
                    merged = self._resolve_redirect(parent, redirect)
                elif lower and self.index.is_dir(lower):
                    merged = lower
            if merged:
                ino = self._lower_ino(merged)
            else:  # a lower dir copied up whole (userxattr format) keeps its number too
                origin, _ = parse_origin(get_xattr(path, fmt.origin))
                ino = origin if 0 < origin <= len(self.index) else self._upper_ino(st)
            return Probe(ino, True, merged, True, opaque, st)
        ino = self._upper_ino(st)
        group, bias = parse_origin(get_xattr(path, fmt.origin))
        if 0 < group <= len(self.index):
            ino = self._lower_ino(group)
        elif st.st_ino in self.copied_inos:
            ino = self.copied_inos[st.st_ino]
        return Probe(ino, False, 0, True, False, st, bias)

    def carries_origin(self, mode: int) -> bool:
        """Whether an upper entry of this type can hold the origin xattr: any in the trusted
        format, only regular files and dirs in the user one (the kernel allows user.* xattrs
        on nothing else). Others keep their number only while this mount lasts."""
        return not self.fmt.user or stat.S_ISREG(mode) or stat.S_ISDIR(mode)

    def _resolve_redirect(self, parent: Node, redirect: bytes) -> int:
        if not redirect.startswith(b"/"):
            return self.lower_child(parent, redirect)
        ident = 1 if self.root.lower else 0
        for part in redirect.strip(b"/").split(b"/"):
            if not ident:
                break
            ident = self.index.lookup(ident, part) or 0
        return ident if ident and self.index.is_dir(ident) else 0

    def _lower_ino(self, ident: int) -> int:
        return self.index.entry(ident).link_group

    @staticmethod
    def _upper_ino(st: os.stat_result) -> int:
        return UPPER_INO_BASE | (st.st_ino & _UPPER_INO_MASK)

    def _node(self, parent: Node, name: bytes, probe: Probe) -> Node:
        """The table's node for a probed name, or a new one (not yet in the table)."""
        upper_ino = probe.upper_st.st_ino if probe.upper_st is not None else 0
        ino = probe.ino
        node = self.table.get(ino)
        if node is not None and (
            not node.alive or (probe.upper and node.upper and node.upper_ino != upper_ino)
        ):
            # The stable number belongs to a deleted-but-open inode: use another one.
            key = ("u", upper_ino) if probe.upper else ("l", probe.lower)
            ino = self._dynamic.setdefault(key, self.table.dynamic_ino())
            node = self.table.get(ino)
        if node is None:
            node = Node(
                ino, parent, name, probe.is_dir, probe.lower, probe.upper, probe.opaque, upper_ino
            )
            node.nlink_bias = probe.nlink_bias
            return node
        node.add_link(parent, name)
        if probe.upper:
            node.nlink_bias = probe.nlink_bias
        elif node.upper and not node.is_dir and self.copyup is not None:
            # A name of a copied-up lower hard link that still shows the lower file.
            self.copyup.link_name(node, parent, name)
            return node
        if probe.upper and not node.upper:
            node.upper, node.upper_ino = True, upper_ino
        node.lower, node.opaque = probe.lower, probe.opaque
        return node

    def _find(self, parent: Node, name: bytes) -> Node | None:
        probe = self._probe(parent, name)
        return None if probe is None else self._node(parent, name, probe)

    def _remember(self, node: Node) -> None:
        node.nlookup += 1
        if not self.table.holds(node):
            self.table.add(node)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self._remember(node)
        return self._attrs(node)

    # -- attributes ------------------------------------------------------------

    def upper_lstat(self, node: Node) -> os.stat_result:
        if node.ino == ROOT_INO:
            return os.fstat(self.upper_fd)
        if node.parent is None:  # deleted, still in use: its name may be another's now
            return os.fstat(self._kept(node))
        return os.lstat(node.name, dir_fd=self.upper_dir_fd(node.parent))

    @staticmethod
    def _kept(node: Node) -> int:
        """The O_PATH fd of a deleted node's upper entry (see `_keep_deleted`)."""
        if node.ufd < 0:
            raise _err(errno.ENOENT)
        return node.ufd

    def _keep_deleted(self, node: Node, pfd: int, name: bytes) -> None:
        """`name` in upper dir `pfd` is about to be unlinked or replaced: if it is the
        node's last name, keep an O_PATH fd of the entry in the node. The kernel still
        sends requests about the inode (an open file's fstat, fchmod, xattrs, the
        writeback cache's last times), and they must reach that entry, not whatever
        takes the name next (answering with another entry's type makes the kernel mark
        the inode bad: EIO at close)."""
        if node.ufd < 0 and len(node.links()) <= 1:
            node.ufd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)

    def _deleted(self, node: Node, parent: Node, name: bytes) -> None:
        """`name` of `node` is gone; a node the kernel does not hold keeps no fd."""
        node.drop_link(parent, name)
        if not node.alive and not self.table.holds(node):
            node.close_fd()

    def _upper_target(self, node: Node) -> tuple[str, bool]:
        """(path, follow_symlinks) naming the node's upper entry, for calls without an
        *at form: its name in its parent dir's fd, or a deleted entry's kept fd."""
        if node.ino == ROOT_INO:
            return f"/proc/self/fd/{self.upper_dir_fd(node)}/.", False
        if node.parent is None:  # the magic link leads to the entry itself, never beyond
            return f"/proc/self/fd/{self._kept(node)}", True
        return at(self.upper_dir_fd(node.parent), node.name), False

    def _open_upper(self, node: Node, flags: int) -> int:
        if node.parent is None and node.ino != ROOT_INO:
            return os.open(f"/proc/self/fd/{self._kept(node)}", flags & ~os.O_NOFOLLOW)
        pfd, name = self._upper_loc(node)
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=pfd)

    def _attrs(
        self, node: Node, st: os.stat_result | None = None, entry: Any = None
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_blksize = 4096
        if node.upper:
            st = st or self.upper_lstat(node)
            a.st_mode, a.st_uid, a.st_gid = st.st_mode, st.st_uid, st.st_gid
            a.st_nlink = 1 if node.is_dir and node.lower else st.st_nlink + node.nlink_bias
            a.st_rdev, a.st_size, a.st_blocks = st.st_rdev, st.st_size, st.st_blocks
            a.st_atime_ns, a.st_mtime_ns = st.st_atime_ns, st.st_mtime_ns
            a.st_ctime_ns = st.st_ctime_ns
            node.upper_ino = st.st_ino
        else:
            e = (
                entry
                if entry is not None and entry.id == node.lower
                else self.index.entry(node.lower)
            )
            a.st_mode, a.st_uid, a.st_gid, a.st_nlink = e.mode, e.uid, e.gid, e.nlink
            a.st_rdev, a.st_size, a.st_blocks = e.rdev, e.size, e.blocks
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = e.atime_ns, e.mtime_ns, e.ctime_ns
        return a

    # -- lookups and attributes ------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        parent = self.table[parent_inode]
        if name == b".":
            return self._entry(parent)
        if name == b"..":
            return self._entry(parent.parent or self.root)
        probe = self._probe(parent, name)
        if probe is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = TIMEOUT
            return negative
        node = self._node(parent, name, probe)
        self._remember(node)
        return self._attrs(node, probe.upper_st, probe.entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.table.forget(ino, n)

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attrs(self.table[inode])

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = self.table[inode]
        if not node.alive and not node.upper:
            # A deleted lower entry (a whiteout hides it): its attributes are the index's,
            # and there is nothing to change them in. An upper one was kept (see
            # `_keep_deleted`): the change goes to it, as to any file still open.
            return self._attrs(node)
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if self.unprivileged and (uid != -1 or gid != -1):
            uid, gid = self._unprivileged_chown(node, uid, gid)
        changes = (
            uid != -1,
            gid != -1,
            fields.update_mode,
            fields.update_size,
            fields.update_atime,
            fields.update_mtime,
        )
        if not any(changes):  # ctime alone (the writeback cache flushing times)
            return self._attrs(node)
        await self.copy_up(node)
        if uid != -1 or gid != -1 or fields.update_mode:
            node.forget_xattrs()  # chown drops security.capability, chmod rewrites ACLs
        fd, st = self._upper_file(node, fh)
        kw: dict[str, Any] = {}
        if fd is not None:  # the open upper file itself: no walk to it
            target: int | str = fd
        else:
            target, follow = self._upper_target(node)
            st, kw = self.upper_lstat(node), {"follow_symlinks": follow}
        if uid != -1 or gid != -1:
            os.chown(target, uid, gid, **kw)
        if fields.update_mode and not stat.S_ISLNK(st.st_mode):
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_size:
            if fd is not None:
                os.ftruncate(fd, attr.st_size)
            else:
                tfd = self._open_upper(node, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.ftruncate(tfd, attr.st_size)
                finally:
                    os.close(tfd)
        if fields.update_atime or fields.update_mtime:
            if fields.update_size:  # truncate changed mtime
                st = os.fstat(fd) if fd is not None else self.upper_lstat(node)
            times = (
                attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
            )
            os.utime(target, ns=times, **kw)
        return self._attrs(node, os.fstat(fd) if fd is not None else None)

    def _upper_file(self, node: Node, fh: int | None) -> tuple[int | None, os.stat_result]:
        """(fd, its stat) of the file handle `fh` if it is open on the node's upper file
        (not on the lower file it was opened as before a copy-up), else (None, dummy)."""
        fd = self.files.get(fh) if fh else None
        if fd is not None:
            st = os.fstat(fd)
            if st.st_ino == node.upper_ino and st.st_dev == self.upper_dev:
                return fd, st
        return None, _NO_STAT

    def _unprivileged_chown(self, node: Node, uid: int, gid: int) -> tuple[int, int]:
        """What an unprivileged daemon does of a chown: ids that do not change are nothing
        to do; a new group is the owner's to give if the daemon is in it; anything else is
        EPERM, before any copy-up, as a real filesystem answers an unprivileged user."""
        cur = self._attrs(node)
        if uid == cur.st_uid:
            uid = -1
        if gid == cur.st_gid:
            gid = -1
        if uid != -1 or (gid != -1 and (cur.st_uid != self.euid or gid not in self.groups)):
            raise _err(errno.EPERM)
        return uid, gid

    def set_owner(self, target: int | str, uid: int, gid: int, **kwargs: Any) -> None:
        """Give a new entry (made by this daemon: a creation or a copy-up) its owner.

        Unprivileged, the entry keeps the daemon's uid, and gets the asked group only if
        the daemon is in it: an unprivileged process cannot give files away, and copy-up
        or creation must not fail on that (fuse-overlayfs without a user namespace does
        the same). `kwargs` are os.chown's (dir_fd, follow_symlinks)."""
        if self.unprivileged:
            if gid == self.egid or gid not in self.groups:
                return
            uid = -1
        os.chown(target, uid, gid, **kwargs)

    def _upper_loc(self, node: Node) -> tuple[int, bytes]:
        """(upper parent dir fd, name) of a node that exists in the upper dir."""
        if node.ino == ROOT_INO:
            return self.upper_dir_fd(node), b""
        if node.parent is None:
            raise _err(errno.ENOENT)  # deleted: see `_upper_target` and `_open_upper`
        return self.upper_dir_fd(node.parent), node.name

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self.table[inode]
        if node.upper:
            pfd, name = self._upper_loc(node)
            return os.fsencode(os.readlink(name, dir_fd=pfd))
        pfd, name = self.lower_loc(node.lower)
        return os.fsencode(os.readlink(name, dir_fd=pfd))

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True  # default_permissions: the kernel checks modes itself

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        fd = self.upper_fd if self.upper_fd >= 0 else (self.layers.fds or [None])[0]
        st = os.statvfs(fd) if fd is not None else os.statvfs("/")
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(out, attr, getattr(st, attr))
        for attr in ("f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(out, attr, getattr(st, attr))
        return out

    # -- copy-up -----------------------------------------------------------------

    async def copy_up(self, node: Node) -> None:
        if node.upper:
            return
        if self.copyup is None:
            raise _err(errno.EROFS)
        await self.copyup.copy_up(node)

    def ensure_upper_dir(self, node: Node) -> int:
        """The upper dir fd of a directory node, copying the directory (and parents) up."""
        if not node.upper:
            if self.copyup is None:
                raise _err(errno.EROFS)
            self.copyup.copy_up_dir(node)
        return self.upper_dir_fd(node)

    # -- creating entries ------------------------------------------------------

    def _prepare_create(self, parent: Node, name: bytes) -> tuple[int, bool]:
        """Make room for a new name: (parent's upper fd, whether lower has the name).
        One lstat tells both whether the name is taken and whether a whiteout is in the way."""
        if self.read_only:
            raise _err(errno.EROFS)
        whiteout = False
        if parent.upper:
            try:
                st = os.lstat(name, dir_fd=self.upper_dir_fd(parent))
            except FileNotFoundError:
                pass
            else:
                if not is_whiteout(st):
                    raise _err(errno.EEXIST)
                whiteout = True
        lower = self.lower_child(parent, name)
        if lower and not whiteout:
            raise _err(errno.EEXIST)
        pfd = self.ensure_upper_dir(parent)
        if whiteout:
            os.unlink(name, dir_fd=pfd)
        return pfd, bool(lower)

    def _owner(self, pfd: int, ctx: Any) -> tuple[int, int, bool]:
        """(uid, gid, setgid dir) a new entry gets: a setgid dir passes on its group."""
        st = os.fstat(pfd)  # the parent's upper dir (O_PATH): no walk to it by name
        if st.st_mode & stat.S_ISGID:
            return ctx.uid, st.st_gid, True
        return ctx.uid, ctx.gid, False

    def _created(
        self, parent: Node, name: bytes, st: os.stat_result, opaque: bool = False
    ) -> tuple[Node, pyfuse3.EntryAttributes]:
        """The node and entry of what this daemon just made in the upper dir: what `_probe`
        would find (a new entry has no origin or redirect xattr), without reading xattrs."""
        is_dir = stat.S_ISDIR(st.st_mode)
        ino = self._upper_ino(st)
        if not is_dir and st.st_ino in self.copied_inos:
            ino = self.copied_inos[st.st_ino]
        node = self._node(parent, name, Probe(ino, is_dir, 0, True, opaque, st))
        self._remember(node)
        return node, self._attrs(node, st)

    def _create_mode(self, parent: Node, pfd: int, mode: int, ctx: Any) -> tuple[int, bool]:
        """(mode to create with, whether the parent's default ACL sets the permissions).

        The kernel leaves the umask to a filesystem with POSIX ACLs: under a default ACL
        the new entry's permissions are the ACL's (masked by the mode, not by the umask),
        which the upper filesystem works out itself (the daemon's own umask is 0);
        elsewhere the caller's umask applies. Whether the parent has a default ACL is
        kept on its node (an untar creates many entries in each directory)."""
        if parent.default_acl is None:
            try:
                os.getxattr(f"/proc/self/fd/{pfd}/.", _ACL_DEFAULT)
            except OSError:
                parent.default_acl = False
            else:
                parent.default_acl = True
        if not parent.default_acl:
            return mode & ~(ctx.umask & 0o777), False
        return mode, True

    def _fix_mode(self, target: int | str, mode: int, by_acl: bool) -> None:
        """Set the created entry's mode again: chown cleared setuid/setgid. Under a default
        ACL only those bits are put back, the permissions stay the ACL's."""
        if by_acl:
            st = os.stat(target, follow_symlinks=isinstance(target, int))
            want = stat.S_IMODE(st.st_mode) | (mode & 0o7000)
            if want != stat.S_IMODE(st.st_mode):
                os.chmod(target, want)
        else:
            os.chmod(target, stat.S_IMODE(mode))  # an fd, or a path of an entry just made

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        parent = self.table[parent_inode]
        pfd, lower_has = self._prepare_create(parent, name)
        uid, gid, sgid = self._owner(pfd, ctx)
        mode, by_acl = self._create_mode(parent, pfd, mode, ctx)
        dir_mode = stat.S_IMODE(mode) | (stat.S_ISGID if sgid else 0)
        os.mkdir(name, dir_mode, dir_fd=pfd)
        self.set_owner(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        self._fix_mode(at(pfd, name), dir_mode, by_acl)
        if lower_has:
            os.setxattr(at(pfd, name), self.fmt.opaque, b"y", follow_symlinks=False)
        return self._created(parent, name, os.lstat(name, dir_fd=pfd), lower_has)[1]

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise _err(errno.EPERM)  # that is a whiteout: overlayfs refuses to make one too
        parent = self.table[parent_inode]
        pfd, _ = self._prepare_create(parent, name)
        uid, gid, _ = self._owner(pfd, ctx)
        mode, by_acl = self._create_mode(parent, pfd, mode, ctx)
        os.mknod(name, mode, rdev, dir_fd=pfd)
        self.set_owner(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        self._fix_mode(at(pfd, name), mode, by_acl)
        return self._created(parent, name, os.lstat(name, dir_fd=pfd))[1]

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        parent = self.table[parent_inode]
        pfd, _ = self._prepare_create(parent, name)
        uid, gid, _ = self._owner(pfd, ctx)
        os.symlink(target, name, dir_fd=pfd)
        self.set_owner(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        return self._created(parent, name, os.lstat(name, dir_fd=pfd))[1]

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.table[parent_inode]
        pfd, _ = self._prepare_create(parent, name)
        uid, gid, _ = self._owner(pfd, ctx)
        mode, by_acl = self._create_mode(parent, pfd, mode, ctx)
        open_flags = _file_flags(flags) | os.O_CREAT | os.O_EXCL
        fd = os.open(name, open_flags, stat.S_IMODE(mode), dir_fd=pfd)
        try:
            self.set_owner(fd, uid, gid)
            self._fix_mode(fd, mode, by_acl)
            node, attrs = self._created(parent, name, os.fstat(fd))
            # Known now, so the getxattr(security.capability) of every write is answered
            # without a syscall (see getxattr).
            node.xattrs = frozenset(os.fsencode(n) for n in os.listxattr(fd))
        except BaseException:
            os.close(fd)
            raise
        return self._file_info(fd), attrs

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        node = self.table[inode]
        parent = self.table[new_parent_inode]
        await self.copy_up(node)
        pfd, _ = self._prepare_create(parent, new_name)
        src_pfd, src_name = self._upper_loc(node)
        os.link(src_name, new_name, src_dir_fd=src_pfd, dst_dir_fd=pfd, follow_symlinks=False)
        node.add_link(parent, new_name)
        return self._entry(node)

    # -- removing entries ------------------------------------------------------

    def _whiteout(self, parent: Node, name: bytes) -> None:
        pfd = self.ensure_upper_dir(parent)
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self.table[parent_inode]
        node = self._find(parent, name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if self.read_only:
            raise _err(errno.EROFS)
        if self.copyup is not None:
            await self.copyup.settle(node)
        if not node.upper and self.index.entry(node.lower).nlink > 1:
            await self.copy_up(node)  # its other names keep the data and count the link
        if node.upper:
            pfd = self.upper_dir_fd(parent)
            self._keep_deleted(node, pfd, name)
            os.unlink(name, dir_fd=pfd)
        if self.lower_child(parent, name):
            self._whiteout(parent, name)
        self._deleted(node, parent, name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self.table[parent_inode]
        node = self._find(parent, name)
        if node is None:
            raise _err(errno.ENOENT)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if self.read_only:
            raise _err(errno.EROFS)
        whiteouts: list[bytes] = []
        if self._list(node, whiteouts):
            raise _err(errno.ENOTEMPTY)
        if node.upper:
            dfd = self.upper_dir_fd(node)
            for name_ in whiteouts:  # all that is left in it: no second listing
                os.unlink(name_, dir_fd=dfd)
            os.rmdir(name, dir_fd=self.upper_dir_fd(parent))  # node.ufd stays: `_kept`
        if self.lower_child(parent, name):
            self._whiteout(parent, name)
        self._deleted(node, parent, name)

    # -- rename ------------------------------------------------------------------

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise _err(errno.EINVAL)  # RENAME_WHITEOUT: overlayfs refuses it too
        if self.read_only:
            raise _err(errno.EROFS)
        old_parent = self.table[parent_inode_old]
        new_parent = self.table[parent_inode_new]
        src = self._find(old_parent, name_old)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self._find(new_parent, name_new)
        if self.copyup is not None:
            for node in (src, dst):
                if node is not None:
                    await self.copyup.settle(node)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _err(errno.ENOENT)
            await self._exchange(old_parent, name_old, src, new_parent, name_new, dst)
            return
        if dst is src:
            return  # two names of one inode: rename(2) does nothing
        if dst is not None and dst.is_dir:
            if not src.is_dir:
                raise _err(errno.EISDIR)
            if self._list(dst):
                raise _err(errno.ENOTEMPTY)
        elif dst is not None and src.is_dir:
            raise _err(errno.ENOTDIR)
        await self._move_up(src)
        old_fd = self.upper_dir_fd(old_parent)
        new_fd = self.ensure_upper_dir(new_parent)
        lower_at_new = self.lower_child(new_parent, name_new)
        if dst is not None and dst.upper:
            self._keep_deleted(dst, new_fd, name_new)
        self._clear_target(new_fd, name_new, dst)
        renameat2(old_fd, name_old, new_fd, name_new, 0)
        if src.is_dir:
            self._fix_moved_dir(src, new_fd, name_new, lower_at_new)
        if self.lower_child(old_parent, name_old):
            self._whiteout(old_parent, name_old)
        if dst is not None:
            self._deleted(dst, new_parent, name_new)
        src.drop_link(old_parent, name_old)
        src.add_link(new_parent, name_new)

    async def _move_up(self, node: Node) -> None:
        """Copy up what a rename moves: a file whole, a directory only itself (it will carry
        a redirect), or in the userxattr format, where the kernel follows no redirects, a
        directory with everything below it (made opaque)."""
        if node.is_dir and self.fmt.user and node.lower and not node.opaque:
            assert self.copyup is not None
            await self.copyup.copy_up_tree(node)
        elif node.is_dir:
            self.ensure_upper_dir(node)
        else:
            await self.copy_up(node)

    def _clear_target(self, pfd: int, name: bytes, dst: Node | None) -> None:
        """Remove what is in the way in the upper dir: a whiteout, or an empty dir's whiteouts."""
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            return
        if is_whiteout(st):
            os.unlink(name, dir_fd=pfd)
        elif stat.S_ISDIR(st.st_mode) and dst is not None:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
            try:
                for entry in os.scandir(fd):
                    os.unlink(entry.name, dir_fd=fd)
            finally:
                os.close(fd)

    def _fix_moved_dir(self, node: Node, pfd: int, name: bytes, lower_at_new: int) -> None:
        """A moved dir keeps showing its own lower children (redirect), and never those of
        a lower dir that was at its new name (opaque)."""
        path = at(pfd, name)
        if node.lower and not node.opaque:
            target = b"/" + self.index.path(node.lower)
            os.setxattr(path, self.fmt.redirect, target, follow_symlinks=False)
        elif lower_at_new and not node.opaque:
            os.setxattr(path, self.fmt.opaque, b"y", follow_symlinks=False)
            node.opaque = True

    async def _exchange(
        self,
        old_parent: Node,
        name_old: bytes,
        src: Node,
        new_parent: Node,
        name_new: bytes,
        dst: Node,
    ) -> None:
        await self._move_up(src)
        await self._move_up(dst)
        old_fd = self.upper_dir_fd(old_parent)
        new_fd = self.upper_dir_fd(new_parent)
        renameat2(old_fd, name_old, new_fd, name_new, RENAME_EXCHANGE)
        if src.is_dir:
            self._fix_moved_dir(src, new_fd, name_new, self.lower_child(new_parent, name_new))
        if dst.is_dir:
            self._fix_moved_dir(dst, old_fd, name_old, self.lower_child(old_parent, name_old))
        src.drop_link(old_parent, name_old)
        dst.drop_link(new_parent, name_new)
        src.add_link(new_parent, name_new)
        dst.add_link(old_parent, name_old)

    # -- files -------------------------------------------------------------------

    def _file_info(self, fd: int) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self.files[fh] = fd
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self.table[inode]
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing and not node.upper:
            async with self.gate.change():
                await self.copy_up(node)
        if node.upper:
            return self._file_info(self._open_upper(node, _file_flags(flags)))
        pfd, name = self.lower_loc(node.lower)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        info = self._file_info(fd)
        self.lower_reads[info.fh] = inode
        return info

    def reads_follow_copy_up(self, node: Node) -> None:
        """Files opened read-only on a lower file before its copy-up read the copy from
        now on, as kernel overlayfs (since 4.19) re-opens them: what was written through
        the mount must not be shadowed by stale lower data once the page cache lets go.
        The upper file replaces the lower one under the same fd number (dup2), so the
        handle stays valid wherever it is used, in Python or in the C fast path."""
        fhs = [fh for fh, ino in self.lower_reads.items() if ino == node.ino]
        fast = self.table.fast
        if not fhs and (fast is None or not fast.reopen(node.ino, -1)):
            return
        try:
            fd = self._open_upper(node, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # a copy its daemon cannot read (rootless, mode 0): reads stay below
        try:
            for fh in fhs:
                os.dup2(fd, self.files[fh], inheritable=False)
                del self.lower_reads[fh]
            if fast is not None:
                fast.reopen(node.ino, fd)
        finally:
            os.close(fd)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self.files[fh], size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        fd = self.files[fh]
        # The writeback cache makes the kernel the keeper of a file's mtime: it stamps
        # writes itself (to its coarse clock) and sends the times in a SETATTR when it
        # changed them. A WRITE moving the upper file's mtime as well would leave the
        # disk (what diff, commit and every later mount read) a few ms off what the
        # mount showed, so the upper file keeps the times it had.
        st = os.fstat(fd)
        written = os.pwrite(fd, buf, off)
        with contextlib.suppress(PermissionError):  # a rootless daemon's file not its own
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        return written

    async def flush(self, fh: int) -> None:
        # Nothing to do at close (no locks, writes go straight to the upper file): ENOSYS
        # once, and the kernel sends no FLUSH at any close any more.
        raise _err(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        os.close(self.files.pop(fh))
        self.lower_reads.pop(fh, None)

    async def fsync(self, fh: int, datasync: bool) -> None:
        if datasync:
            os.fdatasync(self.files[fh])
        else:
            os.fsync(self.files[fh])

    # -- directories -------------------------------------------------------------

    def _list(self, node: Node, whiteouts: list[bytes] | None = None) -> list[bytes]:
        """Names the merged directory shows: upper entries but whiteouts, then lower ones;
        the upper dir's whiteouts are added to `whiteouts` if given."""
        names: list[bytes] = []
        hidden: set[bytes] = set()
        if node.upper:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.upper_dir_fd(node))
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        name = os.fsencode(entry.name)
                        hidden.add(name)
                        if _visible(entry):
                            names.append(name)
                        elif whiteouts is not None:
                            whiteouts.append(name)
            finally:
                os.close(fd)
        if node.lower:
            for child in self.index.children(node.lower):
                name = self.index.entry(child).name
                if name not in hidden:
                    names.append(name)
        return names

    async def opendir(self, inode: int, ctx: Any) -> int:
        if self.stateless_dirs:
            # The kernel then opens directories itself, sends no releasedir, and caches
            # the listings (see sessionhook); readdir finds its directory by inode.
            raise _err(errno.ENOSYS)
        fh = self._next_fh
        self._next_fh += 1
        self.dirs[fh] = DirHandle(self.table[inode])
        return fh

    def _listing(self, fh: int, start_id: int) -> tuple[DirHandle, bool]:
        """(the listing a readdir continues, whether it is kept by inode). Without opendir
        a listing taken at offset 0 is kept by inode until it is read to its end, so
        later offsets see the same entries (as an open dir in overlayfs does, which `rm
        -rf` relies on); a few abandoned ones are dropped oldest first."""
        if fh:
            return self.dirs[fh], False
        ino = sessionhook.current_ino
        node = self.table[ino]
        handle = self._listings.pop(ino, None) if start_id else None
        if handle is None or handle.node is not node:
            handle = DirHandle(node)
        return handle, True

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle, by_ino = self._listing(fh, start_id)
        if handle.names is None or (start_id == 0 and not by_ino):
            if handle.node.upper:
                handle.ids = None
                handle.names = [b".", b"..", *self._list(handle.node)]
            else:  # a directory only the lower layers have: the index answers alone
                handle.ids = [0, 0, *self.index.children(handle.node.lower)]
                handle.names = []
        end = len(handle.names) if handle.ids is None else len(handle.ids)
        if by_ino and start_id < end:  # read on: keep it for the next offset
            listings = self._listings
            listings[handle.node.ino] = handle
            if len(listings) > MAX_LISTINGS:
                del listings[next(iter(listings))]
        for i in range(start_id, end):
            if i < 2:  # the kernel takes no reference for "." and ".."
                node = handle.node if i == 0 else (handle.node.parent or self.root)
                if not pyfuse3.readdir_reply(token, b"." * (i + 1), self._attrs(node), i + 1):
                    return
                continue
            if handle.ids is None:
                name = handle.names[i]
                probe = self._probe(handle.node, name)
                if probe is None:
                    continue  # removed since the listing was taken
            else:
                probe = self._lower_probe(handle.ids[i])
                name = probe.entry.name
            node = self._node(handle.node, name, probe)
            attrs = self._attrs(node, probe.upper_st, probe.entry)
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                return
            self._remember(node)

    async def releasedir(self, fh: int) -> None:
        del self.dirs[fh]

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self.dirs[fh].node if fh else self.table[sessionhook.current_ino]
        if node.upper and not self.read_only:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.upper_dir_fd(node))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- extended attributes ---------------------------------------------------

    def _xattr_path(self, node: Node) -> tuple[str, bool]:
        """(path, follow_symlinks) for *xattr calls on the node's entry."""
        if node.upper:
            return self._upper_target(node)
        return self._xattr_path_lower(node.lower), False

    def _xattr_path_lower(self, ident: int) -> str:
        """Path for *xattr calls with follow_symlinks=False on a lower entry."""
        if ident == _INDEX_ROOT:  # it has no parent dir
            return f"/proc/self/fd/{self.layers.fds[self.index.entry(ident).layer]}/."
        pfd, name = self.lower_loc(ident)
        return at(pfd, name)

    def lower_loc(self, ident: int) -> tuple[int, bytes]:
        """(O_PATH fd of a lower entry's directory in its layer, the entry's name), for a
        call on the name alone (no walk of the whole path: `ld.so` opens a dozen files in
        one dir). The fd is kept for the next caller: do not close it."""
        e = self.index.entry(ident)
        key = (e.parent, e.layer)
        cache = self._lower_dir_fds
        fd = cache.pop(key, None)
        if fd is None:
            fd = open_dir(self.layers.fds[e.layer], self.index.path(e.parent))
            if len(cache) >= MAX_LOWER_DIR_FDS:
                os.close(cache.pop(next(iter(cache))))
        cache[key] = fd
        return fd, e.name

    def _lower_xattr_names(self, ident: int) -> frozenset[bytes]:
        """Names of a lower entry's xattrs, read once: `ls -l` asks every entry for
        security.selinux and the ACLs, and lower entries never change."""
        names = self._lower_xattrs.get(ident)
        if names is None:
            path = self._xattr_path_lower(ident)
            names = frozenset(os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False))
            self._lower_xattrs[ident] = names
        return names

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self.table[inode]
        real = self.fmt.real(name)
        if node.upper:
            if node.xattrs is not None and real not in node.xattrs:
                raise _err(self._absent(real))
        elif real not in self._lower_xattr_names(node.lower):
            raise _err(self._absent(real))
        path, follow = self._xattr_path(node)
        try:
            return os.getxattr(path, real, follow_symlinks=follow)
        except OSError as e:
            code = self._absent(real) if e.errno == errno.ENODATA else e.errno or errno.EIO
            raise _err(code) from None

    def _absent(self, name: bytes) -> int:
        """The errno of an xattr an entry does not have: ENODATA, except security.selinux
        on a host without SELinux, which answers EOPNOTSUPP ("no labels here"). `ls -l`
        asks every entry for its label and stops asking for the whole filesystem at the
        first EOPNOTSUPP; FUSE caches no xattrs, so ENODATA cost a request per entry
        (`ls -lR` of Debian: 6,783 requests, 0.40 s -> 0.02 s). An entry that has a label
        still returns it. Kernel overlayfs answers ENODATA (a known difference)."""
        return errno.EOPNOTSUPP if name == SELINUX_XATTR and not SELINUX_ENABLED else errno.ENODATA

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        node = self.table[inode]
        if node.upper:
            path, follow = self._xattr_path(node)
            names = [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=follow)]
        else:
            names = sorted(self._lower_xattr_names(node.lower))
        shown = (self.fmt.shown(n) for n in names)
        return [n for n in shown if n is not None]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        node = self.table[inode]
        await self.copy_up(node)
        node.forget_xattrs()
        path, follow = self._xattr_path(node)
        try:
            os.setxattr(path, self.fmt.real(name), value, follow_symlinks=follow)
        except OSError as e:
            raise _err(e.errno or errno.EIO) from None

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        node = self.table[inode]
        name = self.fmt.real(name)
        path, follow = self._xattr_path(node)
        try:
            os.getxattr(path, name, follow_symlinks=follow)  # ENODATA before any copy-up
        except OSError as e:
            raise _err(e.errno or errno.EIO) from None
        await self.copy_up(node)
        node.forget_xattrs()
        path, follow = self._xattr_path(node)
        try:
            os.removexattr(path, name, follow_symlinks=follow)
        except OSError as e:
            raise _err(e.errno or errno.EIO) from None


def parse_origin(value: bytes | None) -> tuple[int, int]:
    """(lower hard-link group, nlink bias) from the origin xattr ("GROUP" or "GROUP:BIAS")."""
    if not value:
        return 0, 0
    group, _, bias = value.partition(b":")
    try:
        return int(group), int(bias or b"0")
    except ValueError:
        return 0, 0


def _visible(entry: os.DirEntry[str]) -> bool:
    """Not a whiteout (stat only for the rare char devices: d_type tells the rest)."""
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
        return True
    return entry.is_symlink() or not is_whiteout(entry.stat(follow_symlinks=False))


def _file_flags(flags: int) -> int:
    """Flags for an upper file: the writeback cache needs to read what it writes, and does
    O_APPEND itself."""
    flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND)
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags | os.O_NOFOLLOW | os.O_CLOEXEC


# Handlers that change the upper dir: held while a commit reads it (fs/control.py).
CHANGES = frozenset(
    {
        "setattr",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "symlink",
        "rename",
        "link",
        "create",
        "write",
        "setxattr",
        "removexattr",
        "fsync",
    }
)


def _errno_replies(cls: type) -> type:
    """Wrap every handler so an OSError becomes the errno reply, never a daemon crash, and
    every change passes the write gate."""
    import functools

    def wrap(fn: Any) -> Any:
        gated = fn.__name__ in CHANGES

        @functools.wraps(fn)
        async def handler(self: UnionOperations, *args: Any, **kwargs: Any) -> Any:
            try:
                if gated:
                    async with self.gate.change():
                        return await fn(self, *args, **kwargs)
                return await fn(self, *args, **kwargs)
            except OSError as e:
                raise _err(e.errno or errno.EIO) from None
            except (KeyError, IndexError):
                raise _err(errno.ESTALE) from None
            except pyfuse3.FUSEError:
                raise
            except Exception:  # a bug: answer EIO and keep serving, never take the mount down
                log.exception("%s failed", fn.__name__)
                raise _err(errno.EIO) from None

        return handler

    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and callable(value) and hasattr(pyfuse3.Operations, name):
            setattr(cls, name, wrap(value))
    return cls


_errno_replies(UnionOperations)
