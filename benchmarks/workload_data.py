"""Inputs of the mount workloads that the layer dirs alone do not give: which paths to
lstat, which lower files to append to, and the tarball to untar into the mount.

All are chosen from the data set's tarball, deterministically, once per run, and are
the same for every contender (ratios only mean something if every contender does the
same thing). The untar tarball is cached next to the data set.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks import mount_data
from benchmarks.data import Dataset, cache_dir

APPEND_FILES = 1000
UNTAR_DIRS = ("usr/share",)
QUICK_UNTAR_DIRS = ("usr/share/doc", "usr/share")
"""What `untar` extracts: the first of these the data set has (busybox has none: its
whole rootfs). --quick takes Debian's /usr/share/doc (556 entries, not 4,263)."""


@dataclass(frozen=True)
class Inputs:
    paths: list[str]
    """Every entry of the merged tree, relative, sorted (what `lstat every path` stats)."""
    append_files: list[str]
    """Up to APPEND_FILES regular lower-layer files, spread over the tree (busybox has
    few: its changes layer's added files make up most)."""
    untar: Path
    untar_bytes: int
    untar_entries: int
    untar_what: str
    """`/usr/share` or `the rootfs`: what the untar tarball holds."""
    has_dpkg: bool


def prepare(data: Dataset, stack: mount_data.Stack, quick: bool) -> Inputs:
    members = mount_data.members(data.tarball)
    paths = sorted(mount_data.merged_paths(members, stack.changes))
    visible = set(paths)
    files = [n for n, m in sorted(members.items()) if m.isfile() and n in visible]
    files = sorted({*files, *stack.changes["modified"], *stack.changes["added"]})
    dirs = QUICK_UNTAR_DIRS if quick else UNTAR_DIRS
    top = next((d for d in dirs if d in members and members[d].isdir()), "")
    untar, nbytes, entries = _untar_tarball(data, top)
    return Inputs(
        paths=paths,
        append_files=mount_data.pick(files, APPEND_FILES, []),
        untar=untar,
        untar_bytes=nbytes,
        untar_entries=entries,
        untar_what=f"/{top}" if top else "the rootfs",
        has_dpkg="usr/bin/dpkg" in members,
    )


def _untar_tarball(data: Dataset, top: str) -> tuple[Path, int, int]:
    """A tar of `top` (all of the data set if empty), with its file bytes and entry count;
    cached, with a JSON sidecar written last."""
    if not top:
        return data.tarball, data.bytes, data.entries
    out = cache_dir() / f"untar-{data.name}-{top.replace('/', '-')}.tar"
    meta = out.with_suffix(".json")
    if out.is_file() and meta.is_file():
        doc = json.loads(meta.read_text())
        return out, int(doc["bytes"]), int(doc["entries"])
    nbytes = entries = 0
    tmp = out.with_suffix(".tmp")
    with (
        tarfile.open(data.tarball) as src,
        tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for m in src:
            if not mount_data.under(mount_data.norm(m.name), top):
                continue
            m.name = mount_data.norm(m.name)
            if m.islnk():
                m.linkname = mount_data.norm(m.linkname)
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
            nbytes += m.size if m.isfile() else 0
            entries += 1
    tmp.rename(out)
    meta.write_text(json.dumps({"bytes": nbytes, "entries": entries}) + "\n")
    return out, nbytes, entries
