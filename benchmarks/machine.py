"""What the numbers were measured on: results mean little without the machine and versions."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import unionfs

REPO = Path(__file__).resolve().parent.parent


def _output(cmd: list[str]) -> list[str]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]


def _first_line(cmd: list[str]) -> str | None:
    lines = _output(cmd)
    return lines[0] if lines else None


_VERSION = re.compile(r"\d+(?:\.\d+)+\S*")


def tool_version(tool: str) -> str | None:
    """The version number `tool --version` prints (on the line naming the tool), else dpkg's."""
    path = shutil.which(tool)
    if path is None:
        return None
    lines = _output([path, "--version"])
    # prefer the line naming the tool: fuse-overlayfs prints libfuse's version first
    for line in sorted(lines, key=lambda ln: Path(tool).name not in ln):
        found = _VERSION.search(line)
        if found and "usage" not in line.lower():
            return found.group(0).rstrip(",")
    pkg = _first_line(["dpkg-query", "-S", path])
    if pkg and ":" in pkg:
        name = pkg.split(":", 1)[0]
        return _first_line(["dpkg-query", "-W", "-f", "${Version}", name])
    return lines[0] if lines else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _fs_type(path: Path) -> str | None:
    """Type and mount options (discard, barriers... change write-heavy numbers)."""
    line = _first_line(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", str(path)])
    if line is None or len(line.split()) != 2:
        return _first_line(["stat", "-f", "-c", "%T", str(path)])
    fstype, options = line.split()
    return f"{fstype} ({options})"


def _git_revision() -> str | None:
    rev = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if rev is None or " " in rev:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return rev + ("-dirty" if dirty else "")


def describe(tools: list[str], scratch: Path) -> dict[str, Any]:
    versions: dict[str, str | None] = {
        "imgfs": unionfs.__version__,
        "imgfs_git": _git_revision(),
        "python": platform.python_version(),
    }
    for tool in sorted(set(tools)):
        versions[tool] = tool_version(tool)
    return {
        "cpu_model": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_bytes": _meminfo_total(),
        "kernel": platform.release(),
        "os": _os_release(),
        "euid": os.geteuid(),
        "scratch_fs": _fs_type(scratch),
        "tools": versions,
    }
