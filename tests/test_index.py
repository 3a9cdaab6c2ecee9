"""Merged lower index: overlayfs merge semantics, the kernel as oracle, C = Python, corruption."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from unionfs.index import ROOT_ID, LowerEntry, MergedIndex, build_index, chain_id
from unionfs.index import lookup as ixlookup
from unionfs.index.format import HEADER, HEADER_CRC_SPAN, name_hash
from unionfs.index.merge import is_whiteout

from conftest import require, require_root

OPAQUE = "trusted.overlay.opaque"


# --- declarative layers ----------------------------------------------------------


@dataclass
class Dir:
    children: dict[str, object] = field(default_factory=dict)
    opaque: str | None = None  # the xattr that marks it opaque
    mode: int = 0o755


@dataclass
class Sym:
    target: str


@dataclass
class Hard:
    to: str  # a path in the same layer, created earlier


class Whiteout:
    pass


WH = Whiteout()


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def _make(path: Path, spec: object, layer_root: Path) -> None:
    if isinstance(spec, Dir):
        path.mkdir(exist_ok=True)
        os.chmod(path, spec.mode)
        if spec.opaque:
            os.setxattr(path, spec.opaque, b"y")
        for name, child in spec.children.items():
            _make(path / name, child, layer_root)
    elif isinstance(spec, Sym):
        os.symlink(spec.target, path)
    elif isinstance(spec, Hard):
        os.link(layer_root / spec.to, path)
    elif spec is WH:
        whiteout(path)
    else:
        path.write_bytes(spec if isinstance(spec, bytes) else str(spec).encode())


def make_layers(base: Path, *specs: dict[str, object]) -> list[Path]:
    """One layer dir per spec (top first), named L0, L1, ..."""
    dirs = []
    for i, spec in enumerate(specs):
        root = base / f"L{i}"
        root.mkdir(parents=True)
        for name, child in spec.items():
            _make(root / name, child, root)
        dirs.append(root)
    return dirs


def tree(ix: MergedIndex) -> dict[str, LowerEntry]:
    """path -> entry over the whole index, checking lookup, order and parent links."""
    out: dict[str, LowerEntry] = {}
    todo = [ROOT_ID]
    while todo:
        dir_id = todo.pop()
        names = []
        for cid in ix.children(dir_id):
            e = ix.entry(cid)
            assert e.parent == dir_id
            assert ix.lookup(dir_id, e.name) == cid
            names.append(e.name)
            out[ix.path(cid).decode()] = e
            if ix.is_dir(cid):
                todo.append(cid)
        assert names == sorted(names)
    return out


def build(tmp_path: Path, *specs: dict[str, object]) -> MergedIndex:
    lowers = make_layers(tmp_path / "layers", *specs)
    return MergedIndex.build(lowers, tmp_path / "index")


def _need_native() -> None:
    """Skip without the built module, except under CI, where a missing build is a failure."""
    require(ixlookup._HAS_SYMBOLS, "unionfs._native is not built with the index lookup")


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with MergedIndex's C lookup and again with the Python fallback."""
    if request.param == "native":
        _need_native()
        monkeypatch.setattr(ixlookup, "HAVE_NATIVE", True)
    else:
        monkeypatch.setattr(ixlookup, "HAVE_NATIVE", False)
    return request.param


