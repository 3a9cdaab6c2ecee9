"""`imgfs diff` and `unionfs.changes.changes`: a container's changes, as docker diff lists them.

- table: named cases, each done through a real `imgfs mount` of its own container of a
  two-layer image (whiteout and opaque dir in the top layer); `imgfs diff` runs while the
  containers are mounted (and must leave their upper dirs untouched, atimes included), and
  again after they are unmounted; the output is checked exactly, text and JSON;
- upper format: hand-made upper dirs (relative and absolute redirects, redirect chains,
  opaque dirs, escaped xattrs) over hand-made layers, no mount needed;
- differential: seeded random operations (tests/difftest) on kernel overlayfs and on
  imgfs-overlay over the same random layers; `changes()` of the kernel's upper dir equals
  `changes()` of ours, and ours equals an oracle that knows nothing of upper dirs: the
  difference between a walk of the lowers mounted read-only and a walk of the merged mount;
- CLI errors.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from difftest import excluded
from difftest.layers import make_canary
from difftest.mounts import Mount as DiffMount
from difftest.mounts import (
    MountError,
    Watchdog,
    imgfs_overlay_bin,
    kernel_options,
    mounted,
)
from difftest.ops import digest, existing
from difftest.runner import Config, Plan, Rig, parse_seeds, run_ops
from difftest.tree import lower_hardlink_paths, snapshot

from unionfs.changes import Change, changes, container_changes
from unionfs.containers import Containers
from unionfs.index import MergedIndex
from unionfs.reference import parse as parse_reference
from unionfs.store.images import ImageStore, host_architecture, utc_now

import tarfactory as tf
from conftest import ImgfsRunner, assert_user_error, require, require_root

pytestmark = pytest.mark.root

KINDS = {"C": 0, "A": 1, "D": 2}


def require_fuse() -> None:
    require_root()
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require(shutil.which("fusermount3") is not None, "needs fusermount3 (apt install fuse3)")


def imgfs_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, IMGFS_ROOT=str(root))
    env.pop("IMGFS_DEBUG", None)
    return env


def run_parallel(commands: list[list[str]], env: dict[str, str]) -> list[tuple[int, bytes, bytes]]:
    """Run imgfs commands side by side; (returncode, stdout, stderr) of each, in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unionfs", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for cmd in commands
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


# -- the image of the table cases ---------------------------------------------------------

LAYER0 = [
    tf.directory("etc"),
    tf.reg("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    tf.reg("etc/hostname", b"box\n"),
    tf.reg("etc/group", b"root:x:0:\n"),
    tf.directory("bin"),
    tf.reg("bin/sh", b"#!busybox\n" * 20, mode=0o755),
    tf.symlink("bin/ls", "sh"),
    tf.directory("usr"),
    tf.directory("usr/lib"),
    tf.directory("usr/lib/deep"),
    tf.reg("usr/lib/deep/a.txt", b"a"),
    tf.directory("usr/lib/deep/sub"),
    tf.reg("usr/lib/deep/sub/b.txt", b"b"),
    tf.directory("data"),
    tf.reg("data/x", b"x" * 100),
    tf.reg("data/y", b"y"),
    tf.reg("data/z", b"z"),
    tf.directory("old"),
    tf.reg("old/f1", b"1"),
    tf.directory("old/sub"),
    tf.reg("old/sub/f2", b"2"),
    tf.directory("opq"),
    tf.reg("opq/keep", b"k"),
    tf.reg("opq/lose", b"l"),
    tf.reg("hl1", b"linked\n"),
    tf.hardlink("hl2", "hl1"),
    tf.reg("xa", b"xattrs", xattrs={"user.k": "v"}),
    tf.directory("dev"),
    tf.device("dev/null", 1, 3),
    tf.fifo("p"),
    tf.reg("gone.txt", b"bye"),
]
LAYER1 = [
    tf.whiteout("gone.txt"),
    tf.directory("opq"),
    tf.opaque("opq"),
    tf.reg("opq/new", b"n"),
    tf.directory("etc"),
    tf.reg("etc/motd", b"hi\n"),
    tf.directory("data"),
    tf.reg("data/y", b"Y2"),
]


def build_image(root: Path, name: str = "base") -> None:
    """A two-layer image (the store has no multi-layer import yet: made in-process)."""
    store = ImageStore(root)
    store.layout.ensure()
    descriptors, diff_ids = [], []
    for members in (LAYER0, LAYER1):
        layer = store.layers.import_tar(io.BytesIO(tf.build(members)))
        descriptors.append(layer.descriptor())
        diff_ids.append(layer.diff_id)
    created = utc_now()
    config = {
        "created": created,
        "architecture": host_architecture(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"layer {i}"} for i in range(2)],
    }
    store.add_image(config, descriptors, parse_reference(name))


