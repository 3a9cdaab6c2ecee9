"""Data of the `changes` benchmark: an image, a change set, and the upper dir it leaves.

The change set is what a container typically does to its image, scaled to N changed
files (10,000; 200 with --quick), chosen deterministically from the data set's entries:

- about 25 % modified copies of lower files (data appended: a copy-up and a write),
  1 % chmod-ed lower files (a metadata-only copy-up),
- about 15 % deletions of lower non-directories (whiteouts),
- a few lower directories renamed (overlayfs redirects) and a few replaced wholesale
  (removed and made again with new files: opaque directories),
- the rest new files (2 % of them symlinks): most in new directories under
  `/opt/bench-changes/`, the others spread over the image's directories. Sizes are mixed
  (50 B to 384 KiB, mean ~15 KB); two thirds are text-like (compressible), a third random.

It is applied once through a real `imgfs mount` of a container (so the upper dir is what
the FUSE daemon writes: copy-ups, whiteouts, opaque and redirect xattrs), and the upper
dir is kept as a template that every rep copies (`cp -a`: xattrs, whiteout devices and
hard links kept) into a fresh container. For `umoci repack` the same change set is applied
(as plain file operations) to a bundle `umoci unpack` made of the same image.

Cached in the bench cache, like the other data: `CACHE/changes-store-<data set>/` is an
imgfs store holding the image (imported with `--compression gzip`, so umoci 0.4 can unpack
it), `CACHE/changes-<data set>-<N>/` the template upper dir and the umoci layout + bundle,
and a `.json` sidecar written last marks a complete build.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.data import Dataset, cache_dir
from benchmarks.harness import CommandError, rmtree, run, unmount_under
from benchmarks.import_bench import imgfs_command
from benchmarks.mount_data import members, norm, pick, under

PLAN_VERSION = 1
"""Bump when the change set or its application changes: cached builds are rebuilt."""
FULL_CHANGES = 10_000
QUICK_CHANGES = 200
SEED = 4
IMAGE_REPO = "bench/changes"
COMMIT_REPO = "bench/changes-commit"
UMOCI_TAG = "base"
NEW_ROOT = "opt/bench-changes"
MAX_MODIFIED_SIZE = 4 << 20
SIZES = [(100, 20), (1 << 10, 25), (4 << 10, 25), (16 << 10, 15), (64 << 10, 8), (256 << 10, 2)]
"""New files' sizes (bytes, weight in %), each scaled by a factor in [0.5, 1.5)."""


# -- the change set ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Paths relative to the root of the tree the change set is applied to."""

    renamed: list[tuple[str, str]]
    opaque: dict[str, list[str]]
    """directory -> the new files' names it holds after being replaced."""
    modified: list[str]
    chmodded: list[str]
    deleted: list[str]
    new_dirs: list[str]
    added: list[str]
    symlinks: list[tuple[str, str]]
    """(path, target)."""

    def counts(self) -> dict[str, int]:
        return {
            "modified": len(self.modified),
            "chmodded": len(self.chmodded),
            "deleted": len(self.deleted),
            "renamed_dirs": len(self.renamed),
            "opaque_dirs": len(self.opaque),
            "opaque_new_files": sum(len(v) for v in self.opaque.values()),
            "new_dirs": len(self.new_dirs),
            "added_files": len(self.added),
            "added_symlinks": len(self.symlinks),
        }

    def changed_files(self) -> int:
        c = self.counts()
        return (
            c["modified"]
            + c["chmodded"]
            + c["deleted"]
            + c["opaque_new_files"]
            + c["added_files"]
            + c["added_symlinks"]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "renamed": self.renamed,
            "opaque": self.opaque,
            "modified": self.modified,
            "chmodded": self.chmodded,
            "deleted": self.deleted,
            "new_dirs": self.new_dirs,
            "added": self.added,
            "symlinks": self.symlinks,
        }