@pytest.fixture(autouse=True)
def _root_marked(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root"):
        require_root()


# --- merge semantics -------------------------------------------------------------


def test_union_of_layers_and_ids(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"top": "t", "d": Dir({"x": "top-x", "both": "top"}, mode=0o700)},
        {"low": "l", "d": Dir({"y": "low-y", "both": "low"}), "e": Dir({"z": "z"})},
    )
    t = tree(ix)
    assert sorted(t) == ["d", "d/both", "d/x", "d/y", "e", "e/z", "low", "top"]
    assert len(ix) == len(t) + 1
    assert (t["top"].layer, t["low"].layer, t["d/both"].layer, t["d/y"].layer) == (0, 1, 0, 1)
    # A directory's own metadata comes from the topmost layer holding it.
    assert (t["d"].layer, stat.S_IMODE(t["d"].mode)) == (0, 0o700)
    assert t["d"].nlink == 2 and ix.entry(ROOT_ID).nlink == 4  # 2 + merged subdirs
    # Breadth-first ids, children sorted by name bytes: root's children first.
    assert [ix.entry(i).name for i in ix.children(ROOT_ID)] == [b"d", b"e", b"low", b"top"]
    assert list(ix.children(ROOT_ID)) == [2, 3, 4, 5]
    assert ix.path(ROOT_ID) == b"" and ix.entry(ROOT_ID).name == b""
    assert ix.entry(ROOT_ID).parent == ROOT_ID
    assert ix.lookup(ROOT_ID, b"nope") is None and ix.lookup(t["top"].id, b"x") is None
    assert ix.lookup(ROOT_ID, b"") is None and ix.lookup(0, b"d") is None
    assert ix.lookup(-1, b"d") is None and ix.lookup(2**70, b"d") is None
    assert ix.lookup(len(ix) + 1, b"x") is None
    with pytest.raises(KeyError):
        ix.entry(0)
    with pytest.raises(KeyError):
        ix.entry(len(ix) + 1)
    assert ix.lower_dirs == [tmp_path / "layers/L0", tmp_path / "layers/L1"]
    ix.close()
    ix.close()  # idempotent


def test_entry_metadata_is_the_providing_layers_lstat(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"f": "hello", "s": Sym("f")}, {"f": "old"})
    os.utime(lowers[0] / "f", ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    with MergedIndex.build(lowers, tmp_path / "ix") as ix:
        for name in ("f", "s"):
            e = ix.entry(ix.lookup(ROOT_ID, name.encode()))
            st = os.lstat(lowers[0] / name)
            assert (e.mode, e.uid, e.gid, e.size, e.rdev, e.blocks) == (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_rdev, st.st_blocks,
            )  # fmt: skip
            assert (e.atime_ns, e.mtime_ns, e.ctime_ns) == (
                st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
            )  # fmt: skip
            assert e.nlink == 1 and e.link_group == e.id
            assert ix.link_group(e.id) == (e.id,)
        assert ix.entry(ix.lookup(ROOT_ID, b"f")).mtime_ns == 1_700_000_000_987_654_321


@pytest.mark.root
def test_whiteouts_hide_lower_names_and_are_not_entries(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"gone": WH, "d": Dir({"x": WH, "keep": "k"}), "never": WH},
        {"gone": "g", "d": Dir({"x": "x", "y": "y"})},
        {"gone": Dir({"deep": "d"})},
    )
    t = tree(ix)
    assert sorted(t) == ["d", "d/keep", "d/y"]
    for parent, name in [(ROOT_ID, b"gone"), (ROOT_ID, b"never"), (t["d"].id, b"x")]:
        assert ix.lookup(parent, name) is None


@pytest.mark.root
def test_whiteout_then_recreated_in_a_higher_layer(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"d": Dir({"new": "n"}), "f": "recreated"},
        {"d": WH, "f": WH},
        {"d": Dir({"old": "o"}), "f": "original"},
    )
    t = tree(ix)
    # The whiteout stops the merge: the recreated directory does not see "old".
    assert sorted(t) == ["d", "d/new", "f"]
    assert t["f"].layer == 0 and t["f"].size == len("recreated")


def test_file_over_dir_hides_the_whole_dir(tmp_path: Path, impl: str) -> None:
    ix = build(tmp_path, {"a": "file"}, {"a": Dir({"x": "x", "sub": Dir({"y": "y"})})})
    t = tree(ix)
    assert sorted(t) == ["a"]
    assert stat.S_ISREG(t["a"].mode) and not ix.is_dir(t["a"].id)
    assert list(ix.children(t["a"].id)) == []
    assert ix.lookup(t["a"].id, b"x") is None


def test_dir_over_file_stops_the_merge_at_the_file(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"a": Dir({"top": "t"})},
        {"a": Dir({"mid": "m"})},
        {"a": "a file"},
        {"a": Dir({"bottom": "b"})},
    )
    assert sorted(tree(ix)) == ["a", "a/mid", "a/top"]


@pytest.mark.root
@pytest.mark.parametrize("xattr", ["trusted.overlay.opaque", "user.overlay.opaque"])
def test_opaque_dir_in_a_middle_layer(tmp_path: Path, impl: str, xattr: str) -> None:
    ix = build(
        tmp_path,
        {"d": Dir({"a": "a", "s": Dir({"t0": "0"})})},
        {"d": Dir({"b": "b", "s": Dir({"t1": "1"})}, opaque=xattr)},
        {"d": Dir({"c": "c", "s": Dir({"t2": "2"})}), "other": "o"},
    )
    assert sorted(tree(ix)) == ["d", "d/a", "d/b", "d/s", "d/s/t0", "d/s/t1", "other"]


@pytest.mark.root
def test_opaque_value_other_than_y_is_not_opaque(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"d": Dir({"a": "a"})}, {"d": Dir({"b": "b"})})
    os.setxattr(lowers[0] / "d", OPAQUE, b"x")  # "x" marks xattr whiteouts, not opacity
    with MergedIndex.build(lowers, tmp_path / "ix") as ix:
        assert sorted(tree(ix)) == ["d", "d/a", "d/b"]


@pytest.mark.root
def test_opaque_layer_root_hides_nothing_as_in_the_kernel(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"top": "t"}, {"mid": "m"}, {"low": "l"})
    os.setxattr(lowers[1], OPAQUE, b"y")
    with MergedIndex.build(lowers, tmp_path / "ix") as ix:
        assert sorted(tree(ix)) == ["low", "mid", "top"]
        compare_with_kernel(ix, tmp_path / "mnt")


@pytest.mark.root
def test_hard_links_form_groups(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"z": "zz", "sub": Dir({"h": Hard("z")}), "a": Hard("z"), "solo": "s"},
        {"low": "x", "low2": Hard("low")},
    )
    t = tree(ix)
    group = sorted(t[p].id for p in ("z", "sub/h", "a"))
    for p in ("z", "sub/h", "a"):
        assert t[p].link_group == group[0] and t[p].nlink == 3
        assert list(ix.link_group(t[p].id)) == group
    assert t["low"].link_group == min(t["low"].id, t["low2"].id) and t["low"].nlink == 2
    assert ix.link_group(t["solo"].id) == (t["solo"].id,) and t["solo"].nlink == 1


@pytest.mark.root
def test_hard_link_alias_hidden_by_a_higher_layer(tmp_path: Path, impl: str) -> None:
    ix = build(
        tmp_path,
        {"b": WH, "pair": Dir({"q": WH}), "c": "replaced"},
        {"a": "data", "b": Hard("a"), "c": Hard("a"), "pair": Dir({"p": "x", "q": Hard("pair/p")})},
    )
    t = tree(ix)
    assert sorted(t) == ["a", "c", "pair", "pair/p"]
    # b is whited out and c is replaced by another file: a is alone in its group, but its
    # nlink is the layer inode's, hidden names included, as kernel overlayfs reports it.
    assert t["a"].nlink == 3 and t["a"].link_group == t["a"].id
    assert ix.link_group(t["a"].id) == (t["a"].id,)
    assert t["pair/p"].nlink == 2 and t["c"].layer == 0


def test_symlinks_are_never_followed(tmp_path: Path, impl: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("secret")
    ix = build(
        tmp_path,
        {"link": Sym(str(outside)), "d": Dir({"in": "x"}), "rel": Sym("../../outside")},
        {"d": Sym(str(outside)), "link": Dir({"under": "u"})},
        {"d": Dir({"below": "b"})},
    )
    t = tree(ix)
    assert sorted(t) == ["d", "d/in", "link", "rel"]
    assert stat.S_ISLNK(t["link"].mode) and t["link"].size == len(str(outside))
    assert list(ix.children(t["link"].id)) == [] and ix.lookup(t["link"].id, b"canary") is None


def test_one_hundred_layers(tmp_path: Path, impl: str) -> None:
    specs: list[dict[str, object]] = []
    for i in range(100):
        spec: dict[str, object] = {f"f{i}": f"{i}", "common": f"{i}", "d": Dir({f"x{i}": "x"})}
        if i == 40:
            spec["f60"] = WH if os.geteuid() == 0 else "shadow"
        if i == 70:
            spec["d"] = Dir({f"x{i}": "x"}, opaque=OPAQUE if os.geteuid() == 0 else None)
        specs.append(spec)
    ix = build(tmp_path, *specs)
    t = tree(ix)
    assert t["common"].layer == 0 and t["f99"].layer == 99 and t["f0"].layer == 0
    if os.geteuid() == 0:
        assert "f60" not in t
        assert sorted(p for p in t if p.startswith("d/")) == sorted(f"d/x{i}" for i in range(71))
    d = t["d"].id
    for i in range(100):
        assert (ix.lookup(d, f"x{i}".encode()) is not None) == (os.geteuid() != 0 or i <= 70)


def test_names_are_bytes_and_need_not_be_utf8(tmp_path: Path, impl: str) -> None:
    lowers = make_layers(tmp_path, {"d": Dir()}, {})
    name = b"caf\xe9 \xff\n"
    fd = os.open(os.fsencode(lowers[0] / "d") + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    with MergedIndex.build(lowers, tmp_path / "deep/er/index") as ix:
        d = ix.lookup(ROOT_ID, b"d")
        assert ix.entry(ix.lookup(d, name)).name == name
        assert ix.path(ix.lookup(d, name)) == b"d/" + name


def test_no_layers_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_index([], tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_ids_are_deterministic_and_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"b": Dir({"y": "1", "x": "2"}), "a": "3"}, {"c": "4"})
    build_index(lowers, tmp_path / "one")
    build_index(lowers, tmp_path / "two")
    with MergedIndex.open(tmp_path / "two", lowers) as two:
        paths = [two.path(i) for i in range(1, len(two) + 1)]
    with MergedIndex.open(tmp_path / "one", lowers) as ix:
        build_index(lowers[:1], tmp_path / "one")  # rename over a mapped file: ix unaffected
        assert [ix.path(i) for i in range(1, len(ix) + 1)] == paths == [
            b"", b"a", b"b", b"c", b"b/x", b"b/y",
        ]  # fmt: skip
        ix.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L0", "L1", "one", "two"]


def test_open_or_build_rebuilds_a_missing_or_stale_index(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"a": "1"}, {"b": "2"})
    with MergedIndex.open_or_build(tmp_path / "ix", lowers) as ix:
        assert len(ix) == 3
    build_index(lowers[:1], tmp_path / "ix")
    with MergedIndex.open_or_build(tmp_path / "ix", lowers) as ix:
        assert len(ix) == 3


def test_chain_id() -> None:
    a, b, c = (f"sha256:{ch * 64}" for ch in "abc")
    assert chain_id([a]) == a
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_id([a, b]) == ab
    assert chain_id([a, b, c]) == "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    with pytest.raises(ValueError):
        chain_id([])


# --- the kernel as oracle --------------------------------------------------------


