"""open_beneath: openat2 (native) and the Python walk must refuse alike, errno included."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unionfs import safeio

from conftest import require

RD, PATHNF, RDDIR = os.O_RDONLY, os.O_PATH | os.O_NOFOLLOW, os.O_RDONLY | os.O_DIRECTORY
CREAT = os.O_WRONLY | os.O_CREAT


def _need_native() -> None:
    """Skip without the built module, except under CI, where a missing build is a failure."""
    try:
        import unionfs._native  # noqa: F401
    except ImportError as e:
        require(False, f"unionfs._native is not built: {e}")
    with pytest.raises(OSError) as probe:  # absolute: EXDEV before any lookup, if supported
        safeio.open_beneath_native(-1, "/", os.O_PATH)
    if probe.value.errno != errno.EXDEV:  # a kernel without openat2 is not a build bug
        pytest.skip(f"openat2 unusable here: {probe.value}")


@pytest.fixture
def native() -> None:
    _need_native()


@pytest.fixture(params=["native", "python"])
def impl(request):
    if request.param == "native":
        _need_native()
        return safeio.open_beneath_native
    return safeio.open_beneath_py


@pytest.fixture
def tree(tmp_path: Path):
    """root/{d/f, f, ld->d, lf->f, dangling->missing, abs->/etc, up->../canary}, canary outside."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("inner")
    (root / "f").write_text("top")
    (tmp_path / "canary").write_text("secret")
    for name, target in [
        ("ld", "d"),
        ("lf", "f"),
        ("dangling", "missing"),
        ("abs", "/etc"),
        ("up", "../canary"),
    ]:
        (root / name).symlink_to(target)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, fd
    os.close(fd)


def _ino(st_: os.stat_result) -> tuple[int, int]:
    return st_.st_dev, st_.st_ino


def _open_ok(fn, fd: int, path: str, flags: int, mode: int = 0o644) -> os.stat_result:
    nfd = fn(fd, path, flags, mode)
    try:
        return os.fstat(nfd)
    finally:
        os.close(nfd)


REFUSED = [
    # intermediate symlink: ELOOP even where O_DIRECTORY|O_NOFOLLOW would say ENOTDIR
    ("ld/f", RD, errno.ELOOP),
    ("abs/passwd", RD, errno.ELOOP),
    ("up", RD, errno.ELOOP),
    ("ld/..", RD, errno.ELOOP),  # `..` is physical: a lexical walk would allow this
    ("ld/", PATHNF, errno.ELOOP),  # a trailing slash follows even with O_NOFOLLOW
    # final symlink without O_PATH|O_NOFOLLOW
    ("lf", RD, errno.ELOOP),
    ("lf", os.O_RDONLY | os.O_NOFOLLOW, errno.ELOOP),
    ("lf", os.O_PATH, errno.ELOOP),
    ("dangling", RD, errno.ELOOP),
    ("ld", RDDIR, errno.ELOOP),
    ("ld", RDDIR | os.O_NOFOLLOW, errno.ENOTDIR),
    ("dangling", CREAT, errno.ELOOP),
    # O_CREAT|O_EXCL implies O_NOFOLLOW: an existing symlink is EEXIST
    ("lf", CREAT | os.O_EXCL, errno.EEXIST),
    ("dangling", CREAT | os.O_EXCL, errno.EEXIST),
    ("d/f", CREAT | os.O_EXCL, errno.EEXIST),
    ("d/..", CREAT | os.O_EXCL, errno.EEXIST),
    # not a directory
    ("f/x", RD, errno.ENOTDIR),
    ("f/..", RD, errno.ENOTDIR),
    ("f/", RD, errno.ENOTDIR),
    ("f", RDDIR, errno.ENOTDIR),
    # missing
    ("missing", RD, errno.ENOENT),
    ("missing/x", RD, errno.ENOENT),
    ("missing/../f", RD, errno.ENOENT),
    ("d/missing/f", CREAT, errno.ENOENT),
    ("", RD, errno.ENOENT),
    ("", PATHNF, errno.ENOENT),
    # escaping
    ("..", RD, errno.EXDEV),
    ("../canary", RD, errno.EXDEV),
    ("./..", RD, errno.EXDEV),
    ("d/../..", RD, errno.EXDEV),
    ("d/../../root/f", RD, errno.EXDEV),
    ("/etc/passwd", RD, errno.EXDEV),
    ("/", PATHNF, errno.EXDEV),
    # trailing slash / directories with create or write
    ("new/", CREAT, errno.EISDIR),
    ("d/", CREAT, errno.EISDIR),
    (".", os.O_WRONLY, errno.EISDIR),
    ("d", CREAT, errno.EISDIR),
    # flag combinations openat2 rejects up front
    ("missing/x", os.O_RDONLY | os.O_CREAT | os.O_DIRECTORY, errno.EINVAL),
    ("missing/x", os.O_PATH | os.O_CREAT, errno.EINVAL),
    ("f", os.O_PATH | os.O_RDWR, errno.EINVAL),
    # too long
    ("a" * 256, RD, errno.ENAMETOOLONG),
    ("./" * 2048 + "f", RD, errno.ENAMETOOLONG),
]


