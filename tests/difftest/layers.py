"""Random lower layers in kernel overlayfs format, and the canary directory outside them.

Layers share one small pool of names, so the same path is often a file in one layer, a
directory in another and a whiteout in a third: whiteouts over lower entries, opaque
directories over lower directories, files over directories and directories over files all
come from the same draw. Everything is decided by the seed.
"""

from __future__ import annotations

import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path

NAMES = ("a", "b", "c", "d", "e", "f")
WHITEOUT_DEV = os.makedev(0, 0)
OPAQUE_XATTR = "trusted.overlay.opaque"
FILE_MODES = (0o644, 0o644, 0o600, 0o755, 0o4755, 0o2755, 0o444, 0o640, 0o000, 0o1644)
DIR_MODES = (0o755, 0o755, 0o700, 0o775, 0o1777, 0o2775, 0o555)
OWNERS = ((0, 0), (1000, 1000), (65534, 100), (1000, 0))
MAX_DEPTH = 3


@dataclass
class Layers:
    """The built layers (top first, as in lowerdir=) and what the generator needs to know."""

    dirs: list[Path]
    canary: Path
    names: list[str]  # every relative path in any layer (whiteouts included), sorted
    lower_hardlink_inos: set[int]  # st_ino of layer files with st_nlink > 1
    symlinks: list[str]  # relative paths that are a symlink in some layer, sorted


def make_canary(path: Path) -> Path:
    """A directory outside the layers that symlinks in the layers point at."""
    path.mkdir()
    (path / "secret").write_bytes(b"canary secret\n")
    (path / "sub").mkdir()
    (path / "sub" / "inner").write_bytes(b"canary inner\n")
    os.symlink("secret", path / "link")
    os.setxattr(path / "secret", "user.canary", b"1")
    for p in (path / "sub" / "inner", path / "secret", path / "sub", path):
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_123_456_789))
    return path