@dataclass
class _Gen:
    rng: random.Random
    density: float
    names: tuple[str, ...] = ("a", "b", "cc", "d.txt", "e")

    def layer(self, root: Path, index: int) -> None:
        files: list[Path] = []
        if index and self.rng.random() < 0.15:
            os.setxattr(root, OPAQUE, b"y")  # the kernel ignores it on a layer root
        self._dir(root, root, files, 0)

    def _dir(self, root: Path, path: Path, files: list[Path], depth: int) -> None:
        rng = self.rng
        for name in self.names:
            if rng.random() > self.density:
                continue
            p = path / name
            kinds = ["file", "dir", "sym", "wh", "hard", "fifo", "chr"]
            kind = rng.choices(kinds, weights=[30, 30 if depth < 3 else 0, 8, 15, 6, 3, 3])[0]
            if kind == "hard" and not files:
                kind = "file"
            if kind == "file":
                p.write_bytes(f"{p.relative_to(root)}:{rng.random()}".encode() * rng.randint(0, 3))
                os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o4755]))
                files.append(p)
            elif kind == "dir":
                p.mkdir()
                os.chmod(p, rng.choice([0o755, 0o700, 0o1777]))
                if rng.random() < 0.2:
                    os.setxattr(p, OPAQUE, b"y")
                self._dir(root, p, files, depth + 1)
            elif kind == "sym":
                os.symlink(rng.choice(["a", "/etc/passwd", "../..", "d.txt/x"]), p)
            elif kind == "wh":
                whiteout(p)
            elif kind == "hard":
                os.link(rng.choice(files), p)
            elif kind == "fifo":
                os.mkfifo(p)
            else:
                os.mknod(p, stat.S_IFCHR | 0o644, os.makedev(1, 3))
            if kind != "wh":
                os.chown(
                    p, rng.choice([0, 1000, 65534]), rng.choice([0, 100]), follow_symlinks=False
                )
                ns = rng.randrange(10**18, 2 * 10**18)
                os.utime(p, ns=(ns, ns), follow_symlinks=False)


def random_stack(
    base: Path, seed: int, layers: int, density: float, extra_names: int = 0
) -> list[Path]:
    """`layers` random layer dirs (top first) drawing names from a small pool, so that
    layers collide on names often; `extra_names` widens the pool for deep stacks."""
    gen = _Gen(random.Random(seed), density)
    gen.names += tuple(f"n{i}" for i in range(extra_names))
    dirs = []
    for i in range(layers):
        d = base / str(i)
        d.mkdir(parents=True)
        gen.layer(d, i)
        dirs.append(d)
    return dirs


