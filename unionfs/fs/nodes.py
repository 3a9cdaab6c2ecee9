"""The daemon's inode table: one Node per inode the kernel knows.

A Node's state (which lower entry it merges, whether it exists in the upper dir,
whether that upper dir is opaque) is always derivable from disk, so a forgotten
node can be dropped and rebuilt by the next lookup. Inode numbers are stable:
a lower entry's number is its merged-index id (hard links share their group's
id), a copied-up entry keeps its origin's number, and an entry that only exists
in the upper dir is numbered after its upper inode.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unionfs.fs.fastpath import FastPath

ROOT_INO = 1
UPPER_INO_BASE = 1 << 48
"""Upper-only entries: UPPER_INO_BASE + upper st_ino (kept below 2**63)."""
DYNAMIC_INO_BASE = 1 << 62
"""Numbers handed out when the stable number is taken by a deleted-but-open inode."""
CAPS_XATTR = b"security.capability"
_mirrored: NodeTable | None = None
"""The table whose nodes the C fast path mirrors (one per daemon process)."""


class _Shown:
    """A field that decides what a node shows: setting it tells the C fast path (through
    the mirrored table), so no change of a node's pure-lower state can be missed."""

    def __set_name__(self, owner: type, name: str) -> None:
        slot = owner.__dict__["_" + name]  # the member descriptor __slots__ made
        self._get, self._set = slot.__get__, slot.__set__

    def __get__(self, node: Any, owner: type | None = None) -> Any:
        return self if node is None else self._get(node)

    def __set__(self, node: Node, value: Any) -> None:
        # Python's lookups set lower/opaque on every call: tell the C side news only
        news = _mirrored is not None and self._get(node) != value
        self._set(node, value)
        if news:
            _mirrored.changed(node)


class Node:
    """One inode. `parent`, `lower`, `upper`, `opaque` and `xattrs` decide what the C fast
    path may answer for it; setting any of them tells it (when the table is mirrored)."""

    __slots__ = (
        "_lower",
        "_opaque",
        "_parent",
        "_upper",
        "_xattrs",
        "default_acl",
        "extra_links",
        "ino",
        "is_dir",
        "name",
        "nlink_bias",
        "nlookup",
        "ufd",
        "upper_ino",
    )  # fmt: skip

    def __init__(
        self,
        ino: int,
        parent: Node | None,
        name: bytes,
        is_dir: bool,
        lower: int = 0,
        upper: bool = False,
        opaque: bool = False,
        upper_ino: int = 0,
        nlookup: int = 0,
    ) -> None:
        self.ino = ino
        self._parent = parent
        self.name = name
        self.is_dir = is_dir
        self._lower = lower
        self._upper = upper
        self._opaque = opaque
        self.upper_ino = upper_ino
        """st_ino in the upper dir, to tell a reused upper inode number from this one."""
        self.nlink_bias = 0
        """Added to the upper nlink of a copied-up hard link: its lower names that are
        hidden still count, as in overlayfs."""
        self.nlookup = nlookup
        self.extra_links: list[tuple[Node, bytes]] = []
        """Further names of a hard-linked file (the first is parent/name)."""
        self.ufd = -1
        """O_PATH fd of this node's upper entry: a directory's, opened on demand, and a
        deleted entry's, kept for the requests the kernel still sends about it."""
        self._xattrs: frozenset[bytes] | None = None
        self.default_acl: bool | None = None
        """Whether this upper directory has a default ACL, once looked at (every creation
        in it asks); forgotten with `xattrs`."""

    def __repr__(self) -> str:
        return (
            f"Node(ino={self.ino}, name={self.name!r}, lower={self._lower}, "
            f"upper={self._upper}, opaque={self._opaque}, nlookup={self.nlookup})"
        )

    parent = _Shown()
    lower = _Shown()
    """Merged-index id of the lower entry this node shows (0: none, or hidden)."""
    upper = _Shown()
    """The entry exists in the upper dir (at the node's path)."""
    opaque = _Shown()
    xattrs = _Shown()
    """Names of the upper entry's xattrs, when this daemon knows them (it copied the file
    up or made it, and has set or removed none since): getxattr of any other name is
    ENODATA without a syscall (`ls -l` asks for security.selinux, every write and chown
    for security.capability; the C fast path answers the latter, see `no_caps`)."""

    @property
    def no_caps(self) -> bool:
        """Known to be an upper entry without security.capability (see `xattrs`)."""
        return self._upper and self._xattrs is not None and CAPS_XATTR not in self._xattrs

    @property
    def pure_lower(self) -> int:
        """The lower entry this node shows if it shows only that (no upper entry, not
        opaque, still linked), else 0: the C fast path may answer for such a node."""
        if self._lower and not self._upper and not self._opaque and self.alive:
            return self._lower
        return 0

    def forget_xattrs(self) -> None:
        """What this daemon knew of the entry's xattrs no longer holds (it changed them,
        or a chown/chmod did)."""
        self.xattrs = None
        self.default_acl = None

    @property
    def alive(self) -> bool:
        return self.parent is not None or self.ino == ROOT_INO

    def links(self) -> list[tuple[Node, bytes]]:
        if self.parent is None:
            return list(self.extra_links)
        return [(self.parent, self.name), *self.extra_links]

    def drop_link(self, parent: Node, name: bytes) -> None:
        """Forget one name of this node; the next name (if any) becomes the primary one."""
        links = [(p, n) for p, n in self.links() if not (p is parent and n == name)]
        if links:
            (self.parent, self.name), self.extra_links = links[0], links[1:]
        else:
            self.parent, self.extra_links = None, []

    def add_link(self, parent: Node, name: bytes) -> None:
        if any(p is parent and n == name for p, n in self.links()):
            return
        if self.parent is None:
            self.parent, self.name = parent, name
        else:
            self.extra_links.append((parent, name))

    def close_fd(self) -> None:
        if self.ufd >= 0:
            os.close(self.ufd)
            self.ufd = -1


