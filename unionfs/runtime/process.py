"""What `imgfs run` executes: docker's rules for combining an image config with the
command line, and resolving USER[:GROUP] against the rootfs's /etc/passwd and /etc/group."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unionfs.errors import ImgfsError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The PATH docker sets when the image's Env has none."""


class RunError(ImgfsError):
    """An error of `imgfs run` itself (not of the command): exit status 125, as docker."""

    exit_code = 125


@dataclass
class ProcessSpec:
    args: list[str]
    env: dict[str, str]
    cwd: str
    user: str
    hostname: str
    network: str = "host"
    keep_stdin: bool = False
    stop_timeout: float = 10.0
    """Seconds between a forwarded SIGTERM/SIGINT/SIGHUP and SIGKILL (docker's default)."""
    tty: bool = False
    """Give the command a pseudo-terminal (from the container's own devpts) as its
    controlling terminal and stdin/stdout/stderr; `imgfs run` relays to it."""
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)
    """(absolute host path, normalised path inside, read-only) bind mounts."""
    init: bool = False
    """Run a tiny init as PID 1 that forwards signals and reaps (docker run --init);
    otherwise the command itself is PID 1, as with plain docker run."""


def parse_volume(text: str) -> tuple[str, str, bool]:
    """HOST:CTR[:ro|rw] as (host, ctr, read_only); both paths absolute, CTR normalised."""
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not parts[0] or not parts[1]:
        raise RunError(f"invalid volume {text!r} (use HOST:CTR[:ro|rw])")
    host, ctr = parts
    if not host.startswith("/"):
        raise RunError(f"invalid volume {text!r}: the host path must be absolute")
    if not ctr.startswith("/"):
        raise RunError(f"invalid volume {text!r}: the container path must be absolute")
    ctr = posixpath.normpath(ctr)
    if ctr == "/":
        raise RunError(f"invalid volume {text!r}: cannot mount over the container's /")
    return os.path.normpath(host), ctr, mode == "ro"


def command_line(config: Mapping[str, Any], args: Sequence[str]) -> list[str]:
    """Entrypoint + (the given args, or else the image's Cmd), as docker combines them."""
    entrypoint = list(config.get("Entrypoint") or [])
    cmd = list(args) if args else list(config.get("Cmd") or [])
    argv = entrypoint + cmd
    if not argv:
        raise RunError("no command specified (the image has no Cmd or Entrypoint)")
    return argv


def environment(
    config: Mapping[str, Any],
    overrides: Sequence[str],
    *,
    hostname: str,
    host_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """HOSTNAME, the image's Env (PATH defaulted), then `-e K=V` (a bare `-e K` takes the
    host's value, or is dropped if unset there), as docker does."""
    host_env = os.environ if host_env is None else host_env
    env: dict[str, str] = {"HOSTNAME": hostname}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        if key:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key:
            raise RunError(f"invalid environment variable: {item!r}")
        if sep:
            env[key] = value
        elif key in host_env:
            env[key] = host_env[key]
    return env


@dataclass
class Credentials:
    uid: int
    gid: int
    groups: list[int]
    home: str | None


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def resolve_user(spec: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> Credentials:
    """USER[:GROUP] (names or numbers) against the rootfs's databases (read after chroot).
    A numeric uid need not exist (docker allows it; gid then defaults to 0)."""
    user, _, grp = (spec or "0").partition(":")
    users = [f for f in _read_db(passwd) if len(f) >= 7]
    groups = [f for f in _read_db(group) if len(f) >= 3]
    entry = None
    if user.isdigit():
        uid = int(user)
        entry = next((f for f in users if f[2] == user), None)
    else:
        entry = next((f for f in users if f[0] == user), None)
        if entry is None:
            raise RunError(f"unable to find user {user}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((f for f in groups if f[0] == grp), None)
            if g is None:
                raise RunError(f"unable to find group {grp}: no matching entries in group file")
            gid = int(g[2])
    supplementary = [gid]
    if entry is not None and not grp:
        for g in groups:
            members = g[3].split(",") if len(g) > 3 else []
            if entry[0] in members and g[2].isdigit() and int(g[2]) not in supplementary:
                supplementary.append(int(g[2]))
    home = entry[5] if entry is not None else None
    return Credentials(uid, gid, supplementary, home)
