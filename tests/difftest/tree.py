"""A whole merged tree as comparable data: every entry's attributes, contents, link targets,
user xattrs, and which paths are hard links of each other."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ops import digest, existing, hide_nlink, summarize


@dataclass
class Tree:
    entries: dict[str, tuple] = field(default_factory=dict)
    # Groups of paths (size > 1) sharing one inode: hard-link identity without st_ino values.
    links: set[frozenset[str]] = field(default_factory=set)
    # st_ino per path. Never compared (excluded("st_ino")); only used to classify paths.
    inos: dict[str, int] = field(default_factory=dict)


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _content(full: str, st: os.stat_result) -> object:
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(full)
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return digest(b"".join(chunks))
    finally:
        os.close(fd)


def _xattrs(full: str) -> tuple[tuple, tuple]:
    names = os.listxattr(full, follow_symlinks=False)
    user = tuple(
        (n, os.getxattr(full, n, follow_symlinks=False))
        for n in sorted(names)
        if n.startswith("user.")
    )
    private = tuple(sorted(n for n in names if n.startswith("trusted.overlay.")))
    return user, private


def _entry(full: str, st: os.stat_result) -> tuple:
    """An entry's compared attributes; a failing call is recorded as its errno, in place."""
    try:
        content = _content(full, st)
    except OSError as e:
        content = f"reading: {_errname(e)}"
    try:
        user, private = _xattrs(full)
    except OSError as e:
        user, private = (f"xattrs: {_errname(e)}",), ()
    return (*summarize(st), content, user, private)


def snapshot(root: str, kernel: bool) -> Tree:
    """The tree of the mount at `root` (a kernel overlayfs mount if `kernel`)."""
    tree = Tree()
    by_inode: dict[tuple[int, int], list[str]] = {}

    def visit(rel: str) -> None:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except OSError as e:
            tree.entries[rel] = (f"listed by readdir, but lstat: {_errname(e)}",)
            return
        tree.entries[rel] = _entry(full, st)
        tree.inos[rel] = st.st_ino
        if stat.S_ISDIR(st.st_mode):
            try:
                names = existing(full, os.listdir(full), kernel)
            except OSError as e:
                tree.entries[rel] += (f"readdir: {_errname(e)}",)
                return
            for name in sorted(names):
                visit(f"{rel}/{name}" if rel else name)
        else:
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)

    visit("")
    tree.links = {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}
    return tree


def diff(
    oracle: Tree,
    ours: Tree,
    ignore: Iterable[str] = (),
    labels: tuple[str, str] = ("oracle", "ours"),
    limit: int = 40,
    nlink_hidden: Iterable[str] = (),
) -> list[str]:
    """Human-readable differences (empty when the trees are equal).

    Paths in `ignore` are left out entirely (hard-link groups included); for paths in
    `nlink_hidden` only st_nlink is left out, in both trees (see hide_nlink)."""
    skip = set(ignore)
    hidden = set(nlink_hidden)
    out: list[str] = []
    a, b = labels
    for path in sorted(set(oracle.entries) | set(ours.entries)):
        if path in skip:
            continue
        x, y = oracle.entries.get(path), ours.entries.get(path)
        if path in hidden:
            x, y = (hide_nlink(e) if e is not None else None for e in (x, y))
        if x != y:
            out.append(f"/{path}: {a}={x} {b}={y}")

    def groups(tree: Tree) -> set[frozenset[str]]:
        kept = {frozenset(g - skip) for g in tree.links}
        return {g for g in kept if len(g) > 1}

    ga, gb = groups(oracle), groups(ours)
    for g in sorted(ga - gb, key=sorted):
        out.append(f"hard links only in {a}: {sorted(g)}")
    for g in sorted(gb - ga, key=sorted):
        out.append(f"hard links only in {b}: {sorted(g)}")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out


def lower_hardlink_paths(tree: Tree, lower_inos: set[int]) -> set[str]:
    """Paths of a kernel overlayfs tree whose inode is (a copy-up of) a lower hard link.

    Kernel overlayfs on one filesystem (samefs) with index=on reports the lower inode number
    for these files, copied up or not (as ops.lower_hardlink_at); `lower_inos` are those of
    the layers' regular files with st_nlink > 1. This classifies, it compares nothing.
    """
    return {
        p for p, ino in tree.inos.items() if ino in lower_inos and tree.entries[p][:1] == ("f",)
    }
