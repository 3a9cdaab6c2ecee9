"""Image config changes in Dockerfile syntax (`--change 'CMD ["sh"]'`), as docker import takes."""

from __future__ import annotations

import json
import shlex
from typing import Any

from unionfs.errors import BadInput

SUPPORTED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "WORKDIR",
    "USER",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
)


def apply_change(config: dict[str, Any], change: str) -> None:
    """Apply one Dockerfile instruction to the `config` section of an image config."""
    instruction, _, args = change.strip().partition(" ")
    keyword = instruction.upper()
    args = args.strip()
    if keyword not in SUPPORTED:
        raise BadInput(
            f"--change: {instruction or change!r} is not supported "
            f"(use one of {', '.join(SUPPORTED)})"
        )
    if not args:
        raise BadInput(f"--change: {keyword} needs an argument")
    if keyword in ("CMD", "ENTRYPOINT"):
        config["Cmd" if keyword == "CMD" else "Entrypoint"] = _command(keyword, args)
        if keyword == "ENTRYPOINT":
            config.pop("Cmd", None)  # docker resets CMD when ENTRYPOINT changes
    elif keyword == "ENV":
        env = [e for e in config.get("Env") or []]
        for key, value in _pairs(keyword, args):
            env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
        config["Env"] = env
    elif keyword == "LABEL":
        labels = dict(config.get("Labels") or {})
        labels.update(_pairs(keyword, args))
        config["Labels"] = labels
    elif keyword == "WORKDIR":
        config["WorkingDir"] = args
    elif keyword == "USER":
        config["User"] = args
    elif keyword == "STOPSIGNAL":
        config["StopSignal"] = args
    elif keyword == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for port in _words(keyword, args):
            number, _, proto = port.partition("/")
            if (
                not number.isdigit()
                or not 0 < int(number) < 65536
                or proto not in ("", "tcp", "udp", "sctp")
            ):
                raise BadInput(f"--change: invalid port {port!r} in EXPOSE")
            ports[f"{int(number)}/{proto or 'tcp'}"] = {}
        config["ExposedPorts"] = ports
    elif keyword == "VOLUME":
        volumes = dict(config.get("Volumes") or {})
        paths = _json_list(args) if args.startswith("[") else _words(keyword, args)
        volumes.update({p: {} for p in paths})
        config["Volumes"] = volumes


def _command(keyword: str, args: str) -> list[str]:
    """Exec form (JSON array) as given; shell form runs under /bin/sh -c, as in docker."""
    if args.startswith("["):
        return _json_list(args)
    return ["/bin/sh", "-c", args]


def _json_list(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except ValueError as e:
        raise BadInput(f"--change: {args!r} is not a valid JSON array: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"--change: {args!r} must be a JSON array of strings")
    return value


def _words(keyword: str, args: str) -> list[str]:
    try:
        return shlex.split(args)
    except ValueError as e:
        raise BadInput(f"--change: cannot parse {keyword} {args!r}: {e}") from e


def _pairs(keyword: str, args: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"`, or the legacy one-pair form `K V...` (ENV and LABEL)."""
    words = _words(keyword, args)
    if "=" not in words[0]:
        if len(words) < 2:
            raise BadInput(f"--change: {keyword} {args!r} needs KEY=VALUE or KEY VALUE")
        return [(words[0], args.split(None, 1)[1])]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise BadInput(f"--change: {keyword} expects KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs
