"""Layer dirs for the mount benchmarks: a rootfs, a big file, and a layer of changes.

Every contender mounts exactly the same three lower dirs (top first):

1. `changes`: what a typical image layer does to its base: modified files, added files,
   whiteouts of files and of a whole directory, and an opaque directory (a directory
   replaced wholesale), written as OCI whiteouts in the tar and unpacked to the kernel
   overlayfs format (char devices 0:0, `trusted.overlay.opaque=y`).
2. `big`: one file of random bytes (1 GiB; 64 MiB with --quick) for the read workloads.
3. `rootfs`: the data set's tarball (busybox, or Debian minbase).

They are imported into a bench store (`imgfs`'s own layer store, so `imgfs mount` can
mount the same image): `CACHE/mount-store-<data set>/layers/<diffid>/` are the dirs
every contender gets. Built once and cached; a JSON sidecar written last marks a
complete build (delete it, or the cache, to rebuild).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.data import Dataset, cache_dir
from benchmarks.harness import rmtree, unmount_under

BIG_NAME = "bench/big.bin"
"""Where the big file is, relative to the mount's root."""
ADDED_DIR = "opt/bench-added"
ADDED_FILES = 50
MTIME = 1_700_000_000

# Preferred choices for the changes layer (first ones that exist in the base); the rest is
# picked evenly from the base's entries, so any rootfs gets the same kinds of change.
PREFERRED = {
    "whiteout_files": ["etc/issue.net", "etc/motd", "etc/debian_version", "etc/shells"],
    "whiteout_dir": ["usr/share/common-licenses", "home"],
    "opaque_dir": ["etc/pam.d", "etc"],
    "modified": ["etc/hostname", "etc/passwd", "etc/group", "etc/os-release", "etc/hosts"],
}
WANT = {"whiteout_files": 4, "modified": 5}


@dataclass(frozen=True)
class Stack:
    """The layered data set: where its layer dirs are and what the changes layer did."""

    store: Path
    image: str
    """Reference of the three-layer image in `store` (for `imgfs mount`)."""
    lower_dirs: list[Path]
    """Top first: changes, big, rootfs (the order of overlayfs's lowerdir=)."""
    big_bytes: int
    changes: dict[str, Any]
    """whiteouts, whiteout_dir, opaque_dir (+ its new and hidden names), modified, added."""
    entries: int
    """Entries of the merged tree (without the root), as kernel overlayfs shows it."""

    @property
    def big_path(self) -> str:
        return BIG_NAME

    def summary(self) -> str:
        c = self.changes
        return (
            f"layers (top first): changes, {size_label(self.big_bytes)} file, rootfs;"
            f" changes = {len(c['modified'])} modified files, {len(c['added'])} added,"
            f" whiteouts of {', '.join('/' + w for w in c['whiteouts'])}"
            f" and of dir /{c['whiteout_dir']}, opaque dir /{c['opaque_dir']}"
            f" ({len(c['opaque_hidden'])} lower entries hidden, {len(c['opaque_new'])} new);"
            f" merged tree: {self.entries:,} entries"
        )

    def check(self, mnt: Path) -> list[str]:
        """What the mount at `mnt` shows differently from overlayfs semantics (empty: none)."""
        c = self.changes
        problems = []
        for rel in [*c["whiteouts"], c["whiteout_dir"]]:
            if os.path.lexists(mnt / rel):
                problems.append(f"whiteout /{rel} is visible")
        try:
            shown = sorted(os.listdir(mnt / c["opaque_dir"]))
        except OSError as e:
            shown = [f"<{e.strerror}>"]
        if shown != sorted(c["opaque_new"]):
            problems.append(f"opaque dir /{c['opaque_dir']} shows {len(shown)} entries")
        for rel, digest in {**c["modified"], **c["added"]}.items():
            try:
                got = hashlib.sha256((mnt / rel).read_bytes()).hexdigest()
            except OSError as e:
                got = e.strerror or "error"
            if got != digest:
                problems.append(f"/{rel} has the wrong content")
        try:
            size = (mnt / BIG_NAME).stat().st_size
        except OSError:
            size = -1
        if size != self.big_bytes:
            problems.append(f"/{BIG_NAME} has {size} bytes")
        return problems


def size_label(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def prepare(data: Dataset, big_bytes: int, log: Any = sys.stderr) -> Stack:
    cache = cache_dir()
    store_root = cache / f"mount-store-{data.name}"
    meta = cache / f"mount-{data.name}-{big_bytes >> 20}m.json"
    remove_leftover_containers(store_root)
    if meta.is_file():
        doc = json.loads(meta.read_text())
        stack = Stack(
            store=store_root,
            image=doc["image"],
            lower_dirs=[Path(p) for p in doc["lower_dirs"]],
            big_bytes=int(doc["big_bytes"]),
            changes=doc["changes"],
            entries=int(doc["entries"]),
        )
        if all(d.is_dir() for d in stack.lower_dirs):
            return stack
    log.write(f"benchmarks: building the mount layers once ({store_root})\n")
    stack = _build(data, big_bytes, store_root, log)
    doc = {
        "image": stack.image,
        "lower_dirs": [str(d) for d in stack.lower_dirs],
        "big_bytes": stack.big_bytes,
        "changes": stack.changes,
        "entries": stack.entries,
    }
    meta.write_text(json.dumps(doc, indent=1) + "\n")
    return stack


def remove_leftover_containers(store_root: Path) -> None:
    """Containers an interrupted run left behind (their mounts were in the scratch dir)."""
    containers = store_root / "containers"
    if containers.is_dir():
        unmount_under(containers)
        rmtree(containers)


def _build(data: Dataset, big_bytes: int, store_root: Path, log: Any) -> Stack:
    from unionfs.reference import parse
    from unionfs.store.images import ImageStore

    store = ImageStore(store_root)
    store.layout.ensure()
    tmp = store_root / "bench-tmp"
    rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        with open(data.tarball, "rb") as f:
            base = store.layers.import_tar(f)
        base_members = members(data.tarball)
        changes_tar, changes = _changes_tar(base_members)
        changes_layer = store.layers.import_tar(io.BytesIO(changes_tar))
        big_tar = tmp / "big.tar"
        _write_big_tar(big_tar, big_bytes)
        with open(big_tar, "rb") as f:
            big = store.layers.import_tar(f)
        big_tar.unlink()
        layers = [base, big, changes_layer]  # bottom first, as in the image config
        config = image_config(
            [la.diff_id for la in layers], [data.name, f"{big_bytes >> 20} MiB file", "changes"]
        )
        ref = parse(f"bench/mount:{data.name}-{big_bytes >> 20}m")
        store.add_image(config, [la.descriptor() for la in layers], ref)
        lower = [store.layers.path(la.diff_id) for la in reversed(layers)]
        log.write(f"benchmarks: layers ready in {time.monotonic() - t0:.1f} s\n")
    finally:
        rmtree(tmp)
    entries = len(merged_paths(base_members, changes))
    return Stack(store_root, str(ref), lower, big_bytes, changes, entries)


def members(tarball: Path) -> dict[str, tarfile.TarInfo]:
    """The base tar's entries by normalized path ("etc/passwd"), root excluded."""
    out = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            name = norm(m.name)
            if name:
                out[name] = m
    return out


def norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def pick(candidates: list[str], count: int, taken: list[str]) -> list[str]:
    """`count` of `candidates`, evenly spread, none inside or above an already taken path."""
    free = [c for c in candidates if not any(under(c, t) or under(t, c) for t in taken if t != "")]
    if len(free) <= count:
        return free
    step = len(free) / (count + 1)
    return [free[int(step * (i + 1))] for i in range(count)]


def choose_changes(members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    """Which base entries the changes layer hides, replaces and rewrites (deterministic)."""
    names = sorted(members)
    children: dict[str, list[str]] = {}
    descendants: dict[str, int] = {}
    for n in names:
        children.setdefault(n.rpartition("/")[0], []).append(n)
        parts = n.split("/")
        for i in range(1, len(parts)):
            top = "/".join(parts[:i])
            descendants[top] = descendants.get(top, 0) + 1
    dirs = [n for n in names if members[n].isdir()]
    files = [n for n in names if members[n].isfile()]
    non_dirs = [n for n in names if not members[n].isdir()]

    def preferred(key: str, ok: Any) -> list[str]:
        return [p for p in PREFERRED[key] if p in members and ok(p)]

    def small_dir(n: str) -> bool:
        return members[n].isdir() and descendants.get(n, 0) <= 200

    def opaque_ok(n: str) -> bool:
        return 3 <= len(children.get(n, [])) <= 100

    taken: list[str] = []
    wdir = preferred("whiteout_dir", small_dir) or pick([d for d in dirs if small_dir(d)], 1, [])
    taken += wdir[:1]
    opaque = preferred("opaque_dir", lambda n: opaque_ok(n) and not under(n, taken[0]))
    opaque = opaque or pick([d for d in dirs if opaque_ok(d)], 1, taken)
    taken += opaque[:1]
    modified = [m for m in preferred("modified", lambda n: True) if m in files]
    modified = [m for m in modified if not any(under(m, t) for t in taken)][: WANT["modified"]]
    plain = [f for f in files if f not in modified and not members[f].mode & 0o111]
    modified += pick(plain, WANT["modified"] - len(modified), taken)  # programs keep running
    taken += modified
    whiteouts = preferred("whiteout_files", lambda n: n in non_dirs)
    whiteouts = [w for w in whiteouts if not any(under(w, t) for t in taken)]
    whiteouts = whiteouts[: WANT["whiteout_files"]]
    need = WANT["whiteout_files"] - len(whiteouts)
    whiteouts += pick([n for n in non_dirs if n not in whiteouts], need, taken + whiteouts)
    if not wdir or not opaque:
        raise SystemExit("benchmarks: the base rootfs is too small for the changes layer")
    return {
        "whiteouts": whiteouts,
        "whiteout_dir": wdir[0],
        "opaque_dir": opaque[0],
        "opaque_hidden": [n.rpartition("/")[2] for n in children.get(opaque[0], [])],
        "modified": modified,
    }


def _content(rel: str) -> bytes:
    return f"changed by the benchmarks' changes layer: /{rel}\n".encode() * 8


def _changes_tar(members: dict[str, tarfile.TarInfo]) -> tuple[bytes, dict[str, Any]]:
    """The changes layer as an OCI layer tar (with .wh. whiteouts), and what it does."""
    plan = choose_changes(members)
    opaque = plan["opaque_dir"]
    opaque_new = ["bench-a.conf", "bench-b.conf", "bench-c.conf"]
    added = [f"{ADDED_DIR}/file-{i:03d}" for i in range(ADDED_FILES)] + ["etc/bench.conf"]
    files = {rel: _content(rel) for rel in [*plan["modified"], *added]}
    files |= {f"{opaque}/{n}": _content(f"{opaque}/{n}") for n in opaque_new}
    files[f"{opaque}/.wh..wh..opq"] = b""
    for rel in [*plan["whiteouts"], plan["whiteout_dir"]]:
        d, _, name = rel.rpartition("/")
        files[f"{d}/.wh.{name}" if d else f".wh.{name}"] = b""

    buf = io.BytesIO()
    written: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in written:
                    written.add(d)
                    tar.addfile(_like(members.get(d), d, tarfile.DIRTYPE, 0o755))
            info = _like(members.get(rel), rel, tarfile.REGTYPE, 0o644)
            info.size = len(files[rel])
            tar.addfile(info, io.BytesIO(files[rel]))
    changes = {
        "whiteouts": plan["whiteouts"],
        "whiteout_dir": plan["whiteout_dir"],
        "opaque_dir": opaque,
        "opaque_hidden": plan["opaque_hidden"],
        "opaque_new": sorted(  # what the opaque dir shows: all from this layer
            r.rpartition("/")[2]
            for r in files
            if r.rpartition("/")[0] == opaque and not r.rpartition("/")[2].startswith(".wh.")
        ),
        "modified": {r: hashlib.sha256(files[r]).hexdigest() for r in plan["modified"]},
        "added": {r: hashlib.sha256(files[r]).hexdigest() for r in added},
    }
    return buf.getvalue(), changes


def _like(base: tarfile.TarInfo | None, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    """A tar header for `name`, with the owner and mode of the base's entry it replaces."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, MTIME
    if base is not None and base.type == kind:
        info.mode, info.uid, info.gid, info.mtime = base.mode, base.uid, base.gid, base.mtime
    return info


def _write_big_tar(path: Path, size: int) -> None:
    """A tar holding `bench/` and one file of `size` random bytes (nothing compresses it)."""
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("bench")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tar.addfile(d)
        info = tarfile.TarInfo(BIG_NAME)
        info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
        tar.addfile(info, _RandomReader(size))


class _RandomReader(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n) if n else b""


def merged_paths(members: dict[str, tarfile.TarInfo], changes: dict[str, Any]) -> set[str]:
    """The entries (root excluded) overlayfs semantics show: what `find MNT` lists."""
    gone = [*changes["whiteouts"], changes["whiteout_dir"]]
    opaque = changes["opaque_dir"]
    names = {n for n in members if not any(under(n, g) for g in gone)}
    names = {n for n in names if not n.startswith(opaque + "/")}
    names |= {f"{opaque}/{n}" for n in changes["opaque_new"]}
    names |= set(changes["added"])
    for rel in [*changes["added"], BIG_NAME]:
        parts = rel.split("/")
        names |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return names


def image_config(diff_ids: list[str], made_by: list[str]) -> dict[str, object]:
    """The config of a benchmark image: one history entry per layer, bottom first."""
    from unionfs.store.images import host_architecture, utc_now

    created = utc_now()
    return {
        "created": created,
        "architecture": host_architecture(),
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"benchmarks: {m}"} for m in made_by],
    }