def canary_state(path: Path) -> dict[str, tuple]:
    """Everything about the canary tree a write through a symlink could change."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in ["", *dirnames, *filenames]:
            p = os.path.join(dirpath, name) if name else dirpath
            if not name and dirpath != str(path):
                continue
            st = os.lstat(p)
            rel = os.path.relpath(p, path)
            data: object = None
            if stat.S_ISREG(st.st_mode):
                data = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            xattrs = sorted(
                (n, os.getxattr(p, n, follow_symlinks=False))
                for n in os.listxattr(p, follow_symlinks=False)
            )
            state[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_nlink,
                st.st_mtime_ns,
                data,
                xattrs,
            )
    return state


def canary_changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    fields = ("mode", "uid", "gid", "size", "nlink", "mtime_ns", "content", "xattrs")
    out = []
    for path in sorted(set(before) | set(after)):
        x, y = before.get(path), after.get(path)
        if x is None or y is None:
            out.append(f"canary/{path}: {'appeared' if x is None else 'disappeared'}")
        elif x != y:
            pairs = zip(fields, x, y, strict=True)
            changed = [f"{f} {a!r} -> {b!r}" for f, a, b in pairs if a != b]
            out.append(f"canary/{path}: {'; '.join(changed)}")
    return out


def _symlink_target(rng: random.Random, canary: Path, depth: int) -> str:
    up = "../" * (depth + 1)  # from the link's directory to the mount point's parent
    return rng.choice(
        [
            str(canary / "secret"),  # absolute, outside the layers
            str(canary),
            str(canary / "sub"),
            str(canary / "missing"),  # dangling, outside
            f"{up}{canary.name}/secret",  # relative, climbing out of the mount
            f"{up}{canary.name}/sub",
            rng.choice(NAMES),  # a sibling
            "../" + rng.choice(NAMES) if depth else rng.choice(NAMES) + "/" + rng.choice(NAMES),
            "nowhere",  # dangling, inside
            ".",
        ]
    )


class _Builder:
    def __init__(self, rng: random.Random, canary: Path, index: int, count: int) -> None:
        self.rng = rng
        self.canary = canary
        self.index = index
        self.bottom = index == count - 1
        self.files: list[Path] = []

    def fill(self, root: Path, rel: str, depth: int) -> None:
        rng = self.rng
        k = rng.randint(4, 6) if depth == 0 else rng.randint(2, 5)
        for name in rng.sample(NAMES, k):
            path = root / rel / name
            kinds = {
                "file": 34,
                "dir": 26 if depth < MAX_DEPTH else 0,
                "symlink": 12,
                "whiteout": 2 if self.bottom else 11,
                "hardlink": 7 if self.files else 0,
                "fifo": 3,
                "chardev": 2,
                "socket": 1,
            }
            kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
            self.make(kind, path, root, f"{rel}/{name}".lstrip("/"), depth)

    def make(self, kind: str, path: Path, root: Path, rel: str, depth: int) -> None:
        rng = self.rng
        if kind == "file":
            size = rng.choice([0, rng.randint(1, 64), rng.randint(64, 5000), rng.randint(1, 70000)])
            path.write_bytes(rng.randbytes(size))
            self.meta(path, FILE_MODES)
            self.files.append(path)
        elif kind == "dir":
            path.mkdir()
            self.fill(root, rel, depth + 1)
            if not self.bottom and rng.random() < 0.25:
                os.setxattr(path, OPAQUE_XATTR, b"y")
            self.meta(path, DIR_MODES)
        elif kind == "symlink":
            os.symlink(_symlink_target(rng, self.canary, depth), path)
            if rng.random() < 0.3:
                os.lchown(path, *rng.choice(OWNERS))
        elif kind == "whiteout":
            os.mknod(path, stat.S_IFCHR | 0o600, WHITEOUT_DEV)
        elif kind == "hardlink":
            os.link(rng.choice(self.files), path)
        elif kind == "fifo":
            os.mkfifo(path, rng.choice([0o644, 0o600, 0o666]))
        elif kind == "chardev":
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        elif kind == "socket":
            os.mknod(path, stat.S_IFSOCK | 0o755)

    def meta(self, path: Path, modes: tuple[int, ...]) -> None:
        rng = self.rng
        if rng.random() < 0.3:
            for name in rng.sample(["user.a", "user.b", "user.overlay.opaque"], rng.randint(1, 2)):
                os.setxattr(path, name, rng.randbytes(rng.randint(0, 40)))
        if rng.random() < 0.3:
            os.lchown(path, *rng.choice(OWNERS))
        os.chmod(path, rng.choice(modes))


def build_layers(seed: int, base: Path, canary: Path, count: int = 3) -> Layers:
    """`count` layer dirs under `base` (L0 is the top layer), fully determined by `seed`."""
    rng = random.Random(f"layers-{seed}")
    dirs = []
    for i in range(count):
        d = base / f"L{i}"
        d.mkdir(parents=True)
        _Builder(rng, canary, i, count).fill(d, "", 0)
        os.chmod(d, 0o755)
        dirs.append(d)
    names: set[str] = set()
    links: set[str] = set()
    inos: set[int] = set()
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                names.add(os.path.relpath(p, d))
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    inos.add(st.st_ino)
                if stat.S_ISLNK(st.st_mode):
                    links.add(os.path.relpath(p, d))
    return Layers(dirs, canary, sorted(names), inos, sorted(links))


def _kind(layer: Path, rel: str) -> str | None:
    """What `rel` is in `layer`, never following a symlink (a symlinked parent: None)."""
    path = str(layer)
    for part in rel.split("/"):
        if path != str(layer) and not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        path = os.path.join(path, part)
        if not os.path.lexists(path):
            return None
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_DEV:
        return "whiteout"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(st.st_mode) else "special"


def features(layers: Layers) -> set[str]:
    """Which layer situations these layers contain (the coverage test checks all occur)."""
    found: set[str] = set()
    canary = str(layers.canary)
    for i, top in enumerate(layers.dirs):
        for rel in layers.names:
            p = os.path.join(top, rel)
            kind = _kind(top, rel)
            if kind is None:
                continue
            below = {_kind(lo, rel) for lo in layers.dirs[i + 1 :]} - {None}
            if kind == "whiteout" and below - {"whiteout"}:
                found.add("whiteout over lower entry")
            if kind == "dir" and below & {"file", "special", "symlink"}:
                found.add("dir over non-dir")
            if kind in ("file", "special", "symlink") and "dir" in below:
                found.add("non-dir over dir")
            if kind == "dir" and "dir" in below:
                found.add("merged dir")
                if _has_opaque(p):
                    found.add("opaque dir over lower dir")
            if kind == "symlink":
                target = os.readlink(p)
                if canary in target or target.startswith("../"):
                    found.add("symlink out of the layers")
                if not os.path.exists(os.path.join(os.path.dirname(p), target)):
                    found.add("dangling symlink")
            if kind == "file":
                st = os.lstat(p)
                if st.st_nlink > 1:
                    found.add("hard link")
                if stat.S_IMODE(st.st_mode) & (stat.S_ISUID | stat.S_ISGID):
                    found.add("setuid/setgid file")
            if kind == "special":
                st = os.lstat(p)
                if stat.S_ISFIFO(st.st_mode):
                    found.add("fifo")
                elif stat.S_ISSOCK(st.st_mode):
                    found.add("socket")
                else:
                    found.add("device")
            if kind in ("file", "dir") and any(
                n.startswith("user.") for n in os.listxattr(p, follow_symlinks=False)
            ):
                found.add("user xattr")
    return found


def _has_opaque(path: str) -> bool:
    return OPAQUE_XATTR in os.listxattr(path, follow_symlinks=False)


ALL_FEATURES = frozenset(
    {
        "whiteout over lower entry",
        "dir over non-dir",
        "non-dir over dir",
        "merged dir",
        "opaque dir over lower dir",
        "symlink out of the layers",
        "dangling symlink",
        "hard link",
        "setuid/setgid file",
        "fifo",
        "socket",
        "device",
        "user xattr",
    }
)
