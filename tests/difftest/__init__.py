"""Differential testing of imgfs-overlay (FUSE) against kernel overlayfs, operation by operation.

The pieces: `layers` builds random lower layers in kernel overlayfs format from a seed,
`ops` generates operations from a seed and applies one to a mount, recording the outcome as
plain data, `tree` snapshots a whole merged tree, `mounts` mounts the oracle (kernel
overlayfs) and "ours" (imgfs-overlay, or a second kernel overlayfs to validate the harness),
and `runner` drives both mounts in lock step and shrinks a failing run to a short repro.

What is compared, and what deliberately is not
------------------------------------------------

Every entry of KNOWN_DIFFERENCES below is a kernel behaviour that a FUSE filesystem cannot
(or need not) mirror. Each is excluded *explicitly*: the comparison code only leaves out a
value where it names the entry (`excluded("...")`), so a new exclusion has to be written
here first, with its reason.

With `redirect_dir=on,index=on` no semantic difference is expected, so the list holds only
values that identify a filesystem rather than describe its tree, and two consequences of how
kernel overlayfs keeps lower hard links together through its index.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDifference:
    name: str
    what: str
    reason: str


KNOWN_DIFFERENCES: tuple[KnownDifference, ...] = (
    KnownDifference(
        "st_dev",
        "st_dev of every entry",
        "a FUSE mount has its own anonymous device number; kernel overlayfs reports its own "
        "(or, without xino, the real layer's for non-directories). Never compared.",
    ),
    KnownDifference(
        "st_ino",
        "st_ino values",
        "FUSE inode numbers are chosen by the daemon. Never compared as values; hard-link "
        "identity is compared instead as the grouping of paths that share an inode "
        "(and as st_nlink for non-directories, except lower_hardlink_nlink).",
    ),
    KnownDifference(
        "atime_ctime",
        "st_atime and st_ctime; st_mtime except right after an explicit utime",
        "they record when the test ran (reads, copy-up, metadata changes), not tree state. "
        "mtime is compared only in the outcome of a utime operation, which sets it explicitly.",
    ),
    KnownDifference(
        "dir_size_nlink",
        "st_size and st_nlink of directories",
        "kernel overlayfs reports them from whichever real directory backs the merged one "
        "(or 1 for merged directories); they describe the layout of the layers, not the tree.",
    ),
    KnownDifference(
        "statfs",
        "statvfs of the mount",
        "block and inode counts describe the backing filesystem and the daemon. Not compared.",
    ),
    KnownDifference(
        "readdir_lists_lower_whiteouts",
        "names a kernel overlayfs mount lists in a directory (listdir, tree walks) whose lstat "
        "then fails with ENOENT: dropped from kernel mounts' listings only",
        "kernel overlayfs hands readdir of a directory that is not merged (present in one "
        "layer only, or opaque) to the real directory (overlayfs.rst: 'Readdir on directories "
        "that are not merged is simply handled by the underlying directory'), so whiteouts in "
        "such a lower directory are listed although lookup hides them. A FUSE filesystem "
        "answering READDIRPLUS gives every entry attributes (and a lookup reference), so it "
        "cannot list a name that does not exist. imgfs-overlay must list only names that exist: "
        "a name it lists that lstat cannot find is still a difference.",
    ),
    KnownDifference(
        "index_in_workdir",
        "upper-format test, only when the upper dir was written by kernel overlayfs "
        "(IMGFS_DIFF_OURS=kernel): paths whose inode is a lower-layer hard link",
        "with index=on, kernel overlayfs joins a copied-up alias of a lower hard link to its "
        "lower-only aliases through workdir/index/. The upper-format test mounts the upper dir "
        "with a fresh workdir, which has no index, so those aliases fall apart (the lower-only "
        "ones show the old lower file). imgfs-overlay's upper dir must be self-contained, so "
        "nothing is excluded for it; the exclusion only lets the harness validate itself.",
    ),
    KnownDifference(
        "lower_hardlink_nlink",
        "st_nlink of non-directories whose inode is a lower-layer hard link (st_nlink > 1 in "
        "its layer), copied up or not, in operation outcomes, whole-tree comparisons and the "
        "upper-format test. Everything else about them is still compared: which paths share "
        "the inode (the hard-link grouping), content, mode, owner, size, xattrs. Files created "
        "through the mount keep st_nlink compared, link()ed or not",
        "with index=on, kernel overlayfs joins the aliases of a lower hard link through "
        "workdir/index/ and counts their links in a trusted.overlay.nlink xattr relative to "
        "the upper or lower inode ('U+n'/'L-n'); the st_nlink it reports after copy-ups, "
        "unlinks and renames over aliases is that bookkeeping, not the number of visible "
        "paths (renaming a file over one alias of a two-link lower inode leaves the other, "
        "never copied-up alias at st_nlink 1; fs/overlayfs ovl_set_nlink_*/ovl_get_nlink). "
        "imgfs-overlay keeps such a group one inode: before "
        "copy-up it reports the layer inode's st_nlink (as the kernel does), after copy-up the "
        "upper inode's st_nlink (every still-visible alias linked in the upper dir) plus a "
        "recorded count of hidden aliases. Paths are classified by the oracle alone: with "
        "every layer on one filesystem and index=on, kernel overlayfs reports the lower "
        "st_ino for these inodes, copied up or not (tree.lower_hardlink_paths, "
        "ops.lower_hardlink_at).",
    ),
)

_NAMES = {d.name for d in KNOWN_DIFFERENCES}


def excluded(name: str) -> bool:
    """Mark a deliberate exclusion in the comparison code; `name` must be listed above."""
    if name not in _NAMES:
        raise KeyError(f"{name!r} is not in KNOWN_DIFFERENCES: document it there first")
    return True
