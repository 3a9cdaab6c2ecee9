"""Archive commands: save, load (images as OCI / docker-save archives) and export (a
container's flattened rootfs)."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from unionfs.containers import Containers
from unionfs.errors import ImgfsError
from unionfs.progress import Progress, ProgressReader
from unionfs.store.atomic import fsync_dir, temp_name
from unionfs.store.images import ImageStore


def register(sub: Any) -> None:
    """Add this module's subcommands to the imgfs parser."""
    p = sub.add_parser(
        "save",
        help="write images to an OCI archive (tar of an OCI image layout)",
        description="Write images to an OCI archive that `imgfs load`, `skopeo copy "
        "oci-archive:FILE:NAME` and `docker load` read. Each image is named in the "
        "archive by its full reference (e.g. docker.io/library/busybox:latest).",
    )
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default, or -: standard output)"
    )
    p.set_defaults(func=cmd_save)

    p = sub.add_parser(
        "load",
        help="load images from an OCI or docker-save archive",
        description="Load every image of an archive: OCI archives (skopeo oci-archive:, "
        "imgfs save, docker save 25+) and docker-save archives (manifest.json with layer "
        "tars, skopeo docker-archive:), plain or gzip/zstd/xz/bzip2 compressed.",
    )
    p.add_argument(
        "-i", "--input", metavar="FILE", help="read FILE (default, or -: standard input)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "export",
        help="write a container's filesystem (merged view) as a tar",
        description="Write the container's merged tree (image layers plus its changes) as "
        "one flattened tar, like docker export; `imgfs import` takes it back.",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (default, or -: standard output)"
    )
    p.set_defaults(func=cmd_export)


def cmd_save(args: argparse.Namespace) -> int:
    from unionfs.store.archive import save_images

    store = ImageStore(args.root)
    progress = Progress("Saving")
    with _output(args.output) as out:
        try:
            save_images(store, args.images, out, progress.advance)
        finally:
            progress.finish()
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from unionfs.store.archive import load_archive

    store = ImageStore(args.root)
    source, total = _input(args.input)
    progress = Progress("Loading", total)
    if args.quiet:
        progress.enabled = False
    try:
        results = load_archive(
            store, ProgressReader(source, progress), warn=lambda w: _warn(f"warning: {w}")
        )
    finally:
        progress.finish()
        if source is not sys.stdin.buffer:
            source.close()
    for result in results:
        if result.refs:
            for ref in result.refs:
                print(f"Loaded image: {ref.familiar()}")
        else:
            print(f"Loaded image ID: {result.image.id}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unionfs.changes.export import export_container

    store = ImageStore(args.root)
    container = Containers(store).find(args.container)
    progress = Progress("Exporting")
    with _output(args.output) as out:
        try:
            export_container(store, container, out, progress.advance)
        finally:
            progress.finish()
    return 0


def _warn(message: str) -> None:
    sys.stderr.write(f"imgfs: {message}\n")


def _input(file: str | None) -> tuple[BinaryIO, int | None]:
    if file in (None, "-"):
        if sys.stdin.isatty():
            raise ImgfsError(
                "refusing to read an archive from a terminal: use -i FILE or redirect stdin"
            )
        return sys.stdin.buffer, None
    assert file is not None
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as e:
        raise ImgfsError(f"cannot open {file}: {e.strerror}") from None
    st = os.fstat(f.fileno())
    if stat.S_ISDIR(st.st_mode):
        f.close()
        raise ImgfsError(f"{file} is a directory, not an archive")
    return f, (st.st_size if stat.S_ISREG(st.st_mode) else None)


@contextlib.contextmanager
def _output(file: str | None) -> Iterator[BinaryIO]:
    """Standard output (never a terminal), or FILE written under a temp name and renamed
    into place only when complete, so a failed save or export leaves no partial file."""
    if file in (None, "-"):
        if sys.stdout.isatty():
            raise ImgfsError(
                "refusing to write a tar archive to a terminal: use -o FILE or redirect stdout"
            )
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    assert file is not None
    path = Path(file)
    if path.is_dir():
        raise ImgfsError(f"{file} is a directory")
    directory = path.parent if str(path.parent) else Path(".")
    tmp = temp_name(directory, "imgfs-")
    try:
        f = open(tmp, "xb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ImgfsError(f"cannot write {file}: {e.strerror}") from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
