"""imgfs run: argument parsing only."""

from __future__ import annotations

import argparse
from typing import Any

from unionfs.runtime.exec import exec_in
from unionfs.runtime.run import NETWORKS, RunOptions, run, start
from unionfs.store.images import ImageStore


def _add_process_args(p: argparse.ArgumentParser) -> None:
    """What run and exec share: the process's environment, directory and user."""
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
    _add_process_args(p)
    p.add_argument("--hostname", help="container host name (default: its short ID)")
    p.add_argument("--network", choices=NETWORKS, default="host", help="host (default) or none")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument(
        "-t", "--tty", action="store_true", help="allocate a pseudo-terminal for the command"
    )
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="HOST:CTR[:ro|rw]",
        help="bind-mount an absolute host path into the container (repeatable)",
    )
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

    p = sub.add_parser(
        "start",
        help="run a container's command (as given to imgfs run) again",
        description="Mount CONTAINER and run the command imgfs run recorded for it again, "
        "with the same options; its earlier changes are there. Without -a it runs in the "
        "background (output in the container dir's `log`).",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument(
        "-a",
        "--attach",
        action="store_true",
        help="stay attached: relay output (and stdin with -i) and exit with its status",
    )
    p.set_defaults(func=cmd_start)

    p = sub.add_parser(
        "exec",
        help="run another command in a running container",
        description="Join the namespaces of a running container's PID 1 and run CMD "
        "chrooted to its root, with its environment (plus -e). The exit status is CMD's.",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("args", metavar="CMD [ARG...]", nargs=argparse.REMAINDER)
    _add_process_args(p)
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.set_defaults(func=cmd_exec)


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
            tty=args.tty,
            volumes=list(args.volume),
            init=args.init,
            stop_timeout=args.stop_timeout,
        ),
    )


def cmd_start(args: argparse.Namespace) -> int:
    return start(ImageStore(args.root), args.container, attach=args.attach)


def cmd_exec(args: argparse.Namespace) -> int:
    return exec_in(
        ImageStore(args.root),
        args.container,
        list(args.args),
        env=list(args.env),
        workdir=args.workdir,
        user=args.user,
        keep_stdin=args.interactive,
    )
