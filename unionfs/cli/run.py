"""imgfs run: argument parsing only."""

from __future__ import annotations

import argparse
from typing import Any

from unionfs.runtime.run import NETWORKS, RunOptions, run
from unionfs.store.images import ImageStore


def register(sub: Any) -> None:
    """Add this module's subcommands to the imgfs parser."""
    p = sub.add_parser(
        "run",
        help="run a command in a new container (namespaces + chroot into its FUSE mount)",
        description="Create a container from IMAGE, mount it, and run CMD (or the image's "
        "Entrypoint/Cmd) chrooted into it in new mount, PID, UTS and IPC namespaces. "
        "The exit status is the command's (128+N if killed by signal N; 125 for errors "
        "of imgfs run itself, 126 if the command cannot be executed, 127 if not found). "
        "The container is unmounted afterwards and kept (unless --rm) for diff and commit.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("args", metavar="CMD [ARG...]", nargs=argparse.REMAINDER)
    p.add_argument("--name", help="assign a name to the container")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (K alone: take it from the host)",
    )
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory inside")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]", help="user (name or uid) to run as")
    p.add_argument("--hostname", help="container host name (default: its short ID)")
    p.add_argument("--network", choices=NETWORKS, default="host", help="host (default) or none")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument(
        "--init",
        action="store_true",
        help="run a tiny init as PID 1 that forwards signals and reaps (the command is PID 2)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after SIGTERM/SIGINT/SIGHUP, SIGKILL the command this much later (default 10)",
    )
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    return run(
        ImageStore(args.root),
        RunOptions(
            image=args.image,
            args=list(args.args),
            name=args.name,
            remove=args.rm,
            env=list(args.env),
            workdir=args.workdir,
            user=args.user,
            hostname=args.hostname,
            network=args.network,
            keep_stdin=args.interactive,
            init=args.init,
            stop_timeout=args.stop_timeout,
        ),
    )
