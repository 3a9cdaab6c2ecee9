"""Synthetic images of 1 to 100 layers over the data set's rootfs, for the layer scaling
benchmark, and the paths it stats.

Layer 0 is the rootfs; layers 1..99 each add one small file to the same few directories
(MERGED_DIRS of them, e.g. /etc, /usr/bin, /usr/share), so those directories, and
their ancestors, are merged across every layer of an image, as in real images where
each layer installs something. The image of N layers is layers 0..N-1. All of them are
imported into one imgfs store, `CACHE/layers-store-<data set>/` (for `imgfs mount`);
`CACHE/L-<data set>/<i>` are short symlinks to layer i's dir, so kernel overlayfs's
`lowerdir=` of 100 layers, relative to that dir, fits in mount(2)'s one page of
options. Built once; a JSON sidecar written last marks a complete build.
"""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import mount_data
from benchmarks.data import Dataset, cache_dir
from benchmarks.harness import rmtree

MAX_LAYERS = 100
MERGED_DIRS = 10
PREFERRED_DIRS = [
    "etc",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/share",
    "usr/share/doc",
    "usr/lib/x86_64-linux-gnu",
    "var/lib/dpkg",
    "var/lib",
    "usr/include",
]
STATS = 10_000


@dataclass(frozen=True)
class LayerStack:
    """The image of `layers` layers: satisfies `mounters.Layered`."""

    store: Path
    image: str
    lower_dirs: list[Path]
    layers: int


@dataclass(frozen=True)
class Scaling:
    stacks: dict[int, LayerStack]
    merged_dirs: list[str]
    bottom_paths: list[str]
    """STATS paths of the rootfs layer (each entry once, shuffled, then again)."""
    missing_paths: list[str]
    """STATS distinct names that no layer has, in the merged directories."""


def prepare(data: Dataset, counts: tuple[int, ...], log: Any = sys.stderr) -> Scaling:
    cache = cache_dir()
    store_root = cache / f"layers-store-{data.name}"
    links = cache / f"L-{data.name}"
    meta = cache / f"layers-{data.name}.json"
    mount_data.remove_leftover_containers(store_root)
    doc = json.loads(meta.read_text()) if meta.is_file() else None
    if doc is None or not all((links / str(i)).is_dir() for i in range(MAX_LAYERS)):
        log.write(f"benchmarks: building {MAX_LAYERS} layers once ({store_root})\n")
        doc = _build(data, store_root, links, log)
        meta.write_text(json.dumps(doc, indent=1) + "\n")
    stacks = {
        n: LayerStack(
            store_root,
            doc["images"][str(n)],
            [links / str(i) for i in reversed(range(n))],
            n,
        )
        for n in counts
    }
    names = sorted(mount_data.members(data.tarball))
    random.Random(0).shuffle(names)
    bottom = [names[i % len(names)] for i in range(STATS)]
    dirs = doc["merged_dirs"]
    missing = [f"{dirs[i % len(dirs)]}/bench-missing-{i:05d}" for i in range(STATS)]
    return Scaling(stacks, dirs, bottom, missing)


def _build(data: Dataset, store_root: Path, links: Path, log: Any) -> dict[str, Any]:
    from unionfs.reference import parse
    from unionfs.store.images import ImageStore

    t0 = time.monotonic()
    store = ImageStore(store_root)
    store.layout.ensure()
    members = mount_data.members(data.tarball)
    dirs = _merged_dirs(members)
    with open(data.tarball, "rb") as f:
        layers = [store.layers.import_tar(f)]
    for i in range(1, MAX_LAYERS):
        layers.append(store.layers.import_tar(io.BytesIO(_layer_tar(i, dirs, members))))
    images = {}
    for n in range(1, MAX_LAYERS + 1):
        config = mount_data.image_config(
            [la.diff_id for la in layers[:n]], [f"layer {i}" for i in range(n)]
        )
        ref = parse(f"bench/layers:{data.name}-{n}")
        store.add_image(config, [la.descriptor() for la in layers[:n]], ref)
        images[str(n)] = str(ref)
    rmtree(links)
    links.mkdir()
    for i, la in enumerate(layers):
        (links / str(i)).symlink_to(store.layers.path(la.diff_id))
    log.write(f"benchmarks: layers ready in {time.monotonic() - t0:.1f} s\n")
    return {"images": images, "merged_dirs": dirs, "diff_ids": [la.diff_id for la in layers]}


def _merged_dirs(members: dict[str, tarfile.TarInfo]) -> list[str]:
    """MERGED_DIRS directories of the rootfs every added layer writes into."""
    dirs = [n for n, m in sorted(members.items()) if m.isdir()]
    chosen = [d for d in PREFERRED_DIRS if d in members and members[d].isdir()]
    chosen = chosen[:MERGED_DIRS]
    chosen += mount_data.pick([d for d in dirs if d not in chosen], MERGED_DIRS - len(chosen), [])
    return chosen


def _layer_tar(i: int, dirs: list[str], members: dict[str, tarfile.TarInfo]) -> bytes:
    """Layer i: one small file in each merged dir (and those dirs, as the rootfs has them)."""
    buf = io.BytesIO()
    written: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            parts = d.split("/")
            for k in range(1, len(parts) + 1):
                parent = "/".join(parts[:k])
                if parent not in written:
                    written.add(parent)
                    tar.addfile(_dir_like(members[parent]))
            body = f"added by benchmark layer {i}\n".encode()
            info = tarfile.TarInfo(f"{d}/.bench-layer-{i:03d}")
            info.size, info.mode, info.mtime = len(body), 0o644, mount_data.MTIME
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _dir_like(base: tarfile.TarInfo) -> tarfile.TarInfo:
    info = tarfile.TarInfo(mount_data.norm(base.name))
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, base.mode, base.uid, base.gid
    info.mtime = base.mtime
    return info