class NodeTable:
    """The nodes Python answers for. With the C fast path on (`mirror`), the kernel may
    also hold inodes only the fast path knows (pure lower entries it looked up): `get`
    adopts such an inode as a Node the first time Python needs it, and every change of
    what the fast path may answer for a node is told to it (Node's `_Shown` fields)."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self._next_dynamic = DYNAMIC_INO_BASE
        self.fast: FastPath | None = None

    def mirror(self, fast: FastPath) -> None:
        """Tell `fast` about every node from now on."""
        global _mirrored
        self.fast, _mirrored = fast, self
        for node in self.nodes.values():
            self.changed(node)

    def __getitem__(self, ino: int) -> Node:
        node = self.get(ino)
        if node is None:
            raise KeyError(ino)
        return node

    def get(self, ino: int) -> Node | None:
        node = self.nodes.get(ino)
        if node is None and self.fast is not None:
            node = self.fast.adopt(ino, self)
        return node

    def all(self) -> list[Node]:
        """Every node, after adopting those only the fast path holds."""
        if self.fast is not None:
            for ino in self.fast.held():
                self.get(ino)
        return list(self.nodes.values())

    def holds(self, node: Node) -> bool:
        """Whether `node` is the table's (not one made for a single request or walk)."""
        return self.nodes.get(node.ino) is node

    def add(self, node: Node) -> Node:
        self.nodes[node.ino] = node
        self.changed(node)
        return node

    def changed(self, node: Node) -> None:
        if self.fast is not None and self.holds(node):
            parent = node.parent
            pino = parent.ino if parent is not None else 0
            self.fast.set(node.ino, node.pure_lower, pino, node.no_caps)

    def dynamic_ino(self) -> int:
        self._next_dynamic += 1
        return self._next_dynamic

    def forget(self, ino: int, n: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup -= n
        if node.nlookup <= 0:
            if self.fast is not None:
                # lookups the C side handed out are still the kernel's: keep the node
                node.nlookup = self.fast.drop(ino)
                if node.nlookup > 0:
                    return
            node.close_fd()
            del self.nodes[ino]

    def close(self) -> None:
        global _mirrored
        if _mirrored is self:
            _mirrored = None
        for node in self.nodes.values():
            node.close_fd()