# -- table cases --------------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def keep_mtime(path: Path, change: Callable[[], object]) -> None:
    st = os.lstat(path)
    change()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def rmtree(path: Path) -> None:
    shutil.rmtree(path)


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, sys.argv[2].encode())
print("written", flush=True)
sys.stdin.read()
os.close(fd)
"""


@dataclass(frozen=True)
class OpenFile:
    """A process that wrote to a file and keeps it open until `close` (returned by a case's
    operations). Another process, because closing any copy of the fd (as fork and exec of
    a subprocess by the holder does) makes FUSE write the cached data back."""

    proc: subprocess.Popen[bytes]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def write_and_keep_open(path: Path, data: str) -> OpenFile:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), data],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"written\n"
    return OpenFile(proc)


@dataclass(frozen=True)
class Case:
    name: str
    ops: Callable[[Path], object]
    expected: tuple[str, ...]


def _case(name: str, ops: Callable[[Path], object], *expected: str) -> Case:
    return Case(name, ops, expected)


def _sequence(*steps: Callable[[Path], object]) -> Callable[[Path], None]:
    def run(m: Path) -> None:
        for step in steps:
            step(m)

    return run


RENAMED_DEEP = ("A /usr/lib/moved", "A /usr/lib/moved/a.txt", "A /usr/lib/moved/sub")

CASES = [
    _case("nothing", lambda m: None),
    # docker's own example: `touch /etc/newfile` is A /etc/newfile and C /etc.
    _case("touch-new-file", lambda m: write(m / "etc/newfile", b""), "C /etc", "A /etc/newfile"),
    _case("append", lambda m: append(m / "etc/passwd", b"x\n"), "C /etc", "C /etc/passwd"),
    # Written, not closed: the data may be in the mount's writeback cache only; diff syncs.
    _case(
        "write-still-open",
        lambda m: write_and_keep_open(m / "etc/passwd", "x\n"),
        "C /etc",
        "C /etc/passwd",
    ),
    _case("touch-mtime-only", lambda m: os.utime(m / "data/y"), "C /data", "C /data/y"),
    _case("delete-file", lambda m: os.unlink(m / "etc/hostname"), "C /etc", "D /etc/hostname"),
    _case(
        "delete-lower-dir",  # only the directory, not its children
        lambda m: rmtree(m / "usr/lib/deep"),
        "C /usr",
        "C /usr/lib",
        "D /usr/lib/deep",
    ),
    _case("delete-at-root", lambda m: os.unlink(m / "hl2"), "D /hl2"),
    _case(
        "new-tree",
        lambda m: (os.makedirs(m / "new/a/b"), write(m / "new/a/b/f", b"f")),
        "A /new",
        "A /new/a",
        "A /new/a/b",
        "A /new/a/b/f",
    ),
    # Copied up, but nothing a user can see changed: not reported.
    _case("open-for-write-only", lambda m: open(m / "etc/passwd", "r+b").close()),
    _case(
        "chmod-and-back",
        _sequence(
            lambda m: os.chmod(m / "etc/passwd", 0o600), lambda m: os.chmod(m / "etc/passwd", 0o644)
        ),
    ),
    _case("chown-to-same", lambda m: os.chown(m / "bin/sh", 0, 0)),
    _case("setxattr-same-value", lambda m: os.setxattr(m / "xa", "user.k", b"v")),
    _case(
        "rewrite-same-content-keep-mtime",
        lambda m: keep_mtime(
            m / "etc/passwd", lambda: write(m / "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        ),
    ),
    _case(
        "recreate-identical-file",
        lambda m: keep_mtime(
            m / "etc/group",
            lambda: (os.unlink(m / "etc/group"), write(m / "etc/group", b"root:x:0:\n")),
        ),
    ),
    _case(
        "rename-dir-and-back",
        _sequence(
            lambda m: os.rename(m / "old", m / "old2"), lambda m: os.rename(m / "old2", m / "old")
        ),
    ),
    # Same size and mtime, other bytes: found by comparing contents.
    _case(
        "same-size-same-mtime-other-content",
        lambda m: keep_mtime(
            m / "etc/passwd", lambda: write(m / "etc/passwd", b"ROOT:x:0:0:root:/root:/bin/sh\n")
        ),
        "C /etc",
        "C /etc/passwd",
    ),
    _case("chmod-file", lambda m: os.chmod(m / "data/x", 0o600), "C /data", "C /data/x"),
    _case("chown-file", lambda m: os.chown(m / "data/x", 1000, 1000), "C /data", "C /data/x"),
    _case("chmod-dir", lambda m: os.chmod(m / "etc", 0o700), "C /etc"),
    _case(
        "setxattr-new",
        lambda m: os.setxattr(m / "data/x", "user.new", b"1"),
        "C /data",
        "C /data/x",
    ),
    _case("removexattr", lambda m: os.removexattr(m / "xa", "user.k"), "C /xa"),
    _case(
        "symlink-retarget",
        lambda m: (os.unlink(m / "bin/ls"), os.symlink("busybox", m / "bin/ls")),
        "C /bin",
        "C /bin/ls",
    ),
    _case(
        "device-rdev",
        lambda m: (
            os.unlink(m / "dev/null"),
            os.mknod(m / "dev/null", stat.S_IFCHR | 0o660, os.makedev(1, 5)),
        ),
        "C /dev",
        "C /dev/null",
    ),
    _case(
        "file-becomes-dir",
        lambda m: (os.unlink(m / "data/x"), os.mkdir(m / "data/x"), write(m / "data/x/in", b"")),
        "C /data",
        "C /data/x",
        "A /data/x/in",
    ),
    _case(
        "dir-becomes-file",  # one line: the old children are not listed
        lambda m: (rmtree(m / "old"), write(m / "old", b"now a file")),
        "C /old",
    ),
    _case(
        "rename-file",
        lambda m: os.rename(m / "etc/hostname", m / "etc/hn"),
        "C /etc",
        "A /etc/hn",
        "D /etc/hostname",
    ),
    _case(
        "rename-lower-dir",  # a redirect: delete of the old path, add of all of the new
        lambda m: os.rename(m / "usr/lib/deep", m / "usr/lib/moved"),
        "C /usr",
        "C /usr/lib",
        "D /usr/lib/deep",
        *RENAMED_DEEP,
        "A /usr/lib/moved/sub/b.txt",
    ),
    _case(
        "rename-lower-dir-elsewhere-and-edit",
        _sequence(
            lambda m: os.rename(m / "usr/lib/deep", m / "data/deep"),
            lambda m: os.unlink(m / "data/deep/a.txt"),
            lambda m: write(m / "data/deep/sub/c.txt", b"c"),
        ),
        "C /data",
        "A /data/deep",
        "A /data/deep/sub",
        "A /data/deep/sub/b.txt",
        "A /data/deep/sub/c.txt",
        "C /usr",
        "C /usr/lib",
        "D /usr/lib/deep",
    ),
    _case(
        "rename-dir-over-deleted-lower-dir",  # its lower children, none of the old ones
        _sequence(
            lambda m: rmtree(m / "data"), lambda m: os.rename(m / "usr/lib/deep", m / "data")
        ),
        "C /data",
        "A /data/a.txt",
        "A /data/sub",
        "A /data/sub/b.txt",
        "D /data/x",
        "D /data/y",
        "D /data/z",
        "C /usr",
        "C /usr/lib",
        "D /usr/lib/deep",
    ),
    _case(
        "rmdir-recreate-empty",  # an opaque dir: the lower children are deleted
        lambda m: (rmtree(m / "data"), os.mkdir(m / "data")),
        "C /data",
        "D /data/x",
        "D /data/y",
        "D /data/z",
    ),
    _case(
        "rmdir-recreate-with-same-name",
        lambda m: (rmtree(m / "data"), os.mkdir(m / "data"), write(m / "data/x", b"new")),
        "C /data",
        "C /data/x",
        "D /data/y",
        "D /data/z",
    ),
    _case("add-to-layer-opaque-dir", lambda m: write(m / "opq/new2", b""), "C /opq", "A /opq/new2"),
    _case("delete-in-layer-opaque-dir", lambda m: os.unlink(m / "opq/new"), "C /opq", "D /opq/new"),
    _case("recreate-whited-out-in-layer", lambda m: write(m / "gone.txt", b"back"), "A /gone.txt"),
    _case(
        "hard-link-new-name",  # copies hl1 up with hl2 linked: both unchanged
        lambda m: os.link(m / "hl1", m / "etc/hl3"),
        "C /etc",
        "A /etc/hl3",
    ),
    _case("write-hard-link", lambda m: append(m / "hl1", b"more"), "C /hl1", "C /hl2"),
    _case(
        "non-utf8-name",
        lambda m: write(m / os.fsdecode(b"data/\xff\xfe"), b""),
        "C /data",
        "A " + os.fsdecode(b"/data/\xff\xfe"),
    ),
]


def upper_state(upper: Path) -> dict[bytes, tuple]:
    """Everything about an upper dir a reader could change (atimes included); read with
    O_NOATIME so that reading it changes nothing itself."""
    state: dict[bytes, tuple] = {}
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC

    def record(rel: bytes, st: os.stat_result, path: str) -> None:
        xattrs = tuple(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in sorted(os.listxattr(path, follow_symlinks=False))
        )
        times = (st.st_mtime_ns, st.st_ctime_ns)
        if not stat.S_ISLNK(st.st_mode):  # readlink(2) touches a symlink's atime, always
            times += (st.st_atime_ns,)
        state[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ino, times, xattrs)

    def visit(rel: bytes, fd: int) -> None:
        for entry in os.scandir(fd):
            name = os.fsencode(entry.name)
            child = rel + b"/" + name
            st = entry.stat(follow_symlinks=False)
            record(child, st, f"/proc/self/fd/{fd}/{entry.name}")
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, flags, dir_fd=fd)
                try:
                    visit(child, sub)
                finally:
                    os.close(sub)

    top = os.open(upper, flags)
    try:
        record(b"", os.fstat(top), f"/proc/self/fd/{top}")
        visit(b"", top)
    finally:
        os.close(top)
    return state


JSON_CASES = ("nothing", "touch-new-file", "delete-file", "rename-file", "non-utf8-name")


@dataclass
class Outcome:
    text: bytes  # imgfs diff, while mounted
    json: object  # imgfs diff --format json, while mounted (JSON_CASES only)
    upper_untouched: bool
    mounted: list[Change]  # changes(), while mounted
    unmounted: list[Change]  # changes(), once unmounted
    errors: list[str]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case at once (mounts and diffs run side by side, to keep this fast): a
    container per case, mounted, changed, diffed while mounted, unmounted, diffed again."""
    require_fuse()
    base = Path(os.path.realpath(tmp_path_factory.mktemp("table")))
    root = base / "store"
    env = imgfs_env(root)
    build_image(root)
    store = ImageStore(root)
    containers = Containers(store)
    mnts = {case.name: base / f"mnt-{case.name}" for case in CASES}
    for case in CASES:
        containers.create("base", case.name)
        mnts[case.name].mkdir()
    out = {c.name: Outcome(b"", None, False, [], [], []) for c in CASES}
    try:
        mounts = run_parallel([["mount", c.name, str(mnts[c.name])] for c in CASES], env)
        for case, (rc, _, err) in zip(CASES, mounts, strict=True):
            assert rc == 0, f"mount {case.name}: {err.decode()}"
        still_open: list[OpenFile] = []
        for case in CASES:
            try:
                result = case.ops(mnts[case.name])
            except OSError as e:
                out[case.name].errors.append(f"operations failed: {e!r}")
                continue
            if isinstance(result, OpenFile):
                still_open.append(result)
        uppers = {c.name: containers.find(c.name).upper for c in CASES}
        before = {name: upper_state(upper) for name, upper in uppers.items()}
        commands = [["diff", c.name] for c in CASES]
        commands += [["diff", "--format", "json", name] for name in JSON_CASES]
        results = run_parallel(commands, env)
        for cmd, (rc, stdout, err) in zip(commands, results, strict=True):
            got = out[cmd[-1]]
            if rc != 0:
                got.errors.append(f"imgfs {' '.join(cmd)} exited {rc}: {err.decode()}")
            elif "json" in cmd:
                got.json = json.loads(stdout)
            else:
                got.text = stdout
        for case in CASES:
            got = out[case.name]
            # A file still open for writing is synced to the upper dir by diff (that is the
            # one change diff makes); nothing else may change.
            synced = case.name == "write-still-open"
            got.upper_untouched = synced or upper_state(uppers[case.name]) == before[case.name]
            got.mounted = container_changes(store, containers.find(case.name))
        for writer in still_open:
            writer.close()
    finally:
        down = run_parallel([["umount", *map(str, mnts.values())]], env)[0]
        for mnt in mnts.values():
            while is_mounted(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    assert down[0] == 0, f"umount: {down[2].decode()}"
    for case in CASES:
        out[case.name].unmounted = container_changes(store, containers.find(case.name))
    yield out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case, table: dict[str, Outcome]) -> None:
    got = table[case.name]
    assert not got.errors
    expected = list(case.expected)
    assert expected == sorted(expected, key=lambda line: os.fsencode(line[2:])), "bad table"
    assert got.text == b"".join(os.fsencode(line) + b"\n" for line in expected)
    assert [str(c) for c in got.mounted] == expected
    assert [str(c) for c in got.unmounted] == expected  # the same once unmounted
    assert got.upper_untouched, "imgfs diff changed the upper dir of a mounted container"
    docker_api = [{"Path": line[2:], "Kind": KINDS[line[0]]} for line in expected]
    assert [c.to_json() for c in got.mounted] == docker_api
    if case.name in JSON_CASES:
        assert got.json == docker_api


