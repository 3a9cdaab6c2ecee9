"""`imgfs-overlay`: fuse-overlayfs's command line over the imgfs daemon.

    imgfs-overlay [-f] [-d] [-o OPTS]... MERGED

so that podman/buildah/containers-storage (`mount_program = "imgfs-overlay"`) and
anything else that runs fuse-overlayfs can mount with imgfs instead. OPTS are
comma-separated (a `\\,` is a literal comma): `lowerdir=L1:L2:...` (top layer first,
split on `:` like fuse-overlayfs; `\\:` is a literal colon, as for kernel overlayfs),
`upperdir=U` and `workdir=W` (both, or neither for a read-only mount), FUSE mount
options (passed through), and fuse-overlayfs tuning options (accepted and ignored,
each for the reason in IGNORED). The merged index is built at mount time (in
`W/imgfs-index`, or in a temp file when read-only); the command returns once the mount
is ready, unless -f. `fusermount3 -u MERGED` (or `umount`) unmounts and stops it.

Run by an unprivileged user, it mounts through fusermount3 (as libfuse does) and writes
the upper dir in kernel overlayfs's `-o userxattr` format (`user.overlay.*` xattrs);
`-o userxattr` asks root for that format too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

from unionfs import __version__
from unionfs.errors import ImgfsError
from unionfs.fs import mountclient
from unionfs.fs.options import FUSE_OPTIONS, FUSE_VALUE_OPTIONS

# Imports are kept to the few a mount needs (the mount server's client): each one is
# paid at every mount. argparse, typing, dataclasses, the daemon's modules cost more than
# the mount itself; argparse is imported only for an unusual command line (help,
# errors), lifecycle and MountSpec only when the mount server does not take the mount.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from unionfs.fs.spec import MountSpec

PROG = "imgfs-overlay"
INDEX_NAME = "imgfs-index"

PASSTHROUGH = FUSE_OPTIONS
PASSTHROUGH_VALUES = FUSE_VALUE_OPTIONS

IGNORED = {
    "squash_to_root": "owners are shown as stored (identity ids)",
    "squash_to_uid": "owners are shown as stored (identity ids)",
    "squash_to_gid": "owners are shown as stored (identity ids)",
    "noacl": "imgfs does not implement POSIX ACLs; the kernel checks modes",
    "fast_ino": "inode numbers always come from the merged index (stable, no extra cost)",
    "static_nlink": "link counts come from the merged index at no extra cost",
    "xattr_permissions": "xattrs are stored as the kernel's overlayfs stores them",
    "noxattrs": "xattrs are always supported",
    "fsync": "fsync requests are always honoured",
    "volatile": "fsync requests are always honoured",
    "threaded": "the daemon's concurrency is its own (trio tasks)",
    "writeback": "the writeback cache is always on",
    "timeout": "the daemon chooses its cache timeouts",
    "redirect_dir": "renaming lower directories always works (a redirect as overlayfs writes "
    "it; in the userxattr format, where the kernel follows none, a copy-up of the whole dir)",
    "index": "hard links always keep their link counts",
    "metacopy": "copy-up always copies data and metadata",
    "xino": "inode numbers always come from the merged index",
}


class UsageError(ImgfsError):
    exit_code = 2


def build_parser() -> argparse.ArgumentParser:
    from unionfs.cli import parser_class

    p = parser_class(PROG)(
        prog=PROG,
        description="Mount layers like fuse-overlayfs, with the imgfs daemon.",
        epilog="unmount with: fusermount3 -u MERGED",
    )
    p.add_argument("mountpoint", metavar="MERGED", type=Path)
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS")
    p.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "-d",
        "--debug",
        action="store_true",
        help="log to stderr (implies -f, as for libfuse)",
    )
    p.add_argument("--version", "-V", action="version", version=f"{PROG} (imgfs) {__version__}")
    return p


def split_unescaped(text: str, sep: str) -> list[str]:
    """Split on `sep` unless backslash-escaped; `\\<sep>` becomes `<sep>`."""
    parts = re.split(r"(?<!\\)" + re.escape(sep), text)
    return [part.replace("\\" + sep, sep) for part in parts]


def parse_options(values: Sequence[str]) -> dict[str, str | None]:
    """`-o a=1,b -o c` → {a: "1", b: None, c: None}; later options win."""
    options: dict[str, str | None] = {}
    for value in values:
        for opt in split_unescaped(value, ","):
            if not opt:
                continue
            key, eq, val = opt.partition("=")
            options[key] = val if eq else None
    return options


def parse_mapping(kind: str, value: str) -> None:
    """uidmapping=/gidmapping= as fuse-overlayfs reads them (CONTAINER:HOST:LEN, repeated,
    separated by `:` or `,`); only the identity mapping is supported."""
    fields = re.split(r"[:,]", value)
    if not value or len(fields) % 3:
        raise UsageError(f"invalid {kind}={value}: expected ID:HOST-ID:LENGTH[:...]")
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise UsageError(f"invalid {kind}={value}: ids must be numbers") from None
    for i in range(0, len(numbers), 3):
        inside, host, length = numbers[i : i + 3]
        if inside != host and length > 0:
            raise UsageError(
                f"{kind}={value} is not supported: imgfs cannot remap owners "
                f"({inside} -> {host}); only an identity mapping is accepted"
            )


def spec_from_args(args: argparse.Namespace | SimpleNamespace) -> MountSpec:
    from unionfs.fs.spec import spec_from_dict

    return spec_from_dict(fields_from_args(args))


def fields_from_args(args: argparse.Namespace | SimpleNamespace) -> dict[str, Any]:
    """The mount's spec as plain data (spec.spec_to_dict), absolute paths."""
    opts = parse_options(args.options)
    lowerdir = opts.pop("lowerdir", None)
    upperdir = opts.pop("upperdir", None)
    workdir = opts.pop("workdir", None)
    fsname = opts.pop("fsname", None) or PROG
    userxattr = False
    fuse_options: list[str] = []
    for key, val in opts.items():
        if key == "debug" and val is None:
            args.debug = True  # as libfuse's -o debug
        elif key == "userxattr" and val is None:
            userxattr = True  # the upper dir's format; without root, the only one there is
        elif key in ("uidmapping", "gidmapping"):
            parse_mapping(key, val or "")
        elif key in IGNORED:
            continue
        elif key in PASSTHROUGH and val is None:
            fuse_options.append(key)
        elif val is not None and f"{key}=" in PASSTHROUGH_VALUES:
            fuse_options.append(f"{key}={val}")
        elif key == "plugins":
            raise UsageError("plugins= is not supported (imgfs has no lazy-pull plugins)")
        else:
            raise UsageError(f"unknown option {key + ('=' + val if val is not None else '')!r}")
    if not lowerdir:
        raise UsageError("no lowerdir specified (-o lowerdir=DIR[:DIR...])")
    parts = split_unescaped(lowerdir, ":")
    if "" in parts:
        raise UsageError(f"lowerdir={lowerdir} has an empty entry")
    lower = [Path(os.path.abspath(d)) for d in parts]
    if (upperdir is None) != (workdir is None):
        raise UsageError("upperdir and workdir must be given together (neither: read-only)")
    for d in lower:
        _check_dir(d, "lowerdir")
    upper = work = index = None
    if upperdir is not None and workdir is not None:
        upper, work = Path(os.path.abspath(upperdir)), Path(os.path.abspath(workdir))
        _check_dir(upper, "upperdir")
        _check_dir(work, "workdir")
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            raise UsageError(f"workdir {work} and upperdir {upper} must be on the same filesystem")
        index = work / INDEX_NAME
        # Built afresh at every mount: the lower dirs are whatever the caller says today.
        index.unlink(missing_ok=True)
    return mountclient.absolute(
        {
            "lower_dirs": [str(d) for d in lower],
            "mountpoint": str(args.mountpoint),
            "upper_dir": None if upper is None else str(upper),
            "work_dir": None if work is None else str(work),
            "index_path": None if index is None else str(index),
            "options": fuse_options,
            "fsname": fsname,
            "debug": bool(args.debug),
            "control": False,
            "userxattr": userxattr,
        }
    )


