"""Merge a stack of read-only layer dirs into one tree, as kernel overlayfs shows it.

Layers come top first. Each merged directory lists the union of its children over the
layers that hold it as a directory, top down, stopping after a layer where it is opaque
(`trusted.overlay.opaque` or `user.overlay.opaque` = "y") or where the name is a
whiteout or a non-directory. The first layer holding a name decides it: a whiteout
(char device 0:0) hides it, a non-directory hides everything of that name below, a
directory supplies the merged directory's own metadata. Redirects are ignored.

One deliberate difference from a literal reading of overlayfs.rst: an opaque layer *root*
does not hide the layers below, because the kernel never checks the root for opacity
(the root is not looked up; test_index.py checks this against a real mount). A layer dir
the builder may not read (an unprivileged mount daemon's view of a root-owned 0700 dir)
adds nothing and ends its directory's merge, as an opaque one would.

The walk only ever opens directories beneath a layer root without following symlinks
(`open_beneath`) and reads metadata with fstatat(AT_SYMLINK_NOFOLLOW), so a hostile
symlink in a layer can't make it read anything outside. Directories are visited
breadth-first with children sorted by name bytes, which is the id order of the index.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.fs.layerfds import is_whiteout
from unionfs.safeio import open_beneath

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_XATTRS = (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)


@dataclass(slots=True)
class Node:
    """One visible entry of the merged tree; its id is its position in the list plus one."""

    parent: int
    name: bytes
    layer: int
    st: os.stat_result
    first_child: int = 0
    child_count: int = 0
    nlink: int = 1
    link_group: int = 0
    links: list[int] | None = None  # shared by every member of a hard-link group


@dataclass(slots=True)
class _Child:
    """A name while the layers of its parent are scanned: which layers merge into it."""

    layer: int
    st: os.stat_result | None  # None: hidden by a whiteout
    dir_layers: list[int] | None = None  # the layers holding it as a directory so far
    open: bool = True  # lower layers may still add to it


@dataclass(slots=True)
class MergedTree:
    nodes: list[Node] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)  # hard-link groups, ascending ids


def is_opaque(fd: int) -> bool:
    """Whether the directory open at `fd` hides the same directory in lower layers."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return False
        raise
    for name in OPAQUE_XATTRS:
        if name in names:
            try:
                if os.getxattr(fd, name) == b"y":
                    return True
            except OSError as e:
                if e.errno not in _NO_XATTRS:
                    raise
    return False


def _scan(fd: int, layer: int, children: dict[bytes, _Child]) -> None:
    """Fold one layer's listing of a directory into `children` (higher layers came first)."""
    with os.scandir(fd) as it:
        for de in it:
            name = os.fsencode(de.name)
            child = children.get(name)
            if child is None:
                st = de.stat(follow_symlinks=False)
                if is_whiteout(st):
                    children[name] = _Child(layer, None, None, False)
                elif stat.S_ISDIR(st.st_mode):
                    children[name] = _Child(layer, st, [layer])
                else:
                    children[name] = _Child(layer, st, None, False)
            elif child.open:
                # Only a directory continues a directory; a whiteout or anything else ends it.
                if de.is_dir(follow_symlinks=False):
                    child.dir_layers.append(layer)  # type: ignore[union-attr]
                else:
                    child.open = False


def _read_dir(root_fds: Sequence[int], rel: bytes, layers: list[int]) -> dict[bytes, _Child]:
    """The merged children of the directory `rel` that the given layers hold, top first."""
    children: dict[bytes, _Child] = {}
    for layer in layers:
        try:
            fd = open_beneath(root_fds[layer], rel, _DIR_FLAGS) if rel else os.dup(root_fds[layer])
        except PermissionError:
            # Built by an unprivileged mount daemon, a layer dir may be unreadable to it (a
            # root-owned 0700 dir): it adds nothing, and hides the layers below it as an
            # opaque one would rather than let them show through.
            break
        try:
            _scan(fd, layer, children)
            if rel and is_opaque(fd):
                break
        finally:
            os.close(fd)
    return children


def _link_groups(nodes: list[Node]) -> list[list[int]]:
    """Group visible non-directories by their layer inode; fix up nlink and link_group."""
    by_inode: dict[tuple[int, int, int], list[int]] = {}
    for i, node in enumerate(nodes):
        node.link_group = i + 1
        st = node.st
        if not stat.S_ISDIR(st.st_mode):
            # The layer inode's own count, hidden aliases included: overlayfs shows that.
            node.nlink = st.st_nlink
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            by_inode.setdefault((node.layer, st.st_dev, st.st_ino), []).append(i + 1)
    groups = [ids for ids in by_inode.values() if len(ids) > 1]
    groups.sort()
    for ids in groups:
        for id_ in ids:
            node = nodes[id_ - 1]
            node.link_group, node.links = ids[0], ids
    return groups


def merge_layers(lower_dirs: Sequence[Path]) -> MergedTree:
    """Walk the layers (top first) into the merged tree, in index id order."""
    if not lower_dirs:
        raise ValueError("a merged index needs at least one layer")
    root_fds: list[int] = []
    try:
        for d in lower_dirs:
            root_fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        nodes = [Node(1, b"", 0, os.fstat(root_fds[0]))]
        queue: deque[tuple[int, bytes, list[int]]] = deque([(1, b"", list(range(len(root_fds))))])
        while queue:
            dir_id, rel, layers = queue.popleft()
            children = _read_dir(root_fds, rel, layers)
            parent = nodes[dir_id - 1]
            parent.first_child = len(nodes) + 1
            subdirs = 0
            for name in sorted(children):
                child = children[name]
                if child.st is None:
                    continue
                nodes.append(Node(dir_id, name, child.layer, child.st))
                if child.dir_layers is not None:
                    subdirs += 1
                    queue.append((len(nodes), rel + b"/" + name if rel else name, child.dir_layers))
            parent.child_count = len(nodes) + 1 - parent.first_child
            if not parent.child_count:
                parent.first_child = 0
            parent.nlink = 2 + subdirs
        return MergedTree(nodes, _link_groups(nodes))
    finally:
        for fd in root_fds:
            os.close(fd)
