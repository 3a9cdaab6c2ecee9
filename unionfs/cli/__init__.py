"""The `imgfs` command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from unionfs import __version__
from unionfs.cli import archive as archive_cmds
from unionfs.cli import commit as commit_cmds
from unionfs.cli import containers as container_cmds
from unionfs.cli import diff as diff_cmds
from unionfs.cli import images as images_cmds
from unionfs.cli import registry as registry_cmds
from unionfs.cli import run as run_cmds
from unionfs.errors import ImgfsError


class _Parser(argparse.ArgumentParser):
    """argparse, but with errors in imgfs's one-line form."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"imgfs: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgfs", description="Container images as stacks of layers, mounted with FUSE."
    )
    parser.add_argument("--version", action="version", version=f"imgfs {__version__}")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="store root (default: $IMGFS_ROOT, /var/lib/unionfs as root, else XDG dir)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    images_cmds.register(sub)
    container_cmds.register(sub)
    diff_cmds.register(sub)
    commit_cmds.register(sub)
    archive_cmds.register(sub)
    run_cmds.register(sub)
    registry_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
            traceback.print_exc()
        return _fail(f"internal error: {type(e).__name__}: {e} (set IMGFS_DEBUG=1 for details)", 70)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"imgfs: {message}\n")
    return code