@pytest.mark.parametrize(("path", "flags", "code"), REFUSED)
def test_refused(impl, tree, path, flags, code):
    root, fd = tree
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(OSError) as exc:
        os.close(impl(fd, path, flags, 0o644))
    assert (errno.errorcode[exc.value.errno], exc.value.filename) == (errno.errorcode[code], path)
    assert sorted(p.name for p in root.rglob("*")) == before
    assert not (root / "missing").exists()


@pytest.mark.parametrize(
    ("path", "flags", "target"),
    [
        ("f", RD, "f"),
        ("d/../f", RD, "f"),
        ("./d//./f", RD, "d/f"),
        ("d/f", os.O_RDWR, "d/f"),
        (".", RD, "."),
        ("d/..", RDDIR, "."),
        ("d/", RDDIR, "d"),
        ("d/.", PATHNF, "d"),
        ("./d/../d/./../d/f", PATHNF, "d/f"),
        (b"d/f", RD, "d/f"),
    ],
)
def test_allowed(impl, tree, path, flags, target):
    root, fd = tree
    assert _ino(_open_ok(impl, fd, path, flags)) == _ino(os.stat(root / target))


@pytest.mark.parametrize("name", ["lf", "dangling", "up"])
def test_final_symlink_with_o_path_nofollow(impl, tree, name):
    root, fd = tree
    st_ = _open_ok(impl, fd, name, PATHNF)
    assert stat.S_ISLNK(st_.st_mode)
    assert _ino(st_) == _ino(os.lstat(root / name))


def test_create_in_subdir(impl, tree):
    root, fd = tree
    st_ = _open_ok(impl, fd, "d/../d/new", CREAT | os.O_EXCL, 0o640)
    assert _ino(st_) == _ino(os.stat(root / "d" / "new"))
    assert stat.S_IMODE(st_.st_mode) == 0o640 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_o_path_root_fd_and_bad_root_fd(impl, tree):
    root, _ = tree
    pfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    ffd = os.open(root / "f", os.O_RDONLY)
    try:
        assert _ino(_open_ok(impl, pfd, "d/f", RD)) == _ino(os.stat(root / "d" / "f"))
        for path in (".", "..", "x"):
            with pytest.raises(NotADirectoryError):
                impl(ffd, path, RD)
    finally:
        os.close(pfd)
        os.close(ffd)
    with pytest.raises(OSError) as exc:
        impl(ffd, "..", RD)  # closed by now
    assert exc.value.errno == errno.EBADF


def test_embedded_nul_is_refused(impl, tree):
    _, fd = tree
    with pytest.raises(ValueError):
        impl(fd, "f\0/../../etc", RD)


# --- dispatch, environment and syncfs -------------------------------------------------


