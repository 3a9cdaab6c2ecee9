"""imgfs commit command(s): argument parsing and output only."""

from __future__ import annotations

import argparse
from typing import Any

from unionfs import reference
from unionfs.changes.commit import commit_container
from unionfs.cli.images import add_layer_args
from unionfs.layers.compression import Compression
from unionfs.progress import Progress
from unionfs.store.images import ImageStore


def register(sub: Any) -> None:
    """Add this module's subcommands to the imgfs parser."""
    p = sub.add_parser("commit", help="create a new image from a container's changes")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ref", metavar="REPOSITORY[:TAG]", nargs="?")
    add_layer_args(p)
    p.add_argument("-a", "--author", default="", help='author (e.g. "Jane <jane@example.com>")')
    p.set_defaults(func=cmd_commit)


def cmd_commit(args: argparse.Namespace) -> int:
    ref = reference.parse(args.ref) if args.ref else None
    store = ImageStore(args.root)
    progress = Progress("Committing")
    try:
        image = commit_container(
            store,
            args.container,
            ref=ref,
            message=args.message,
            author=args.author,
            changes=args.change,
            compression=Compression[args.compression.upper()],
            progress=progress,
        )
    finally:
        progress.finish()
    print(image.id)
    return 0