@contextlib.contextmanager
def overlay_mount(lowers: list[Path], mnt: Path) -> Iterator[Path]:
    """A read-only kernel overlayfs of `lowers` (top first) at `mnt`, unmounted after.

    Paths are relative to the layers' common parent, run as the cwd of mount(8): the
    option string of a 100-layer stack would not fit in a page otherwise."""
    base = Path(os.path.commonpath(lowers))
    rel = ":".join(os.path.relpath(d, base) for d in lowers)
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={rel}", str(mnt)],
        cwd=base,
        capture_output=True,
        text=True,
    )
    require(proc.returncode == 0, f"kernel overlayfs mount failed: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def compare_with_kernel(ix: MergedIndex, mnt: Path) -> int:
    """Walk the kernel's merged view of ix.lower_dirs and check the index says the same.
    Returns the number of entries compared."""
    lowers = ix.lower_dirs
    entries = tree(ix)
    with overlay_mount(lowers, mnt):
        seen: dict[str, os.stat_result] = {}
        for dirpath, dirnames, filenames in os.walk(mnt):
            for name in dirnames + filenames:
                path = os.path.relpath(os.path.join(dirpath, name), mnt)
                try:
                    seen[path] = os.lstat(mnt / path)
                except FileNotFoundError:
                    # The kernel's readdir of a directory that only one layer holds passes
                    # that layer's listing through, whiteouts included, though lookup
                    # hides them: the index hides them everywhere.
                    parent = entries[os.path.dirname(path)] if "/" in path else None
                    layer = lowers[parent.layer if parent else 0]
                    assert is_whiteout(os.lstat(layer / path)), path
        assert sorted(seen) == sorted(entries)
        for path, kst in seen.items():
            e = entries[path]
            layer_path = lowers[e.layer] / path
            lst = os.lstat(layer_path)
            assert (e.mode, e.uid, e.gid, e.rdev, e.mtime_ns) == (
                kst.st_mode, kst.st_uid, kst.st_gid, kst.st_rdev, kst.st_mtime_ns,
            ), path  # fmt: skip
            assert (e.mode, e.size, e.mtime_ns) == (lst.st_mode, lst.st_size, lst.st_mtime_ns)
            if stat.S_ISDIR(e.mode):
                assert e.nlink == 2 + sum(ix.is_dir(c) for c in ix.children(e.id))
                continue
            assert e.size == kst.st_size, path
            # The kernel shows the layer inode's link count; the index counts visible aliases.
            assert kst.st_nlink == lst.st_nlink == e.nlink >= len(ix.link_group(e.id))
            if stat.S_ISLNK(e.mode):
                assert os.readlink(mnt / path) == os.readlink(layer_path), path
            elif stat.S_ISREG(e.mode):
                assert (mnt / path).read_bytes() == layer_path.read_bytes(), path
        # Every name any layer holds (whiteouts and hidden ones too) is absent alike.
        for dir_path in [""] + [p for p, e in entries.items() if stat.S_ISDIR(e.mode)]:
            dir_id = ROOT_ID if not dir_path else entries[dir_path].id
            for layer in lowers:
                if (layer / dir_path).is_dir() and not (layer / dir_path).is_symlink():
                    for name in os.listdir(layer / dir_path):
                        visible = os.path.lexists(mnt / dir_path / name)
                        assert (ix.lookup(dir_id, os.fsencode(name)) is not None) == visible
    return len(seen)


@pytest.mark.root
@pytest.mark.parametrize("seed", range(8))
def test_random_stacks_match_kernel_overlayfs(tmp_path: Path, seed: int, impl: str) -> None:
    lowers = random_stack(tmp_path / "layers", seed, layers=2 + seed % 5, density=0.6)
    with MergedIndex.build(lowers, tmp_path / "index") as ix:
        assert compare_with_kernel(ix, tmp_path / "mnt") == len(ix) - 1


@pytest.mark.root
def test_hundred_layer_random_stack_matches_kernel_overlayfs(tmp_path: Path) -> None:
    lowers = random_stack(tmp_path / "layers", 1234, 100, density=0.05, extra_names=60)
    with MergedIndex.build(lowers, tmp_path / "index") as ix:
        assert len({ix.entry(i).layer for i in range(1, len(ix) + 1)}) > 25
        assert compare_with_kernel(ix, tmp_path / "mnt") > 150


# --- C and Python agree, and corrupt files are harmless ---------------------------


def test_hash_functions_agree() -> None:
    _need_native()
    rng = random.Random(7)
    for _ in range(2000):
        parent = rng.choice([0, 1, 2, 255, 256, 2**32 - 1, rng.randrange(2**32)])
        name = rng.randbytes(rng.randrange(0, 40))
        assert ixlookup._lib.imgfs_index_hash(parent, name, len(name)) == name_hash(parent, name)


def _probes(ix: MergedIndex, lowers: list[Path], rng: random.Random) -> Iterator[tuple[int, bytes]]:
    """Existing names, names only in layers (whiteouts, hidden), and made-up ones."""
    n = len(ix)
    for id_ in range(1, n + 1):
        e = ix.entry(id_)
        yield e.parent, e.name
        yield rng.randrange(1, n + 1), e.name
        yield e.parent, e.name + b"x"
    for layer in lowers:
        for _, dirnames, filenames in os.walk(layer):
            for name in dirnames + filenames:
                yield rng.randrange(0, n + 2), os.fsencode(name)
    for _ in range(200):
        yield (
            rng.choice([0, 1, n, n + 1, 2**32, rng.randrange(n + 2)]),
            rng.randbytes(rng.randrange(0, 6)),
        )


def _both(buf: bytes, probes: list[tuple[int, bytes]]) -> list[int]:
    ptr = ixlookup.native_buffer(buf)
    answers = []
    for parent, name in probes:
        c = ixlookup.lookup_native(ptr, len(buf), parent, name)
        py = ixlookup.lookup_py(buf, parent, name)
        assert c == py, (parent, name)
        answers.append(c)
    return answers


@pytest.mark.root
@pytest.mark.parametrize("seed", range(4))
def test_native_and_python_lookups_agree(tmp_path: Path, seed: int) -> None:
    _need_native()
    lowers = random_stack(tmp_path / "layers", 100 + seed, layers=4, density=0.7)
    build_index(lowers, tmp_path / "index")
    buf = (tmp_path / "index").read_bytes()
    rng = random.Random(seed)
    probes = list(_probes(MergedIndex.open(tmp_path / "index", lowers), lowers, rng))
    answers = _both(buf, probes)
    assert any(answers) and not all(answers)


def _corrupt(buf: bytes, rng: random.Random) -> bytes:
    raw = bytearray(buf)
    how = rng.randrange(4)
    if how == 0:  # truncated
        return bytes(raw[: rng.randrange(len(raw))])
    if how == 1:  # flipped bytes anywhere, header CRC fixed up so open may accept it
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif how == 2:  # a header field set to something wild
        off = rng.randrange(16, 96, 8)
        struct.pack_into("<Q", raw, off, rng.choice([0, 1, 2**32, 2**63, 2**64 - 1, len(raw)]))
    else:  # the hash table's ids and tags scrambled
        hash_off = struct.unpack_from("<Q", raw, 48)[0]
        for _ in range(16):
            pos = hash_off + 4 * rng.randrange(32)
            if pos + 4 <= len(raw):
                struct.pack_into("<I", raw, pos, rng.randrange(2**32))
    if rng.random() < 0.7 and len(raw) >= HEADER.size:
        struct.pack_into("<I", raw, HEADER_CRC_SPAN, zlib.crc32(raw[:HEADER_CRC_SPAN]))
    return bytes(raw)


def test_corrupt_index_is_refused_or_harmless(tmp_path: Path) -> None:
    lowers = make_layers(
        tmp_path, {"d": Dir({"x": "1", "y": Dir({"z": "2"})}), "h": "3", "i": Hard("h")}, {"e": "4"}
    )
    build_index(lowers, tmp_path / "good")
    good = (tmp_path / "good").read_bytes()
    with MergedIndex.open(tmp_path / "good", lowers) as ix:
        probes = list(_probes(ix, lowers, random.Random(0)))
    rng = random.Random(1)
    refused = 0
    for i in range(300):
        bad = _corrupt(good, rng)
        path = tmp_path / f"bad{i}"
        path.write_bytes(bad)
        if ixlookup._HAS_SYMBOLS:
            _both(bad, probes)
        try:
            ix = MergedIndex.open(path, lowers)
        except ValueError:
            refused += 1
            continue
        with ix:  # accepted (body damage): every call answers or raises, never crashes
            for id_ in range(0, len(ix) + 2):
                for call in (ix.entry, ix.children, ix.path, ix.link_group, ix.is_dir):
                    with contextlib.suppress(KeyError, ValueError):
                        call(id_)
            for parent, name in probes:
                ix.lookup(parent, name)
    assert refused > 100


def test_open_refuses_bad_headers(tmp_path: Path) -> None:
    lowers = make_layers(tmp_path, {"a": "1"}, {"b": "2"})
    build_index(lowers, tmp_path / "ix")
    good = (tmp_path / "ix").read_bytes()

    def refused(data: bytes, layers: list[Path] = lowers) -> bool:
        (tmp_path / "bad").write_bytes(data)
        try:
            MergedIndex.open(tmp_path / "bad", layers).close()
        except ValueError:
            return True
        return False

    assert not refused(good)
    assert refused(good, lowers[:1])  # built for another number of layers
    assert refused(b"")
    assert refused(good[: HEADER.size]) and refused(good[:-1]) and refused(good + b"\0")
    assert refused(b"NOTANIDX" + good[8:])
    assert refused(good[:8] + struct.pack("<I", 99) + good[12:])  # a future version
    with pytest.raises(FileNotFoundError):
        MergedIndex.open(tmp_path / "missing", lowers)
    with pytest.raises(ValueError):  # body damage: open accepts it, verify does not
        flipped = bytearray(good)
        flipped[-1] ^= 0xFF
        (tmp_path / "bad").write_bytes(flipped)
        with MergedIndex.open(tmp_path / "bad", lowers) as ix:
            ix.verify()


def test_no_native_env_forces_the_python_lookup(tmp_path: Path) -> None:
    code = "from unionfs.index import lookup; print(lookup.HAVE_NATIVE, lookup.native_hash)"
    env = dict(os.environ, IMGFS_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "None"], out.stderr