def test_no_native_env_forces_fallback():
    code = "import unionfs.safeio as s; print(s.HAVE_NATIVE)"
    env = dict(os.environ, IMGFS_NO_NATIVE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_have_native_when_built():
    _need_native()
    if os.environ.get("IMGFS_NO_NATIVE", "") in ("", "0"):
        assert safeio.HAVE_NATIVE


def test_enosys_is_cached(monkeypatch, tree):
    root, fd = tree

    class NoOpenat2:
        calls = 0

        def imgfs_open_beneath(self, *args):
            NoOpenat2.calls += 1
            return -errno.ENOSYS

    monkeypatch.setattr(safeio, "_lib", NoOpenat2())
    monkeypatch.setattr(safeio, "HAVE_NATIVE", True)
    monkeypatch.delenv("IMGFS_NO_NATIVE", raising=False)
    for _ in range(3):
        assert _ino(_open_ok(safeio.open_beneath, fd, "d/f", RD)) == _ino(os.stat(root / "d/f"))
    assert safeio.HAVE_NATIVE is False
    assert NoOpenat2.calls == 2  # the failed call and its re-probe, then never again


def test_open_beneath_uses_native(monkeypatch, tree):
    _need_native()
    root, fd = tree
    monkeypatch.setattr(safeio, "HAVE_NATIVE", True)
    monkeypatch.setattr(safeio, "open_beneath_py", None)  # would raise TypeError if called
    assert _ino(_open_ok(safeio.open_beneath, fd, "d/f", RD)) == _ino(os.stat(root / "d/f"))
    with pytest.raises(OSError) as exc:
        safeio.open_beneath(fd, "ld/f", RD)
    assert exc.value.errno == errno.ELOOP


@pytest.mark.parametrize("native", [True, False])
def test_syncfs(monkeypatch, tree, native):
    _, fd = tree
    if native:
        _need_native()
    synced = []
    monkeypatch.setattr(safeio, "HAVE_NATIVE", native)
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    safeio.syncfs(fd)
    assert synced == ([] if native else [True])
    bad = os.open(os.devnull, os.O_RDONLY)
    os.close(bad)
    with pytest.raises(OSError) as exc:
        safeio.syncfs(bad)
    assert exc.value.errno == errno.EBADF


# --- differential: random trees, random paths, both implementations -------------------

NAMES = ["a", "b", "c"]
FLAG_SETS = [RD, PATHNF, RDDIR, CREAT, os.O_PATH, CREAT | os.O_EXCL, os.O_RDONLY | os.O_NOFOLLOW]


def _build_tree(rnd, base: Path) -> Path:
    """A random tree under base/root; base also holds a canary file and dir outside it."""
    root = base / "root"
    root.mkdir()
    (base / "canary").write_text("secret")
    (base / "outdir").mkdir()
    for name in NAMES:
        (base / "outdir" / name).write_text("outside")
    dirs = [root]
    for _ in range(rnd.randint(2, 14)):
        parent = rnd.choice(dirs)
        path = parent / rnd.choice(NAMES)
        if os.path.lexists(path):
            continue
        kind = rnd.choice(["dir", "dir", "file", "link", "link"])
        if kind == "dir":
            path.mkdir()
            dirs.append(path)
        elif kind == "file":
            path.write_text("x")
        else:
            depth = len(path.relative_to(root).parts)
            target = rnd.choice(
                [
                    rnd.choice(NAMES),  # sibling: file, dir, link or dangling
                    "/".join(rnd.choices([*NAMES, ".", ".."], k=rnd.randint(1, 3))),
                    "../" * depth + "canary",  # escapes to the canary
                    "../" * depth + "outdir",
                    str(base / "canary"),  # absolute, outside
                    str(root / rnd.choice(NAMES)),  # absolute, pointing inside
                    "/etc",
                    ".",
                    "..",
                    path.name,  # loop
                ]
            )
            path.symlink_to(target)
    return root


def _random_path(rnd) -> str:
    parts = rnd.choices([*NAMES, *NAMES, ".", "..", "", "canary", "outdir"], k=rnd.randint(1, 6))
    path = "/".join(parts)
    return rnd.choice([path, path, path + "/", "/" + path, "./" + path])


def _snapshot(base: Path) -> set[str]:
    return {os.path.join(d, n) for d, ds, fs in os.walk(base) for n in ds + fs}


def _outcome(fn, root_fd: int, base: Path, path: str, flags: int):
    """(ok, dev, ino, type) or (err, name); files it created are described then removed."""
    before = _snapshot(base)
    try:
        fd = fn(root_fd, path, flags, 0o600)
    except OSError as e:
        res = ("err", errno.errorcode.get(e.errno, e.errno))
    else:
        st_ = os.fstat(fd)
        os.close(fd)
        res = ("ok", st_.st_dev, st_.st_ino, stat.S_IFMT(st_.st_mode))
    created = sorted(_snapshot(base) - before)
    for p in created:
        os.unlink(p)
    if created:
        assert res[0] == "ok", (path, flags, created)
        res = ("created", created, res[3])
    return res


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rnd=st.randoms(use_true_random=False))
def test_native_and_fallback_agree(native, tmp_path, rnd):
    fds = len(os.listdir("/proc/self/fd"))
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        base = Path(tmp)
        root = _build_tree(rnd, base)
        outside = {
            _ino(os.lstat(p))
            for p in [base, base / "canary", base / "outdir", *(base / "outdir").iterdir()]
        }
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(25):
                path = _random_path(rnd)
                for flags in FLAG_SETS:
                    got = _outcome(safeio.open_beneath_native, root_fd, base, path, flags)
                    want = _outcome(safeio.open_beneath_py, root_fd, base, path, flags)
                    assert got == want, (path, oct(flags), sorted(_snapshot(root)))
                    if got[0] == "ok":
                        assert got[1:3] not in outside, (path, flags)
                    if got[0] == "created":
                        assert all(p.startswith(f"{root}/") for p in got[1])
        finally:
            os.close(root_fd)
        assert (base / "canary").read_text() == "secret"
    assert len(os.listdir("/proc/self/fd")) == fds  # the walk closes what it opens
