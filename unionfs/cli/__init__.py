"""The `imgfs` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from unionfs import __version__
from unionfs.errors import ImgfsError

TYPE_CHECKING = False  # not typing's: `imgfs-overlay` (in this package) would pay ~2.5 ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn

# The module that registers each command, in `imgfs --help` order. Only the command's own
# module is imported (it may pull in the whole store), so that a quick command like
# `imgfs mount` does not pay for every other one; help and errors import them all.
MODULES = ("images", "containers", "diff", "commit", "archive", "run", "registry")
COMMANDS = {
    **dict.fromkeys(("import", "images", "tag", "rmi", "inspect", "history"), "images"),
    **dict.fromkeys(("create", "ps", "rm", "mount", "umount", "unmount"), "containers"),
    "diff": "diff",
    "commit": "commit",
    **dict.fromkeys(("save", "load", "export"), "archive"),
    **dict.fromkeys(("run", "start", "exec"), "run"),
    **dict.fromkeys(("pull", "push", "login", "logout", "search"), "registry"),
}


def parser_class(name: str) -> type[argparse.ArgumentParser]:
    """argparse's parser, but with errors in the one-line form of command `name`. Made on
    demand: `imgfs-overlay`, in this package, parses its usual command line without
    argparse (and the ~5 ms its import and first parser cost)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            sys.stderr.write(f"{name}: {message} (see '{self.prog} --help')\n")
            raise SystemExit(2)

    return Parser


def command_module(argv: Sequence[str]) -> str | None:
    """The module of the command `argv` runs, None if unsure (help, an unknown command)."""
    args = iter(argv)
    for arg in args:
        if arg == "--":
            return None
        if arg.startswith("--") and len(arg) > 2 and "--root".startswith(arg.split("=")[0]):
            if "=" not in arg:
                next(args, None)  # --root PATH (argparse takes any prefix of it)
            continue
        if arg.startswith("-"):
            return None
        return COMMANDS.get(arg)
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser_cls = parser_class("imgfs")
    parser = parser_cls(
        prog="imgfs", description="Container images as stacks of layers, mounted with FUSE."
    )
    parser.add_argument("--version", action="version", version=f"imgfs {__version__}")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="store root (default: $IMGFS_ROOT, /var/lib/unionfs as root, else XDG dir)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_cls)
    sub.required = True
    only = None if argv is None else command_module(argv)
    for name in MODULES if only is None else (only,):
        importlib.import_module(f"unionfs.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImgfsError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # stdout went away (e.g. `imgfs images | head`): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", 1)
    except Exception as e:  # a bug: one line, the traceback only when asked for
        if os.environ.get("IMGFS_DEBUG"):
            import traceback

            traceback.print_exc()
        return _fail(f"internal error: {type(e).__name__}: {e} (set IMGFS_DEBUG=1 for details)", 70)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"imgfs: {message}\n")
    return code
