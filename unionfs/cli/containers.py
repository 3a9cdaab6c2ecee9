"""Container and mount commands: create, ps, rm, mount, umount."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from unionfs.cli.output import print_json_lines, print_table
from unionfs.containers import Container, Containers, image_mount_spec, image_state_file
from unionfs.errors import ImgfsError, NotFound
from unionfs.fs import lifecycle
from unionfs.fs.lifecycle import MountRecord, MountState
from unionfs.fs.spec import FUSE_OPTIONS, FUSE_VALUE_OPTIONS
from unionfs.store.images import ImageStore
from unionfs.units import time_ago

MOUNT_OPTIONS = FUSE_OPTIONS
MOUNT_VALUE_OPTIONS = FUSE_VALUE_OPTIONS


def register(sub: Any) -> None:
    p = sub.add_parser("create", help="create a container (an image plus a writable layer)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--name", help="assign a name to the container")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("ps", help="list containers (mounted ones; -a for all)")
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only container IDs")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("containers", metavar="CONTAINER", nargs="+")
    p.add_argument(
        "-f", "--force", action="store_true", help="unmount a mounted container, then remove it"
    )
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser(
        "mount",
        help="mount a container read-write, or an image read-only",
        description="Mount a container (read-write) or, when no container has that name, "
        "an image (read-only, without creating a container) on MOUNTPOINT. "
        "The command returns once the mount is ready; `imgfs umount` stops it.",
    )
    p.add_argument("target", metavar="CONTAINER|IMAGE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    p.add_argument(
        "-f", "--foreground", action="store_true", help="serve in the foreground until unmounted"
    )
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options: ro, allow_other, nosuid, nodev, noexec, context=...",
    )
    p.add_argument(
        "--debug", action="store_true", help="log requests (to stderr with -f, else mount.log)"
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "umount",
        aliases=["unmount"],
        help="unmount an imgfs mount (also a stale one whose daemon died)",
    )
    p.add_argument("mountpoints", metavar="MOUNTPOINT", nargs="+", type=Path)
    p.set_defaults(func=cmd_umount)


def _store(args: argparse.Namespace) -> ImageStore:
    return ImageStore(args.root)


def cmd_create(args: argparse.Namespace) -> int:
    container = Containers(_store(args)).create(args.image, args.name)
    print(container.id)
    return 0


def _ps_row(c: Container, no_trunc: bool) -> dict[str, Any]:
    record = c.mount_record()
    state = c.mount_state()
    mountpoint = record.mountpoint if (record is not None and state != MountState.UNMOUNTED) else ""
    image_id = c.image_id.removeprefix("sha256:")
    return {
        "ID": c.id if no_trunc else c.short_id,
        "Image": c.image,
        "ImageID": c.image_id if no_trunc else image_id[:12],
        "CreatedAt": c.created,
        "RunningFor": time_ago(c.created_at),
        "State": str(state),
        "Status": str(state),
        "Mountpoint": mountpoint,
        "Pid": record.pid if (record is not None and state == MountState.MOUNTED) else None,
        "Names": c.name,
    }


def cmd_ps(args: argparse.Namespace) -> int:
    rows = [_ps_row(c, args.no_trunc) for c in Containers(_store(args)).list()]
    if not args.all:
        # docker ps shows running containers; ours are "running" while mounted (or stale,
        # which needs attention).
        rows = [r for r in rows if r["State"] != MountState.UNMOUNTED]
    if args.quiet:
        sys.stdout.write("".join(f"{r['ID']}\n" for r in rows))
    elif args.format == "json":
        print_json_lines(rows)
    else:
        print_table(
            ["CONTAINER ID", "IMAGE", "CREATED", "STATUS", "MOUNTPOINT", "NAMES"],
            [
                [r["ID"], r["Image"], r["RunningFor"], r["Status"], r["Mountpoint"], r["Names"]]
                for r in rows
            ],
        )
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    containers = Containers(_store(args))
    failed = 0
    for key in args.containers:
        try:
            containers.remove(containers.find(key), force=args.force)
            print(key)
        except ImgfsError as e:
            sys.stderr.write(f"imgfs: {e}\n")
            failed += 1
    return 1 if failed else 0


def parse_mount_options(values: list[str]) -> list[str]:
    options: list[str] = []
    for value in values:
        for opt in value.split(","):
            opt = opt.strip()
            if not opt:
                continue
            if opt not in MOUNT_OPTIONS and not opt.startswith(MOUNT_VALUE_OPTIONS):
                raise ImgfsError(
                    f"unsupported mount option {opt!r} (supported: "
                    + ", ".join(sorted(MOUNT_OPTIONS))
                    + ", "
                    + ", ".join(o + "..." for o in MOUNT_VALUE_OPTIONS)
                    + ")"
                )
            options.append(opt)
    return options


def cmd_mount(args: argparse.Namespace) -> int:
    store = _store(args)
    options = parse_mount_options(args.options)
    mountpoint = lifecycle.normalize(args.mountpoint)
    containers = Containers(store)
    try:
        container: Container | None = containers.find(args.target)
    except NotFound:
        container = None
    if container is not None:
        containers.mount(
            container, mountpoint, options=options, foreground=args.foreground, debug=args.debug
        )
    else:
        try:
            image = store.find(args.target)
        except NotFound:
            raise NotFound(f"no such container or image: {args.target}") from None
        spec = image_mount_spec(store, image, mountpoint, options)
        spec.debug = args.debug
        lifecycle.mount(
            spec,
            foreground=args.foreground,
            state_file=image_state_file(store, mountpoint),
            what=f"image {args.target}",
            extra={"image": args.target, "image_id": image.id},
        )
    if not args.foreground:
        print(mountpoint)
    return 0


def find_state_file(store: ImageStore, mountpoint: Path) -> Path | None:
    """The state file of whichever container or image mount is at `mountpoint`."""
    path = lifecycle.normalize(mountpoint)
    candidates = [image_state_file(store, path)]
    candidates += [c.state_file for c in Containers(store).list()]
    for state_file in candidates:
        record = MountRecord.load(state_file)
        if record is not None and lifecycle.normalize(record.mountpoint) == path:
            return state_file
    return None


def cmd_umount(args: argparse.Namespace) -> int:
    store = _store(args)
    failed = 0
    for mountpoint in args.mountpoints:
        try:
            state = lifecycle.umount(mountpoint, state_file=find_state_file(store, mountpoint))
            if state is MountState.STALE:
                print(
                    f"{lifecycle.normalize(mountpoint)}: stale mount (its daemon had died) removed"
                )
        except ImgfsError as e:
            sys.stderr.write(f"imgfs: {e}\n")
            failed += 1
    return 1 if failed else 0