def test_json_is_dockers_api_shape(table: dict[str, Outcome]) -> None:
    assert table["touch-new-file"].json == [
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/newfile", "Kind": 1},
    ]
    assert table["delete-file"].json == [
        {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/hostname", "Kind": 2},
    ]
    assert table["nothing"].json == []
    assert table["nothing"].text == b""


# -- hand-made upper dirs, no mount ---------------------------------------------------------


def make_tree(root: Path, spec: dict[str, object]) -> None:
    """{"d/": None (a dir), "d/": {xattr: value} (a dir with xattrs), "f": b"data" (a file,
    with a fixed mtime), "l@": "target" (a symlink), "w!": None (a whiteout)}."""
    for key, value in spec.items():
        name = key.rstrip("/@!")
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if key.endswith("/"):
            path.mkdir(exist_ok=True)
            xattrs = value if isinstance(value, dict) else {}
            for attr, data in xattrs.items():
                os.setxattr(path, attr, data)
        elif key.endswith("@"):
            os.symlink(str(value), path)
        elif key.endswith("!"):
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        else:
            assert isinstance(value, bytes)
            path.write_bytes(value)
            os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


LOWER = {
    "a/": None,
    "a/f": b"f",
    "a/g": b"g",
    "a/sub/": None,
    "a/sub/h": b"h",
    "b/": None,
    "b/f": b"other f",
    "c/": None,
}
OPAQUE = {"trusted.overlay.opaque": b"y"}

UPPER_CASES = [
    # Renamed within its parent: the kernel writes a relative redirect.
    (
        "relative-redirect",
        {"a!": None, "moved/": {"trusted.overlay.redirect": b"a"}},
        ["D /a", "A /moved", "A /moved/f", "A /moved/g", "A /moved/sub", "A /moved/sub/h"],
    ),
    (
        "absolute-redirect-nested",
        {"a!": None, "c/": None, "c/in/": {"trusted.overlay.redirect": b"/a"}, "c/in/sub!": None},
        ["D /a", "C /c", "A /c/in", "A /c/in/f", "A /c/in/g"],
    ),
    # A renamed dir put where another lower dir was: compared child by child, lower to lower.
    (
        "redirect-over-lower-dir",
        {"a!": None, "b/": {"trusted.overlay.redirect": b"/a"}},
        ["D /a", "C /b", "C /b/f", "A /b/g", "A /b/sub", "A /b/sub/h"],
    ),
    # Renamed again inside a renamed dir: relative to where its parent came from.
    (
        "redirect-chain",
        {
            "a!": None,
            "x/": {"trusted.overlay.redirect": b"/a"},
            "x/sub!": None,
            "x/s2/": {"trusted.overlay.redirect": b"sub"},
        },
        ["D /a", "A /x", "A /x/f", "A /x/g", "A /x/s2", "A /x/s2/h"],
    ),
    # Moved back where it came from: nothing changed.
    ("redirect-to-itself", {"a/": {"trusted.overlay.redirect": b"/a"}}, []),
    # Opaque wins over a redirect, as in overlayfs.
    (
        "opaque-and-redirect",
        {"b/": {**OPAQUE, "trusted.overlay.redirect": b"/a"}},
        ["C /b", "D /b/f"],
    ),
    # A redirect to something that is not a lower dir merges nothing.
    (
        "dangling-redirect",
        {"b/": {"trusted.overlay.redirect": b"/nope"}},
        ["C /b", "D /b/f"],
    ),
    # A whiteout of a name no layer has changes nothing.
    ("stray-whiteout", {"zz!": None, "a/": None, "a/zz!": None}, []),
    # Private xattrs are not changes; escaped user ones (trusted.overlay.overlay.X) are.
    (
        "private-and-escaped-xattrs",
        {
            "a/": {"trusted.overlay.origin": b"x", "trusted.overlay.impure": b"y"},
            "c/": {"trusted.overlay.overlay.mine": b"1"},
        },
        ["C /c"],
    ),
    ("upper-symlink-over-dir", {"a@": "b"}, ["C /a"]),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [(s, e) for _, s, e in UPPER_CASES], ids=[n for n, _, _ in UPPER_CASES]
)
def test_upper_format(tmp_path: Path, spec: dict[str, object], expected: list[str]) -> None:
    require_root()  # trusted.* xattrs, whiteout devices
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    make_tree(lower, LOWER)
    make_tree(upper, spec)
    # Upper dirs that exist in the lower keep its modes and times, as a copy-up does.
    for dirpath, dirnames, _ in os.walk(upper):
        for d in dirnames:
            rel = os.path.relpath(os.path.join(dirpath, d), upper)
            if (lower / rel).is_dir() and not (lower / rel).is_symlink():
                shutil.copystat(lower / rel, upper / rel, follow_symlinks=False)
    with MergedIndex.build([lower], tmp_path / "index") as index:
        assert [str(c) for c in changes(upper, index)] == expected


def test_scratch_container_needs_no_mount(imgfs: ImgfsRunner, root: Path) -> None:
    """A container of `scratch` (no layers); its upper dir is written directly."""
    require_root()
    cid = imgfs("create", "--name", "sc", "scratch").stdout.strip()
    upper = root / "containers" / cid / "upper"
    (upper / "d").mkdir()
    (upper / "d" / "f").write_text("f")
    os.mknod(upper / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # hides nothing
    assert imgfs("diff", "sc").stdout == "A /d\nA /d/f\n"
    assert json.loads(imgfs("diff", "--format", "json", cid[:12]).stdout) == [
        {"Path": "/d", "Kind": 1},
        {"Path": "/d/f", "Kind": 1},
    ]


def test_cli_errors(imgfs: ImgfsRunner, root: Path) -> None:
    assert_user_error(imgfs("diff", "nosuch", check=False), "no such container: nosuch")
    require_root()
    imgfs("create", "--name", "sc", "scratch")
    assert_user_error(imgfs("diff", "other", check=False), "no such container: other")
    usage = imgfs("diff", check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("imgfs: ")
    bad = imgfs("diff", "--format", "yaml", "sc", check=False)
    assert bad.returncode == 2 and "yaml" in bad.stderr


# -- differential: kernel overlayfs's upper dir, ours, and a tree-walk oracle ----------------

DIFF_SEEDS = list(range(3010, 3020))
DIFF_OPS = 300


def walk_tree(root: str, kernel: bool) -> dict[str, tuple]:
    """Path ("/a/b") -> what docker's comparison looks at, and more: type and mode, owner,
    device number, for non-directories size and mtime, contents or link target, xattrs."""
    out: dict[str, tuple] = {}

    def visit(rel: str) -> None:
        full = root + rel
        st = os.lstat(full)
        mode = st.st_mode
        data: object = None
        if stat.S_ISREG(mode):
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            data = digest(b"".join(chunks))
        elif stat.S_ISLNK(mode):
            data = os.readlink(full)
        xattrs = tuple(
            (n, os.getxattr(full, n, follow_symlinks=False))
            for n in sorted(os.listxattr(full, follow_symlinks=False))
        )
        rdev = st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
        sized = () if stat.S_ISDIR(mode) else (st.st_size, st.st_mtime_ns)
        out[rel or "/"] = (mode, st.st_uid, st.st_gid, rdev, *sized, data, xattrs)
        if stat.S_ISDIR(mode):
            for name in existing(full, os.listdir(full), kernel):
                visit(f"{rel}/{name}")

    visit("")
    return out


def tree_changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """docker's ChangesDirs rules on two walked trees, knowing nothing of upper dirs."""

    def parent(path: str) -> str:
        return path.rpartition("/")[0] or "/"

    def is_dir(attrs: tuple) -> bool:
        return stat.S_ISDIR(attrs[0])

    found: dict[str, str] = {}
    for path, attrs in after.items():
        if path == "/":
            continue
        if path not in before:
            found[path] = "A"
        elif before[path] != attrs:
            found[path] = "C"
    for path in before:
        up = parent(path)
        if path != "/" and path not in after and up in after and is_dir(after[up]):
            found[path] = "D"  # the topmost deleted path only
    for path in list(found):
        up = parent(path)
        while up != "/" and up not in found:
            found[up] = "C"
            up = parent(up)
    return [f"{found[p]} {p}" for p in sorted(found, key=os.fsencode)]


@pytest.fixture(scope="module")
def oracle_options(tmp_path_factory: pytest.TempPathFactory) -> str:
    require_root()
    options, errors = kernel_options(tmp_path_factory.mktemp("probe"))
    require(options is not None, f"kernel overlayfs unusable here: {errors}")
    assert options is not None
    return options


def upper_features(upper: Path, before: dict[str, tuple], listed: list[str]) -> set[str]:
    """What an upper dir holds that changes() must interpret (`before`: the lower tree,
    `listed`: the changes found)."""
    found = set()
    paths = {line[2:] for line in listed}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(path, upper)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found.add("whiteout")
                continue
            if rel in before and rel not in paths and not stat.S_ISDIR(st.st_mode):
                found.add("copied up, unchanged")
            if stat.S_ISDIR(st.st_mode):
                names = os.listxattr(path, follow_symlinks=False)
                if "trusted.overlay.opaque" in names:
                    found.add("opaque dir")
                if "trusted.overlay.redirect" in names:
                    target = os.getxattr(path, "trusted.overlay.redirect", follow_symlinks=False)
                    found.add("absolute redirect" if target[:1] == b"/" else "relative redirect")
    return found


def test_changes_match_kernel_and_tree_oracle(tmp_path: Path, oracle_options: str) -> None:
    """For each seed: the same operations on kernel overlayfs and on imgfs-overlay; then
    changes() of both upper dirs must agree, and ours must equal the tree-walk oracle."""
    require(imgfs_overlay_bin().exists(), f"{imgfs_overlay_bin()} is not installed")
    require(shutil.which("fusermount3") is not None, "fusermount3 is not installed")
    env_seeds = os.environ.get("IMGFS_DIFF_SEEDS")
    seeds = parse_seeds(env_seeds) if env_seeds else DIFF_SEEDS
    count = int(os.environ.get("IMGFS_DIFF_OPS") or DIFF_OPS)
    cfg = Config("imgfs", None, None, 0, 0, None, 30)
    failures: list[str] = []
    features: dict[str, set[str]] = {"kernel": set(), "ours": set()}
    kinds: set[str] = set()
    for seed in seeds:
        work = tmp_path / f"seed{seed}"
        work.mkdir()
        canary = make_canary(work / "canary")
        rig = Rig(work, "run", seed, "imgfs", oracle_options, canary)
        lowers = rig.layers.dirs
        before = lower_only_tree(lowers, work)
        watchdog = Watchdog(cfg.timeout)
        try:
            with rig.mounted() as (oracle, ours):
                ops, mismatch = run_ops(oracle, ours, Plan(seed, count), rig.layers, cfg, watchdog)
                if mismatch is not None:
                    failures.append(f"seed {seed}: the mounts differ: {mismatch.describe()}")
                    continue
                after = walk_tree(ours.root, kernel=False)
                kernel_tree = snapshot(oracle.root, kernel=True)
        finally:
            watchdog.close()
        with MergedIndex.build(lowers, work / "index") as index:
            ours_all = [str(c) for c in changes(rig.upper("ours"), index)]
            ours_own = [str(c) for c in changes(rig.upper("ours"), index, parents=False)]
            kernel_own = [str(c) for c in changes(rig.upper("oracle"), index, parents=False)]
        kinds |= {line[0] for line in ours_all}
        features["kernel"] |= upper_features(rig.upper("oracle"), before, ours_all)
        features["ours"] |= upper_features(rig.upper("ours"), before, ours_all)
        oracle = tree_changes(before, after)
        if ours_all != oracle:
            failures.append(_difference(seed, len(ops), "tree-walk oracle", oracle, ours_all))
        # With index=on, the kernel keeps a copied-up lower hard link's other names joined to
        # it through workdir/index/, not in the upper dir; ours links them in the upper dir.
        hidden = set()
        if excluded("index_in_workdir"):
            hidden = {
                "/" + p for p in lower_hardlink_paths(kernel_tree, rig.layers.lower_hardlink_inos)
            }
        kernel_own = [line for line in kernel_own if line[2:] not in hidden]
        ours_own = [line for line in ours_own if line[2:] not in hidden]
        if ours_own != kernel_own:
            failures.append(_difference(seed, len(ops), "kernel's upper dir", kernel_own, ours_own))
        rig.remove()
    assert not failures, "\n\n".join(failures)
    if not env_seeds:  # the default seeds exercise every upper-dir feature diff reads
        every = {"whiteout", "opaque dir", "absolute redirect", "copied up, unchanged"}
        assert every <= features["ours"], features
        assert every | {"relative redirect"} <= features["kernel"], features
        assert kinds == {"A", "C", "D"}


def _difference(seed: int, ops: int, what: str, expected: list[str], got: list[str]) -> str:
    missing = [line for line in expected if line not in got]
    extra = [line for line in got if line not in expected]
    return (
        f"seed {seed} ({ops} operations): changes() of our upper dir differs from the {what}\n"
        f"  only in the {what}: {missing[:20]}\n  only in ours: {extra[:20]}\n"
        f"  replay the operations: IMGFS_DIFF_SEEDS={seed}-{seed} IMGFS_DIFF_OPS={ops}"
    )


def lower_only_tree(lowers: list[Path], work: Path) -> dict[str, tuple]:
    """The walk of the layers alone: kernel overlayfs, read-only (no upper dir)."""
    mnt = work / "lower-only"
    mnt.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))}"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise MountError(f"read-only overlay of {lowers}: {proc.stderr.strip()}")
    with mounted(DiffMount(str(mnt), "kernel")):
        return walk_tree(str(mnt), kernel=True)
