"""Workload: import a rootfs tarball as a single-layer image.

An import does two things: unpack the tar into a layer directory and store a
compressed copy of it as the layer blob. The baseline does exactly those two halves
with the stock tools (`tar -x`, then `zstd -T0 -3`), so its time is the practical
limit for any importer on this machine. Every contender starts from an empty store
in a fresh directory and reads the same tarball from the page cache.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.data import Dataset
from benchmarks.harness import Case, Contender, Rep, rmtree, run, unmount_under

BASELINE = "tar -x + zstd -T0 -3"
TAR_EXTRACT = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"]
REF = "bench/import:latest"
PODMAN_ROOTLESS = "needs root (a fresh --root as non-root needs a user namespace)"


def imgfs_command() -> list[str]:
    """The imgfs of the running interpreter's environment (the venv), as a user runs it."""
    script = Path(sys.executable).parent / "imgfs"
    if script.is_file():
        return [str(script)]
    found = shutil.which("imgfs")
    return [found] if found else [sys.executable, "-m", "unionfs"]


def cases(data: Dataset, quick: bool) -> list[Case]:
    tarball = data.tarball
    contenders = [
        Contender(
            BASELINE,
            lambda rep: _baseline(rep, tarball),
            description="tar -x into a fresh dir, then zstd -T0 -3 of the tarball",
            requires=("tar", "zstd"),
            inspect=lambda rep: _blob_size(rep.workdir / "layer.tar.zst"),
        ),
        Contender(
            "imgfs import",
            lambda rep: _imgfs(rep, tarball, []),
            inspect=lambda rep: _blob_size(rep.workdir / "store" / "oci" / "blobs"),
            description="imgfs --root FRESH import TAR (zstd blob, level 3, multithreaded)",
            ours=True,
        ),
        Contender(
            "imgfs import --compression gzip",
            lambda rep: _imgfs(rep, tarball, ["--compression", "gzip"]),
            inspect=lambda rep: _blob_size(rep.workdir / "store" / "oci" / "blobs"),
            description="imgfs --root FRESH import --compression gzip TAR (level 6)",
            ours=True,
        ),
        Contender(
            "umoci new/unpack + tar -x + repack",
            lambda rep: _umoci(rep, tarball),
            inspect=lambda rep: _blob_size(rep.workdir / "layout" / "blobs"),
            description="umoci init, new, unpack; tar -x into the bundle rootfs; umoci repack",
            requires=("umoci", "tar"),
        ),
        Contender(
            "podman import",
            lambda rep: _podman(rep, tarball),
            setup=_podman_setup,
            teardown=_podman_teardown,
            description="podman --root FRESH --runroot FRESH --storage-driver overlay import",
            requires=("podman",),
            skip=None if os.geteuid() == 0 else PODMAN_ROOTLESS,
        ),
    ]
    return [
        Case(
            benchmark="import",
            workload=f"import {data.name}",
            contenders=contenders,
            baseline=BASELINE,
            bytes=data.bytes,
            notes=[
                f"{data.name}: {data.bytes / 1e6:.1f} MB uncompressed tar, {data.entries:,} entries"
                f" ({data.description}); MB/s is uncompressed tar bytes per wall second.",
            ],
        )
    ]


def _blob_size(path: Path) -> dict[str, float]:
    """The layer blob's size: the file itself, or the largest blob under a blobs dir."""
    if path.is_file():
        return {"layer_blob_bytes": path.stat().st_size}
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return {"layer_blob_bytes": max(sizes)} if sizes else {}


def _baseline(rep: Rep, tarball: Path) -> None:
    rootfs = rep.workdir / "rootfs"
    rootfs.mkdir()
    run([*TAR_EXTRACT, tarball, "-C", rootfs])
    run(["zstd", "-q", "-T0", "-3", tarball, "-o", rep.workdir / "layer.tar.zst"])


def _imgfs(rep: Rep, tarball: Path, extra: list[str]) -> None:
    run([*imgfs_command(), "--root", rep.workdir / "store", "import", *extra, tarball, REF])


def _umoci(rep: Rep, tarball: Path) -> None:
    """The umoci way to import: umoci has no import, so build the image from an empty one."""
    layout, bundle = rep.workdir / "layout", rep.workdir / "bundle"
    image = f"{layout}:latest"
    rootless = [] if os.geteuid() == 0 else ["--rootless"]
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", image])
    run(["umoci", "unpack", *rootless, "--image", image, bundle])
    run([*TAR_EXTRACT, tarball, "-C", bundle / "rootfs"])
    run(["umoci", "repack", "--image", image, bundle])


def _podman_setup(rep: Rep) -> None:
    # podman refuses a --runroot longer than 50 characters, so it cannot live in workdir
    rep.state["runroot"] = Path(tempfile.mkdtemp(prefix="imgfs-bench-podman-"))


def _podman_teardown(rep: Rep) -> None:
    runroot = rep.state.pop("runroot", None)
    if runroot is not None:
        unmount_under(runroot)
        rmtree(runroot)


def _podman(rep: Rep, tarball: Path) -> None:
    """Fresh storage per rep; TMPDIR too, where podman may stage its input."""
    tmp = rep.workdir / "tmp"
    tmp.mkdir()
    cmd = [
        *("podman", "--root", rep.workdir / "root", "--runroot", rep.state["runroot"]),
        *("--storage-driver", "overlay", "--events-backend", "none"),
        *("import", tarball, REF),
    ]
    run(cmd, env={**os.environ, "TMPDIR": str(tmp)})
