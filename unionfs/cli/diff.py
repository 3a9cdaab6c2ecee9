"""`imgfs diff`: argument parsing and output only."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from unionfs.changes import container_changes
from unionfs.changes.diff import format_text
from unionfs.containers import Containers
from unionfs.store.images import ImageStore


def register(sub: Any) -> None:
    """Add this module's subcommands to the imgfs parser."""
    p = sub.add_parser(
        "diff",
        help="inspect changes to files or directories of a container's filesystem",
        description="List what a container changed in its image's tree, as `docker diff` "
        "does: `A` added, `C` changed, `D` deleted, one path per line, sorted; directories "
        "with changes below them are `C`. Reads the container's upper dir (mounted or not).",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON array of {Path, Kind} (Kind 0 changed, 1 added, 2 deleted), "
        "as docker's API returns it",
    )
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    store = ImageStore(args.root)
    container = Containers(store).find(args.container)
    found = container_changes(store, container)
    if args.format == "json":
        sys.stdout.write(json.dumps([c.to_json() for c in found]) + "\n")
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(format_text(found))
    sys.stdout.flush()
    return 0