def choose(members: dict[str, tarfile.TarInfo], n: int, quick: bool) -> Plan:
    """A change set of about `n` changed files for a rootfs with these entries."""
    rng = random.Random(SEED)
    names = sorted(members)
    children: dict[str, list[str]] = {}
    descendants: dict[str, int] = {}
    for name in names:
        children.setdefault(name.rpartition("/")[0], []).append(name)
        parts = name.split("/")
        for i in range(1, len(parts)):
            top = "/".join(parts[:i])
            descendants[top] = descendants.get(top, 0) + 1
    dirs = [d for d in names if members[d].isdir()]
    link_targets = {norm(m.linkname) for m in members.values() if m.islnk()}
    special = ("dev", "proc", "sys", NEW_ROOT)

    def free(path: str, taken: list[str]) -> bool:
        return not any(under(path, t) for t in taken) and not any(under(path, s) for s in special)

    few = 1 if quick else 3
    opaque_dirs = pick(
        [
            d
            for d in dirs
            if 1 <= len(children.get(d, [])) <= 100 and descendants.get(d, 0) <= 200 and free(d, [])
        ],
        few,
        [],
    )
    taken = list(opaque_dirs)
    renamed = pick(
        [d for d in dirs if 2 <= descendants.get(d, 0) <= 200 and free(d, taken)], few, taken
    )
    taken += renamed
    per_opaque = 5 if quick else 20
    opaque = {d: [f"bench-new-{i:02d}" for i in range(per_opaque)] for d in opaque_dirs}

    eligible = [
        f
        for f in names
        if members[f].isfile()
        and f not in link_targets
        and members[f].size <= MAX_MODIFIED_SIZE
        and free(f, taken)
    ]
    n_mod = min(round(n * 0.25), max(1, len(eligible) // 2), len(eligible))
    modified = sorted(rng.sample(eligible, n_mod))
    rest = sorted(set(eligible) - set(modified))
    chmodded = sorted(rng.sample(rest, min(max(1, n // 100), len(rest) // 2)))
    busy = set(modified) | set(chmodded)
    deletable = [x for x in names if not members[x].isdir() and x not in busy and free(x, taken)]
    deleted = sorted(rng.sample(deletable, min(round(n * 0.15), len(deletable) // 2)))

    n_added = n - n_mod - len(chmodded) - len(deleted) - per_opaque * len(opaque)
    n_links = n_added // 50
    n_files = max(0, n_added - n_links)
    per_dir = 20 if quick else 100
    in_new = n_files * 3 // 5
    new_dirs = [NEW_ROOT] + [f"{NEW_ROOT}/d{i:03d}" for i in range(-(-in_new // per_dir))]
    added = [f"{new_dirs[1 + i // per_dir]}/f{i:05d}" for i in range(in_new)]
    existing = [d for d in dirs if free(d, taken)] or [NEW_ROOT]
    added += [f"{rng.choice(existing)}/bench-new-{i:05d}" for i in range(n_files - in_new)]
    symlinks = [
        (f"{rng.choice(existing)}/bench-link-{i:04d}", f"../bench-target-{i:04d}")
        for i in range(n_links)
    ]
    return Plan(
        renamed=[(d, d + ".renamed") for d in renamed],
        opaque=opaque,
        modified=modified,
        chmodded=chmodded,
        deleted=deleted,
        new_dirs=new_dirs,
        added=added,
        symlinks=symlinks,
    )


_VOCAB: list[str] = []


def _vocab() -> list[str]:
    if not _VOCAB:
        r = random.Random(SEED)
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = list(range(26, 0, -1))
        for i in range(2048):
            word = "".join(r.choices(letters, weights, k=r.randint(2, 10)))
            _VOCAB.append(word + ("\n" if i % 16 == 0 else " "))
    return _VOCAB


def _text(r: random.Random, size: int) -> bytes:
    vocab = _vocab()
    idx = array("H", r.randbytes(2 * (size // 3 + 1)))
    return "".join([vocab[i & 2047] for i in idx]).encode()[:size]


def content(rel: str) -> bytes:
    """A new file's bytes: deterministic per path, so both applications write the same."""
    r = random.Random(f"{SEED}:{rel}")
    base = r.choices([s for s, _ in SIZES], [w for _, w in SIZES])[0]
    size = int(base * (0.5 + r.random()))
    return r.randbytes(size) if r.random() < 1 / 3 else _text(r, size)


def appended(rel: str) -> bytes:
    r = random.Random(f"{SEED}:append:{rel}")
    return _text(r, r.randint(100, 4000))


def apply(root: Path, plan: Plan) -> None:
    """Make the change set's changes to the tree at `root` (a mount, or a bundle rootfs)."""
    checked: set[Path] = set()

    def at(rel: str) -> Path:
        """root/rel, refusing a parent that is a symlink (a bundle is on the host)."""
        path = root / rel
        parent = path.parent
        if parent not in checked:
            if os.path.realpath(parent) != str(parent):
                raise RuntimeError(f"changes: {parent} is not a plain directory")
            checked.add(parent)
        return path

    for old, new in plan.renamed:
        os.rename(at(old), at(new))
    for d, names in plan.opaque.items():
        mode = stat.S_IMODE(os.lstat(at(d)).st_mode)
        shutil.rmtree(at(d))
        os.mkdir(at(d), mode)
        for name in names:
            _write(at(f"{d}/{name}"), content(f"{d}/{name}"), os.O_CREAT | os.O_EXCL)
    for rel in plan.deleted:
        os.unlink(at(rel))
    for rel in plan.modified:
        _write(at(rel), appended(rel), os.O_APPEND)
    for rel in plan.chmodded:
        path = at(rel)
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) ^ 0o020)
    for d in plan.new_dirs:
        os.makedirs(at(d), 0o755, exist_ok=True)
    for rel in plan.added:
        _write(at(rel), content(rel), os.O_CREAT | os.O_EXCL)
    for rel, target in plan.symlinks:
        os.symlink(target, at(rel))


def _write(path: Path, data: bytes, flags: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# -- the prepared data ------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    store: Path
    image: str
    lower_dirs: list[Path]
    """The image's layer dirs, top first."""
    upper: Path
    """The template upper dir (copied into every rep's container)."""
    umoci_layout: Path | None
    umoci_bundle: Path | None
    """None where umoci is not installed."""
    changes: int
    counts: dict[str, int]
    upper_bytes: int
    """Regular-file bytes in the upper dir (each inode once): the commit's "upper data"."""
    upper_entries: int
    diff_lines: int
    """What `imgfs diff` listed for the populated container."""

    def summary(self) -> str:
        c = self.counts
        return (
            f"change set: {self.changes:,} changed files = {c['added_files']:,} new files"
            f" + {c['added_symlinks']} new symlinks ({c['new_dirs']} new dirs),"
            f" {c['modified']:,} modified copies of lower files, {c['chmodded']} chmod-ed,"
            f" {c['deleted']:,} deletions (whiteouts), {c['renamed_dirs']} renamed lower dirs,"
            f" {c['opaque_dirs']} opaque dirs holding {c['opaque_new_files']} new files;"
            f" upper dir: {self.upper_entries:,} entries, {self.upper_bytes / 1e6:.1f} MB of"
            f" file data; `imgfs diff` lists {self.diff_lines:,} lines"
        )


def prepare(data: Dataset, quick: bool, log: Any = sys.stderr) -> Prepared:
    n = QUICK_CHANGES if quick else FULL_CHANGES
    cache = cache_dir()
    store = cache / f"changes-store-{data.name}"
    home = cache / f"changes-{data.name}-{n}"
    meta = cache / f"changes-{data.name}-{n}.json"
    image = f"{IMAGE_REPO}:{data.name}"
    cleanup_store(store)
    if meta.is_file():
        doc = json.loads(meta.read_text())
        if doc.get("version") == PLAN_VERSION:
            prepared = _from_json(doc)
            umoci_ok = prepared.umoci_bundle is not None or shutil.which("umoci") is None
            if (
                prepared.upper.is_dir()
                and umoci_ok
                and all(d.is_dir() for d in prepared.lower_dirs)
            ):
                return prepared
    meta.unlink(missing_ok=True)
    log.write(f"benchmarks: building the changes data once ({home})\n")
    t0 = time.monotonic()
    prepared = _build(data, n, quick, store, home, image)
    log.write(f"benchmarks: changes data ready in {time.monotonic() - t0:.1f} s\n")
    doc = {"version": PLAN_VERSION, **_to_json(prepared)}
    meta.write_text(json.dumps(doc, indent=1) + "\n")
    return prepared


def _to_json(p: Prepared) -> dict[str, Any]:
    return {
        "store": str(p.store),
        "image": p.image,
        "lower_dirs": [str(d) for d in p.lower_dirs],
        "upper": str(p.upper),
        "umoci_layout": str(p.umoci_layout) if p.umoci_layout else None,
        "umoci_bundle": str(p.umoci_bundle) if p.umoci_bundle else None,
        "changes": p.changes,
        "counts": p.counts,
        "upper_bytes": p.upper_bytes,
        "upper_entries": p.upper_entries,
        "diff_lines": p.diff_lines,
    }


def _from_json(doc: dict[str, Any]) -> Prepared:
    def opt(key: str) -> Path | None:
        return Path(doc[key]) if doc.get(key) else None

    return Prepared(
        store=Path(doc["store"]),
        image=doc["image"],
        lower_dirs=[Path(d) for d in doc["lower_dirs"]],
        upper=Path(doc["upper"]),
        umoci_layout=opt("umoci_layout"),
        umoci_bundle=opt("umoci_bundle"),
        changes=int(doc["changes"]),
        counts={k: int(v) for k, v in doc["counts"].items()},
        upper_bytes=int(doc["upper_bytes"]),
        upper_entries=int(doc["upper_entries"]),
        diff_lines=int(doc["diff_lines"]),
    )


def imgfs(store: Path, *args: str | Path) -> str:
    return run([*imgfs_command(), "--root", store, *args])


def cleanup_store(store: Path) -> None:
    """What an interrupted run left in the store: containers (and their mounts, which
    were in the scratch dir or the build dir) and committed images."""
    containers = store / "containers"
    if containers.is_dir():
        unmount_under(containers)
        for d in containers.iterdir():
            subprocess.run(
                [*imgfs_command(), "--root", str(store), "rm", "-f", d.name], capture_output=True
            )
        rmtree(containers)
    index = store / "oci" / "index.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        prefix = f"docker.io/{COMMIT_REPO}:"
        tags = [
            name
            for m in doc.get("manifests", [])
            if (name := (m.get("annotations") or {}).get("org.opencontainers.image.ref.name"))
            and name.startswith(prefix)
        ]
        if tags:
            imgfs(store, "rmi", "-f", *tags)


def _build(data: Dataset, n: int, quick: bool, store: Path, home: Path, image: str) -> Prepared:
    from unionfs.containers import lower_dirs_for
    from unionfs.errors import NotFound
    from unionfs.store.images import ImageStore

    images = ImageStore(store)
    try:
        found = images.find(image)
    except (NotFound, FileNotFoundError):
        rmtree(store)
        imgfs(store, "import", "--compression", "gzip", data.tarball, image)
        found = ImageStore(store).find(image)
    lower = lower_dirs_for(images, found.diff_ids)
    plan = choose(members(data.tarball), n, quick)

    unmount_under(home)
    rmtree(home)
    home.mkdir(parents=True)
    cid = imgfs(store, "create", image).strip()
    [cdir] = (store / "containers").glob(cid + "*")
    mnt = home / "mnt"
    mnt.mkdir()
    imgfs(store, "mount", cid, mnt)
    try:
        apply(mnt, plan)
    finally:
        imgfs(store, "umount", mnt)
    mnt.rmdir()
    diff_lines = imgfs(store, "diff", cid).count("\n")
    upper = home / "upper"
    run(["cp", "-a", "--", cdir / "upper", upper])
    imgfs(store, "rm", "-f", cid)
    entries, nbytes = _tree_stats(upper)

    layout = bundle = None
    if shutil.which("umoci"):
        layout, bundle = home / "umoci" / "layout", home / "umoci" / "bundle"
        _umoci_layout(store, found.manifest_digest, layout)
        run(["umoci", "unpack", "--image", f"{layout}:{UMOCI_TAG}", bundle])
        apply(bundle / "rootfs", plan)
    return Prepared(
        store=store,
        image=image,
        lower_dirs=lower,
        upper=upper,
        umoci_layout=layout,
        umoci_bundle=bundle,
        changes=plan.changed_files(),
        counts=plan.counts(),
        upper_bytes=nbytes,
        upper_entries=entries,
        diff_lines=diff_lines,
    )


def _tree_stats(root: Path) -> tuple[int, int]:
    """(entries below root, bytes of its regular files, each inode once)."""
    entries, nbytes, seen = 0, 0, set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_ino not in seen):
                seen.add(st.st_ino)
                nbytes += st.st_size
    return entries, nbytes


def _umoci_layout(store: Path, manifest_digest: str, layout: Path) -> None:
    """An OCI layout holding just the image, tagged UMOCI_TAG (umoci's tags are plain
    names, not the full references the imgfs store keeps)."""
    src = store / "oci" / "blobs" / "sha256"
    dst = layout / "blobs" / "sha256"
    dst.mkdir(parents=True)
    manifest_hex = manifest_digest.removeprefix("sha256:")
    manifest = json.loads((src / manifest_hex).read_bytes())
    for desc in [{"digest": manifest_digest}, manifest["config"], *manifest["layers"]]:
        if desc.get("mediaType", "").endswith("+zstd"):
            raise CommandError("umoci: the image's layers must be gzip-compressed")
        hexd = desc["digest"].removeprefix("sha256:")
        shutil.copyfile(src / hexd, dst / hexd)
    size = (src / manifest_hex).stat().st_size
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": manifest.get(
                    "mediaType", "application/vnd.oci.image.manifest.v1+json"
                ),
                "digest": manifest_digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": UMOCI_TAG},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index) + "\n")
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}\n')