def _check_dir(path: Path, what: str) -> None:
    mountclient.require_dir(path, what, UsageError)


def quick_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """`[-f] [-d] -o OPTS... MERGED`, the command line podman runs, parsed as
    build_parser() would; None for anything else (argparse then parses it)."""
    options: list[str] = []
    flags = {"-f": False, "-d": False}
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "-o":
            value = next(args, None)
            if value is None:
                return None
            options.append(value)
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg in flags or arg == "--debug":
            flags[arg if arg in flags else "-d"] = True
        elif arg.startswith("-") or positional:
            return None
        else:
            positional.append(arg)
    if not positional:
        return None
    return SimpleNamespace(
        mountpoint=Path(positional[0]), options=options, foreground=flags["-f"], debug=flags["-d"]
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = quick_args(argv) or build_parser().parse_args(argv)
    try:
        fields = fields_from_args(args)
        foreground = args.foreground or args.debug
        if foreground or mountclient.mount(fields) is None:
            from unionfs.fs import lifecycle
            from unionfs.fs.spec import spec_from_dict

            lifecycle.mount(spec_from_dict(fields), foreground=foreground, server=False)
        return 0
    except ImgfsError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"{PROG}: {e.strerror or e}{where}\n")
        return 1
    except Exception as e:  # a bug: one line, the traceback only when asked for
        if os.environ.get("IMGFS_DEBUG"):
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"{PROG}: internal error: {type(e).__name__}: {e}\n")
        return 70


if __name__ == "__main__":
    raise SystemExit(main())
