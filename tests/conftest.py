"""Shared fixtures: a fresh store root per test, the built-in busybox rootfs, imgfs runners."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from unionfs.builtin import write_rootfs_tar

IN_CI = bool(os.environ.get("CI"))


def require(condition: bool, why: str) -> None:
    """Skip a test whose environment is missing, but fail in CI, where it must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="session")
def busybox_tar() -> bytes:
    buf = io.BytesIO()
    write_rootfs_tar(buf)
    return buf.getvalue()


@pytest.fixture
def busybox_tar_file(tmp_path: Path, busybox_tar: bytes) -> Path:
    path = tmp_path / "busybox.tar"
    path.write_bytes(busybox_tar)
    return path


ImgfsRunner = Callable[..., Result]


def imgfs_runner(root: Path) -> ImgfsRunner:
    """Run the real `imgfs` command (a subprocess, as users run it) against a store."""

    def run(*args: str, input: bytes | None = None, check: bool = True) -> Result:
        env = dict(os.environ, IMGFS_ROOT=str(root))
        env.pop("IMGFS_DEBUG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "unionfs", *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=300,
        )
        result = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        if check and proc.returncode != 0:
            raise AssertionError(f"imgfs {' '.join(args)} failed: {result}")
        return result

    return run


@pytest.fixture
def imgfs(root: Path) -> ImgfsRunner:
    """`imgfs` against this test's store."""
    return imgfs_runner(root)


def assert_user_error(result: Result, *fragments: str) -> None:
    """A user error: non-zero exit, exactly one `imgfs: ...` line, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imgfs: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Everything in the store that matters (locks are not state), to prove nothing changed."""
    state: dict[str, tuple[str, int, bytes]] = {}
    if not root.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] == "locks":
            continue
        for d in dirnames:
            state[os.path.join(rel, d)] = ("d", 0, b"")
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            data = Path(p).read_bytes() if os.path.isfile(p) and not os.path.islink(p) else b""
            state[os.path.join(rel, f)] = ("f", st.st_size, data)
    return state
