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
from dataclasses import dataclass, field

ROOT_INO = 1
UPPER_INO_BASE = 1 << 48
"""Upper-only entries: UPPER_INO_BASE + upper st_ino (kept below 2**63)."""
DYNAMIC_INO_BASE = 1 << 62
"""Numbers handed out when the stable number is taken by a deleted-but-open inode."""


@dataclass(eq=False, slots=True)
class Node:
    ino: int
    parent: Node | None
    name: bytes
    is_dir: bool
    lower: int = 0
    """Merged-index id of the lower entry this node shows (0: none, or hidden by opacity)."""
    upper: bool = False
    """The entry exists in the upper dir (at the node's path)."""
    opaque: bool = False
    upper_ino: int = 0
    """st_ino in the upper dir, to tell a reused upper inode number from this one."""
    nlink_bias: int = 0
    """Added to the upper nlink of a copied-up hard link: its lower names that are hidden
    still count, as in overlayfs."""
    nlookup: int = 0
    extra_links: list[tuple[Node, bytes]] = field(default_factory=list)
    """Further names of a hard-linked file (the first is parent/name)."""
    ufd: int = -1
    """O_PATH fd of this directory in the upper dir, opened on demand."""
    xattrs: frozenset[bytes] | None = None
    """Names of the upper entry's xattrs, when this daemon knows them (it copied the file
    up, and has set or removed none since): getxattr of any other name is ENODATA without
    a syscall (`ls -l` asks for security.selinux, every write for security.capability)."""
    default_acl: bool | None = None
    """Whether this upper directory has a default ACL, once looked at (every creation in
    it asks); forgotten with `xattrs`."""

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
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self._next_dynamic = DYNAMIC_INO_BASE

    def __getitem__(self, ino: int) -> Node:
        return self.nodes[ino]

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def add(self, node: Node) -> Node:
        self.nodes[node.ino] = node
        return node

    def dynamic_ino(self) -> int:
        self._next_dynamic += 1
        return self._next_dynamic

    def forget(self, ino: int, n: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup -= n
        if node.nlookup <= 0:
            node.close_fd()
            del self.nodes[ino]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close_fd()
