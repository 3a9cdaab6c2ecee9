"""Mounting without root: `imgfs-overlay` run by an unprivileged user (nobody, 65534).

The test runs as root and drops to nobody (setpriv) for the mount, everything done through
it and the unmount (`fusermount3 -u`); the daemon mounts through fusermount3, as libfuse
does for any unprivileged process. The upper dir it leaves must be in kernel overlayfs's
`-o userxattr` format (user.overlay.* xattrs, 0:0 whiteouts, nothing in trusted.*), and
kernel overlayfs mounted with `-o userxattr` over the same layers and that upper dir must
show nobody exactly the tree the FUSE mount showed. The same scenario also runs as root
with an explicit `-o userxattr`.

Two things stand between a test run by root and an unprivileged daemon, and both are dealt
with without changing the machine:
- The project's interpreter may not be readable by others (a pyenv under /root). Only the
  interpreter is the problem: the venv's packages are pure Python or CPython extensions
  for the same X.Y, which any CPython X.Y loads. So nobody gets a throwaway venv
  (`--without-pip`, under 1 s, no network, nothing built) of the system's python X.Y
  whose .pth adds this venv's site-packages; if those (or the source tree) are not
  readable by others either, they are copied in. When this interpreter is usable by
  nobody as it is (CI with Debian's python), it is used directly.
- /dev/fuse must be open to the user (fusermount3 opens it with the user's ids). udev
  makes it 0666 on a normal system; machines without udev leave the kernel's 0600. So the
  unprivileged part runs in a private mount namespace where a 0666 node of the same device
  is bind-mounted on /dev/fuse: it changes nothing where /dev/fuse is 0666 already, and
  nothing outside that namespace anywhere.

Run as a script (`python test_rootless.py scenario|view JSON`), this file is the part that
runs as the unprivileged user.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unionfs.cli.overlay import build_parser, spec_from_args
from unionfs.fs.layerfds import TRUSTED, USER, default_format, in_initial_userns

from conftest import require, require_root

NOBODY = 65534
GIVEN_AWAY = 12345
"""A uid nobody may not give a file to (root may)."""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# -- the unprivileged side (also imported by the tests, for root's runs) ------------------


def overlay_mount(cfg: dict[str, Any]) -> None:
    opts = f"lowerdir={cfg['lowers']},upperdir={cfg['upper']},workdir={cfg['work']}"
    if cfg["userxattr"]:
        opts += ",userxattr"
    cmd = [sys.executable, "-m", "unionfs.cli.overlay", "-o", opts, cfg["mnt"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def overlay_unmount(mnt: str) -> None:
    """fusermount3 -u, then wait for the daemon serving `mnt` to exit."""
    cmd = ["fusermount3", "-u", mnt]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    deadline = time.monotonic() + 10
    while daemons(mnt):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon for {mnt} did not exit after fusermount3 -u")
        time.sleep(0.05)


def daemons(marker: str) -> list[int]:
    """Processes (but this one) whose command line mentions `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if os.fsencode(marker) in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def operations(mnt: str) -> dict[str, Any]:
    """Changes through the mount, each one's outcome: None, a value, or an errno name."""
    out: dict[str, Any] = {}

    def do(what: str, fn: Any) -> None:
        try:
            out[what] = fn()
        except OSError as e:
            out[what] = _errname(e)

    def j(*parts: str) -> str:
        return os.path.join(mnt, *parts)

    uid, gid = os.getuid(), os.getgid()
    do("create", lambda: _write(j("new.txt"), "new\n"))
    do("create in a merged dir", lambda: _write(j("etc", "new"), "n\n"))
    do("append to a lower file", lambda: _append(j("etc", "passwd"), "more\n"))
    do("unlink a lower file", lambda: os.unlink(j("data", "x")))
    do("unlink another", lambda: os.unlink(j("data", "y")))
    do("rmdir a lower dir", lambda: os.rmdir(j("data")))
    do("mkdir over its whiteout", lambda: os.mkdir(j("data")))
    do("list the new dir", lambda: os.listdir(j("data")))
    do("create in it", lambda: _write(j("data", "z"), "z\n"))
    do("unlink a lower symlink", lambda: os.unlink(j("sym")))
    do("rename a lower dir", lambda: os.rename(j("etc"), j("etc2")))
    do("old name gone", lambda: os.path.lexists(j("etc")))
    do("lower file of the moved dir", lambda: Path(j("etc2", "sub", "f")).read_text())
    do("lower file of a lower layer", lambda: Path(j("etc2", "sub", "g")).read_text())
    do("whited-out name stays hidden", lambda: os.path.lexists(j("etc2", "hosts")))
    do("chmod in a read-only dir", lambda: os.chmod(j("ro", "file"), 0o600))
    do("setxattr", lambda: os.setxattr(j("etc2", "passwd"), "user.a", b"b"))
    do("setxattr a private name", lambda: os.setxattr(j("new.txt"), "user.overlay.x", b"1"))
    do("listxattr", lambda: sorted(os.listxattr(j("new.txt"))))
    do("getxattr", lambda: os.getxattr(j("new.txt"), "user.overlay.x").decode())
    do("opaque lower dir hides its xattr", lambda: os.listxattr(j("opq")))
    do("chown to the same ids", lambda: os.chown(j("new.txt"), uid, gid))
    do("chown away", lambda: os.chown(j("new.txt"), GIVEN_AWAY, -1))
    do("chgrp to root's group", lambda: os.chown(j("etc2", "passwd"), -1, 0))
    do("mknod a whiteout", lambda: os.mknod(j("wh"), stat.S_IFCHR | 0o600, os.makedev(0, 0)))
    do("mkfifo", lambda: os.mkfifo(j("fifo"), 0o640))
    do("append to a hard link", lambda: _append(j("link-a"), "+\n"))
    do("the other name", lambda: Path(j("link-b")).read_text())
    do("write a root-owned 0666 file", lambda: _write(j("rootfile"), "hi\n"))
    do("symlink", lambda: os.symlink("new.txt", j("newsym")))
    do("link", lambda: os.link(j("new.txt"), j("new-link")))
    do("list a root-only dir", lambda: os.listdir(j("secret")))
    return out


def view(root: str, inodes: bool = False) -> dict[str, Any]:
    """Everything the tree at `root` shows this user: kind, mode, owner, size, content
    digest or link target, user.* xattrs, hard-link partners (and inode numbers)."""
    out: dict[str, Any] = {}
    by_ino: dict[int, list[str]] = {}

    def walk(rel: str) -> None:
        try:
            names = sorted(os.listdir(os.path.join(root, rel)))
        except OSError as e:
            out[rel + "/"] = _errname(e)
            return
        for name in names:
            path = f"{rel}/{name}" if rel else name
            full = os.path.join(root, path)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue  # a whiteout kernel overlayfs lists in a dir of one layer
            kind = stat.S_IFMT(st.st_mode)
            entry: dict[str, Any] = {
                "kind": stat.filemode(st.st_mode)[0],
                "mode": oct(stat.S_IMODE(st.st_mode)),
                "owner": [st.st_uid, st.st_gid],
            }
            if kind == stat.S_IFREG:
                entry["size"] = st.st_size
                try:
                    entry["sha256"] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                except OSError as e:
                    entry["sha256"] = _errname(e)
            elif kind == stat.S_IFLNK:
                entry["target"] = os.readlink(full)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                entry["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
            names_x = os.listxattr(full, follow_symlinks=False)
            entry["xattrs"] = {
                n: os.getxattr(full, n, follow_symlinks=False).hex()
                for n in sorted(names_x)
                if n.startswith("user.")
            }
            if inodes:
                entry["ino"] = st.st_ino
            if kind != stat.S_IFDIR and st.st_nlink > 1:
                by_ino.setdefault(st.st_ino, []).append(path)
            out[path] = entry
            if kind == stat.S_IFDIR:
                walk(path)

    walk("")
    for paths in by_ino.values():
        for p in paths:
            out[p]["links"] = paths
    return out


def scenario(cfg: dict[str, Any]) -> dict[str, Any]:
    """Mount, change things, look, unmount; mount again, look, unmount."""
    overlay_mount(cfg)
    try:
        ops = operations(cfg["mnt"])
        first = view(cfg["mnt"], inodes=True)
    finally:
        overlay_unmount(cfg["mnt"])
    overlay_mount(cfg)
    try:
        second = view(cfg["mnt"], inodes=True)
    finally:
        overlay_unmount(cfg["mnt"])
    return {"ops": ops, "first": first, "second": second}


def _main(argv: list[str]) -> None:
    what, arg = argv
    if what == "scenario":
        result = scenario(json.loads(arg))
    elif what == "view":
        result = view(arg)
    elif what == "probe":
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
        import zstandard  # noqa: F401

        import unionfs.cli.overlay  # noqa: F401

        result = {"ok": True}
    else:
        raise SystemExit(f"unknown command {what}")
    json.dump(result, sys.stdout)


# -- the root side ---------------------------------------------------------------------


def _as_nobody(*cmd: str) -> list[str]:
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "env",
        "-i",
        f"PATH={PATH}",
        "HOME=/",
        "LANG=C.UTF-8",
        "PYTHONDONTWRITEBYTECODE=1",
        *cmd,
    ]


def _world_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


class Runner:
    """Runs this file as a script, as nobody, with an interpreter nobody can use."""

    def __init__(self, python: str, script_dir: Path) -> None:
        self.python = python
        self.script = script_dir / "rootless_scenario.py"

    def command(self, what: str, arg: str) -> list[str]:
        return _as_nobody(self.python, str(self.script), what, arg)

    def run(self, cmd: list[str], timeout: float = 120) -> dict[str, Any]:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        return json.loads(proc.stdout)

    def works(self) -> tuple[bool, str]:
        proc = subprocess.run(
            self.command("probe", "-"), capture_output=True, text=True, timeout=60, check=False
        )
        return proc.returncode == 0, proc.stderr.strip()


def _copy_scripts(dest: Path) -> None:
    here = Path(__file__).parent
    shutil.copy(here / "test_rootless.py", dest / "rootless_scenario.py")
    shutil.copy(here / "conftest.py", dest / "conftest.py")
    for p in dest.iterdir():
        p.chmod(0o644)


def _make_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)


def _system_python() -> str | None:
    major, minor = sys.version_info[:2]
    for d in ("/usr/bin", "/usr/local/bin", "/bin"):
        candidate = f"{d}/python{major}.{minor}"
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    """An interpreter nobody can run, seeing this venv's packages and this source tree."""
    require_root()
    for tool in ("setpriv", "unshare", "fusermount3", "mount"):
        require(shutil.which(tool) is not None, f"needs {tool}")
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    base = _world_dir("imgfs-rootless-python-")
    try:
        _copy_scripts(base)
        found = Runner(sys.executable, base)
        ok, why = found.works()
        if not ok:
            system = _system_python()
            require(system is not None, f"no python{sys.version_info[0]}.{sys.version_info[1]}")
            assert system is not None
            found = _shim_runner(system, base)
            ok, why = found.works()
        require(ok, f"no python that nobody can run with unionfs and pyfuse3: {why}")
        yield found
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _shim_runner(system: str, base: Path) -> Runner:
    """A venv of the system python whose .pth adds this venv's site-packages (copied in
    when nobody cannot read them where they are)."""
    venv = base / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    pth = venv / "lib" / ver / "site-packages" / "imgfs-test.pth"
    site_packages = sysconfig.get_paths()["purelib"]
    source = str(Path(__file__).resolve().parent.parent)
    pth.write_text(f"{source}\nimport site; site.addsitedir({site_packages!r})\n")
    _make_readable(base)
    shim = Runner(str(venv / "bin" / "python"), base)
    if shim.works()[0]:
        return shim
    # Not readable where they are (a clone under /root): copy them in.
    shutil.copytree(site_packages, base / "site", symlinks=True)
    shutil.copytree(Path(source) / "unionfs", base / "src" / "unionfs", symlinks=True)
    pth.write_text(f"{base / 'src'}\nimport site; site.addsitedir({str(base / 'site')!r})\n")
    _make_readable(base)
    return shim


def _private_fuse_namespace(cmd: list[str], scratch: Path, mode: int = 0o666) -> list[str]:
    """`cmd` in a private mount namespace whose /dev/fuse is a node of the same device with
    `mode` (on a tmpfs of its own): 0666 as udev makes it, 0600 as the kernel does."""
    dev = os.stat("/dev/fuse").st_rdev
    node_dir = scratch / "devfuse"
    node_dir.mkdir()
    setup = (
        'mount -t tmpfs -o mode=0755,size=64k imgfs-test "$1" && '
        f'mknod -m {mode:04o} "$1/fuse" c {os.major(dev)} {os.minor(dev)} && '
        'mount --bind "$1/fuse" /dev/fuse && shift && exec "$@"'
    )
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*unshare, "sh", "-c", setup, "sh", str(node_dir), *cmd]


def _mkfile(path: Path, text: str, mode: int = 0o644, owner: int = NOBODY) -> None:
    path.write_text(text)
    path.chmod(mode)
    os.chown(path, owner, owner)


def make_layers(scratch: Path) -> tuple[Path, Path]:
    """Two layers (top first), as a rootless store unpacks them (owned by nobody, opaque
    dirs as user.overlay.opaque), plus a few root-owned entries."""
    l1, l2 = scratch / "l1", scratch / "l2"
    for d in (l1 / "etc" / "sub", l1 / "opq", l2 / "etc" / "sub", l2 / "data", l2 / "opq"):
        d.mkdir(parents=True, exist_ok=True)
    _mkfile(l2 / "etc" / "passwd", "root:x:0:0\n")
    _mkfile(l2 / "etc" / "hosts", "127.0.0.1 localhost\n")
    _mkfile(l2 / "etc" / "sub" / "g", "g\n")
    _mkfile(l1 / "etc" / "sub" / "f", "f\n")
    os.mknod(l1 / "etc" / "hosts", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # a whiteout
    _mkfile(l1 / "opq" / "a", "a\n")
    _mkfile(l2 / "opq" / "hidden", "hidden by the opaque dir above\n")
    os.setxattr(l1 / "opq", USER.opaque, b"y")
    _mkfile(l2 / "data" / "x", "x\n")
    _mkfile(l2 / "data" / "y", "y\n")
    os.setxattr(l2 / "data" / "x", "user.foo", b"bar")
    os.symlink("etc/passwd", l2 / "sym")
    os.lchown(l2 / "sym", NOBODY, NOBODY)
    _mkfile(l2 / "link-a", "ab\n")
    os.link(l2 / "link-a", l2 / "link-b")
    (l2 / "ro").mkdir()
    _mkfile(l2 / "ro" / "file", "in a read-only dir\n")
    (l2 / "ro").chmod(0o555)
    _mkfile(l2 / "rootfile", "root's, writable by all\n", 0o666, owner=0)
    (l2 / "secret").mkdir(mode=0o700)
    _mkfile(l2 / "secret" / "s", "root only\n", 0o600, owner=0)
    for d in (*l1.rglob("*"), *l2.rglob("*"), l1, l2):
        if d.is_dir() and not d.is_symlink() and d.name != "secret":
            os.chown(d, NOBODY, NOBODY)
    return l1, l2


def _upper_entries(upper: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(upper)): p.lstat() for p in upper.rglob("*")}


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A dir nobody can reach (pytest's tmp_path is root's alone)."""
    path = _world_dir("imgfs-rootless-")
    try:
        yield path
    finally:
        for pid in daemons(str(path)):  # daemons this test started and left behind
            os.kill(pid, signal.SIGKILL)
        for sub in ("kmnt", "mnt"):
            if _mounted(path / sub):
                subprocess.run(["umount", "-l", str(path / sub)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _without_ino(entry: Any) -> Any:
    """An entry of `view` but its inode number (an errno name for unreadable dirs)."""
    return {k: v for k, v in entry.items() if k != "ino"} if isinstance(entry, dict) else entry


def expected_ops(privileged: bool) -> dict[str, Any]:
    return {
        "create": None,
        "create in a merged dir": None,
        "append to a lower file": None,
        "unlink a lower file": None,
        "unlink another": None,
        "rmdir a lower dir": None,
        "mkdir over its whiteout": None,
        "list the new dir": [],
        "create in it": None,
        "unlink a lower symlink": None,
        "rename a lower dir": None,
        "old name gone": False,
        "lower file of the moved dir": "f\n",
        "lower file of a lower layer": "g\n",
        "whited-out name stays hidden": False,
        "chmod in a read-only dir": None,
        "setxattr": None,
        "setxattr a private name": None,
        "listxattr": ["user.overlay.x"],
        "getxattr": "1",
        "opaque lower dir hides its xattr": [],
        "chown to the same ids": None,
        "chown away": None if privileged else "EPERM",
        "chgrp to root's group": None if privileged else "EPERM",
        "mknod a whiteout": "EPERM",  # overlayfs refuses to make one too
        "mkfifo": None,
        "append to a hard link": None,
        "the other name": "ab\n+\n",
        "write a root-owned 0666 file": None,
        "symlink": None,
        "link": None,
        "list a root-only dir": ["s"] if privileged else "EACCES",
    }


@pytest.mark.parametrize("who", ["nobody", "root-userxattr"])
def test_mount_writes_the_userxattr_format_the_kernel_mounts(
    who: str, runner: Runner, scratch: Path
) -> None:
    privileged = who != "nobody"
    l1, l2 = make_layers(scratch)
    upper, work, mnt = scratch / "upper", scratch / "work", scratch / "mnt"
    for d in (upper, work, mnt):
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    cfg = {
        "lowers": f"{l1}:{l2}",
        "upper": str(upper),
        "work": str(work),
        "mnt": str(mnt),
        "userxattr": privileged,  # nobody gets the format without asking
    }
    if privileged:
        result = scenario(cfg)
    else:
        cmd = runner.command("scenario", json.dumps(cfg))
        result = runner.run(_private_fuse_namespace(cmd, scratch))
    assert result["ops"] == expected_ops(privileged)
    first, second = result["first"], result["second"]
    assert first == second  # read back from the upper dir alone, inode numbers included

    # What the mount showed.
    me = 0 if privileged else NOBODY
    assert "etc" not in first and "etc2/hosts" not in first and "sym" not in first
    assert {"etc2/sub/f", "etc2/sub/g", "etc2/new", "opq/a"} <= set(first)
    assert "opq/hidden" not in first
    assert [p for p in first if p.startswith("data/")] == ["data/z"]
    assert first["new.txt"]["owner"] == ([GIVEN_AWAY, 0] if privileged else [me, me])
    assert first["new.txt"]["xattrs"] == {"user.overlay.x": b"1".hex()}
    # Copy-up keeps owners only where it may: without root, the copy is nobody's.
    assert first["rootfile"]["owner"] == [me, me]
    assert first["ro"]["mode"] == oct(0o555) and first["ro/file"]["mode"] == oct(0o600)
    assert first["link-a"]["links"] == ["link-a", "link-b"]
    assert first["etc2/passwd"]["xattrs"] == {"user.a": b"b".hex()}
    assert first["new-link"]["links"] == ["new-link", "new.txt"]

    # The upper dir is in the userxattr format.
    entries = _upper_entries(upper)
    whiteouts = sorted(p for p, st in entries.items() if stat.S_ISCHR(st.st_mode))
    assert whiteouts == ["etc", "sym"]
    for p in whiteouts:
        assert entries[p].st_rdev == os.makedev(0, 0)
    for p in entries:
        names = os.listxattr(upper / p, follow_symlinks=False)
        assert not [n for n in names if n.startswith("trusted.")], (p, names)
    if not privileged:
        assert {st.st_uid for st in entries.values()} == {NOBODY}
    assert os.getxattr(upper / "data", USER.opaque) == b"y"
    assert os.getxattr(upper / "etc2", USER.opaque) == b"y"  # moved whole, not redirected
    assert USER.redirect not in os.listxattr(upper / "etc2")
    assert os.getxattr(upper / "new.txt", "user.overlay.overlay.x") == b"1"
    assert "user.overlay.x" not in os.listxattr(upper / "new.txt")
    assert os.getxattr(upper / "etc2" / "passwd", USER.origin)

    # Kernel overlayfs, told the format, shows the same tree.
    kwork, kmnt = scratch / "kwork", scratch / "kmnt"
    kwork.mkdir()
    kmnt.mkdir()
    opts = f"lowerdir={l1}:{l2},upperdir={upper},workdir={kwork},userxattr"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(kmnt)], check=True)
    try:
        # Looked at by the same user as the FUSE mount was.
        kernel = view(str(kmnt)) if privileged else runner.run(runner.command("view", str(kmnt)))
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)
    ours = {p: _without_ino(e) for p, e in first.items()}
    assert kernel == ours


def test_unusable_dev_fuse_is_reported(runner: Runner, scratch: Path) -> None:
    """Without udev, /dev/fuse is 0600 and no user can mount FUSE: said plainly."""
    for d in ("l", "upper", "work", "mnt"):
        (scratch / d).mkdir()
        os.chown(scratch / d, NOBODY, NOBODY)
    opts = f"lowerdir={scratch / 'l'},upperdir={scratch / 'upper'},workdir={scratch / 'work'}"
    cmd = _as_nobody(runner.python, "-m", "unionfs.cli.overlay", "-o", opts, str(scratch / "mnt"))
    proc = subprocess.run(
        _private_fuse_namespace(cmd, scratch, mode=0o600),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc
    assert proc.stderr == (
        "imgfs-overlay: mounting without root needs /dev/fuse readable and writable by this "
        "user (mode 0666, as udev sets it)\n"
    )


def test_userxattr_option_and_default_format() -> None:
    args = build_parser().parse_args(["-o", "lowerdir=/,userxattr", "/mnt"])
    assert spec_from_args(args).userxattr
    args = build_parser().parse_args(["-o", "lowerdir=/", "/mnt"])
    assert not spec_from_args(args).userxattr
    assert default_format(userxattr=True) is USER
    if os.geteuid() != 0 or not in_initial_userns():
        assert default_format() is USER
    else:
        assert default_format() is TRUSTED


def test_xattr_formats_escape_their_own_prefix() -> None:
    assert USER.real(b"user.overlay.opaque") == b"user.overlay.overlay.opaque"
    assert USER.shown(b"user.overlay.overlay.opaque") == b"user.overlay.opaque"
    assert USER.shown(b"user.overlay.opaque") is None
    assert USER.real(b"trusted.overlay.opaque") == b"trusted.overlay.opaque"
    assert USER.shown(b"trusted.overlay.opaque") == b"trusted.overlay.opaque"
    assert TRUSTED.shown(b"user.overlay.opaque") == b"user.overlay.opaque"
    assert TRUSTED.real(b"trusted.overlay.x") == b"trusted.overlay.overlay.x"
    assert (USER.opaque, USER.redirect, USER.origin) == (
        "user.overlay.opaque",
        "user.overlay.redirect",
        "user.overlay.imgfs.origin",
    )


if __name__ == "__main__":
    _main(sys.argv[1:])
