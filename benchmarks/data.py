"""Input data for the benchmarks, built once and cached outside the repository.

The cache (default ~/.cache/unionfs-bench, or $IMGFS_BENCH_CACHE) keeps a 200 MB
Debian tarball out of git and lets every run, and every checkout, reuse it. Each
tarball has a `.json` sidecar with its size and entry count, written last, so a
half-built tarball is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import CommandError, rmtree, run

DATASETS = ("small", "debian")
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Dataset:
    name: str
    tarball: Path
    bytes: int
    entries: int
    description: str

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tarball": str(self.tarball),
            "bytes": self.bytes,
            "entries": self.entries,
            "description": self.description,
        }


def cache_dir() -> Path:
    env = os.environ.get("IMGFS_BENCH_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "unionfs-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare(name: str, cache: Path | None = None) -> Dataset:
    cache = cache or cache_dir()
    if name == "small":
        return _cached(cache, "busybox-rootfs", "built-in busybox rootfs", _build_small)
    if name == "debian":
        desc = f"debootstrap --variant=minbase {DEBIAN_SUITE}, tar --numeric-owner --xattrs"
        return _cached(cache, "debian-minbase", desc, _build_debian)
    raise ValueError(f"unknown data set {name!r} (choose from {', '.join(DATASETS)})")


def _cached(
    cache: Path, stem: str, description: str, build: Callable[[Path, Path], None]
) -> Dataset:
    tarball, meta = cache / f"{stem}.tar", cache / f"{stem}.json"
    if not (tarball.is_file() and meta.is_file()):
        tmp = cache / f"{stem}.tar.tmp"
        build(cache, tmp)
        tmp.rename(tarball)
        info = {"bytes": tarball.stat().st_size, "entries": count_entries(tarball)}
        meta.write_text(json.dumps(info) + "\n")
    info = json.loads(meta.read_text())
    return Dataset(stem, tarball, int(info["bytes"]), int(info["entries"]), description)


def count_entries(tarball: Path) -> int:
    with tarfile.open(tarball) as tar:
        return sum(1 for _ in tar)


def _build_small(cache: Path, out: Path) -> None:
    from unionfs.builtin import write_rootfs_tar

    with open(out, "wb") as f:
        write_rootfs_tar(f)


def _build_debian(cache: Path, out: Path) -> None:
    """debootstrap needs root (it chroots and chowns) and the Debian mirror, once."""
    if os.geteuid() != 0:
        raise SystemExit("benchmarks: building the Debian rootfs needs root (debootstrap)")
    if shutil.which("debootstrap") is None:
        raise SystemExit("benchmarks: apt-get install debootstrap (or use benchmarks/run)")
    mirror = os.environ.get("IMGFS_BENCH_MIRROR", DEFAULT_MIRROR)
    rootfs = cache / "debian-minbase.rootfs"
    log = cache / "debootstrap.log"
    rmtree(rootfs)
    sys.stderr.write(f"benchmarks: building the Debian rootfs once (log: {log})\n")
    try:
        with open(log, "w") as f:
            cmd = ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror]
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
        if proc.returncode != 0:
            tail = log.read_text().strip().splitlines()[-5:]
            raise SystemExit("benchmarks: debootstrap failed: " + " | ".join(tail))
        run(["tar", "--numeric-owner", "--xattrs", "-C", rootfs, "-cf", out, "."])
    except CommandError as e:
        raise SystemExit(f"benchmarks: {e}") from None
    finally:
        rmtree(rootfs)
