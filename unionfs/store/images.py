"""Images in the store: resolve names, list, tag, remove, and collect garbage.

An image is a manifest in the OCI layout; its ID is the digest of its config (as in
docker). Index entries are the source of truth for tags; blobs nothing references,
and unpacked layers no image uses, are collected after every removal.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unionfs import reference
from unionfs.errors import BadInput, Conflict, InvalidReference, NotFound
from unionfs.reference import Reference
from unionfs.store.atomic import temp_name
from unionfs.store.blobs import BlobRef, BlobStore
from unionfs.store.layout import IndexEntry, Layout
from unionfs.store.lock import flocked
from unionfs.store.mediatypes import INDEX_TYPES, MANIFEST_TYPES, OCI_CONFIG, OCI_MANIFEST
from unionfs.store.paths import StorePaths, default_root

if TYPE_CHECKING:
    from unionfs.store.layerstore import LayerStore


@dataclass
class Image:
    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    config: dict[str, Any]
    refs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config_digest

    @property
    def short_id(self) -> str:
        return self.config_digest.removeprefix("sha256:")[:12]

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("layers") or [])

    @property
    def created(self) -> datetime | None:
        return parse_time(self.config.get("created"))

    @property
    def is_scratch(self) -> bool:
        return self.manifest_digest == ""


def scratch_image() -> Image:
    """The empty image: no layers, usable as the base of a commit."""
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    return Image("", {"schemaVersion": 2, "layers": []}, "", config, [])


def host_architecture() -> str:
    machine = os.uname().machine
    return {
        "x86_64": "amd64",
        "aarch64": "arm64",
        "armv7l": "arm",
        "i686": "386",
        "i386": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> datetime | None:
    """RFC 3339 as Go writes it (nanoseconds, `Z`), which fromisoformat only half accepts."""
    if not isinstance(value, str) or not value:
        return None
    s = value.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits) :]
        s = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def display_ref(ref_name: str) -> tuple[str, str]:
    """(REPOSITORY, TAG) as docker shows them; names other tools wrote are shown raw."""
    try:
        ref = reference.parse(ref_name)
    except InvalidReference:
        return ref_name, "<none>"
    return ref.familiar_name, ref.tag or "<none>"


class ImageStore:
    def __init__(self, root: Path | None = None) -> None:
        self.paths = StorePaths(Path(root) if root is not None else default_root())
        self.blobs = BlobStore(self.paths)
        self.layout = Layout(self.paths)
        self._layers: LayerStore | None = None
        self._cache: dict[str, Image] = {}

    @property
    def layers(self) -> LayerStore:
        """Made on first use: mounting and listing never need the unpacker (zstandard,
        tarfile), and `imgfs mount` starts faster without importing it."""
        if self._layers is None:
            from unionfs.store.layerstore import LayerStore

            self._layers = LayerStore(self.paths, self.blobs)
        return self._layers

    # -- reading ---------------------------------------------------------------

    def _load(self, manifest_digest: str) -> Image:
        if manifest_digest not in self._cache:
            manifest = self._json_blob(manifest_digest, "manifest")
            config_desc = manifest.get("config") or {}
            config_digest = config_desc.get("digest")
            if not isinstance(config_digest, str):
                raise BadInput(f"manifest {manifest_digest} has no config")
            config = self._json_blob(config_digest, "config")
            self._cache[manifest_digest] = Image(manifest_digest, manifest, config_digest, config)
        return self._cache[manifest_digest]

    def _json_blob(self, digest: str, what: str) -> dict[str, Any]:
        return json_object(self.blobs.get(digest), f"{what} {digest}")

    def images(self) -> list[Image]:
        """Every image with its tags, newest first."""
        by_digest: dict[str, Image] = {}
        for entry in self.layout.entries():
            if entry.media_type not in MANIFEST_TYPES:
                continue
            if entry.digest not in by_digest:
                img = self._load(entry.digest)
                by_digest[entry.digest] = Image(
                    img.manifest_digest, img.manifest, img.config_digest, img.config, []
                )
            if entry.ref_name is not None:
                by_digest[entry.digest].refs.append(entry.ref_name)
        epoch = datetime.fromtimestamp(0, UTC)
        return sorted(by_digest.values(), key=lambda i: i.created or epoch, reverse=True)

    def find(self, name: str) -> Image:
        """Resolve a reference, a digest reference or a unique image ID prefix."""
        if name == "scratch":
            return scratch_image()
        images = self.images()
        ref: Reference | None = None
        ref_error: InvalidReference | None = None
        try:
            ref = reference.parse(name)
        except InvalidReference as e:
            ref_error = e
        if ref is not None:
            found = _match_reference(images, ref)
            if found is not None:
                return found
        if reference.is_id_like(name):
            prefix = name.removeprefix("sha256:")
            matches = [i for i in images if i.id.removeprefix("sha256:").startswith(prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Conflict(f"ambiguous image ID prefix {name!r}: matches {len(matches)} images")
        if ref is None and ref_error is not None:
            raise ref_error
        raise NotFound(f"no such image: {name}")

    # -- writing ---------------------------------------------------------------

    def add_image(
        self,
        config: dict[str, Any],
        layers: list[dict[str, Any]],
        ref: Reference | None,
    ) -> Image:
        """Write config and manifest blobs and record the image (tagged, or untagged)."""
        config_blob = self.blobs.put(canonical_json(config))
        manifest_blob = self.blobs.put(oci_manifest(config_blob, layers))
        self.record([(manifest_blob, [str(ref)] if ref is not None else [])])
        return self._load(manifest_blob.digest)

    def record(self, manifests: list[tuple[BlobRef, list[str]]]) -> None:
        """Record stored manifests in index.json under their tags (untagged if none), in
        one edit: the images appear together, or not at all."""
        with self.layout.editing() as entries:
            for blob, ref_names in manifests:
                if not ref_names and not any(e.digest == blob.digest for e in entries):
                    entries.append(descriptor_entry(blob, None))
                for ref_name in ref_names:
                    set_tag(entries, blob, ref_name)

    def tag(self, image: Image, ref: Reference) -> None:
        if image.is_scratch:
            raise BadInput("'scratch' is a reserved name and cannot be tagged")
        size = self.blobs.size(image.manifest_digest)
        with self.layout.editing() as entries:
            set_tag(entries, BlobRef(image.manifest_digest, size), str(ref))

    def remove(self, names: Iterable[str], *, force: bool = False) -> list[str]:
        """docker rmi: untag; delete an image once it has no tag left. Returns report lines."""
        report: list[str] = []
        for name in names:
            report += self.untag_or_delete(name, force)
        self.collect_garbage()
        return report

    def untag_or_delete(self, name: str, force: bool) -> list[str]:
        """One name of `rmi`; the caller collects garbage once afterwards."""
        image = self.find(name)
        if image.is_scratch:
            raise BadInput("'scratch' is the empty image and cannot be removed")
        by_tag = tag_named_by(name, image)
        users = self.containers_using(image.id)
        report: list[str] = []
        with self.layout.editing() as entries:
            mine = [e for e in entries if e.digest == image.manifest_digest]
            tags = [e.ref_name for e in mine if e.ref_name is not None]
            if by_tag is not None and len(tags) > 1:
                entries[:] = [e for e in entries if e.ref_name != by_tag]
                return ["Untagged: {}:{}".format(*display_ref(by_tag))]
            repos = {display_ref(t)[0] for t in tags}
            if len(repos) > 1 and not force:
                raise Conflict(
                    f"unable to delete {image.short_id} (must be forced): "
                    "image is referenced in multiple repositories"
                )
            if users and not force:
                user = users[0] if users[0].startswith("mount") else f"container {users[0][:12]}"
                raise Conflict(
                    f"unable to remove {name}: image {image.short_id} is used by {user} "
                    "(remove the container or unmount it, or use -f)"
                )
            report += ["Untagged: {}:{}".format(*display_ref(t)) for t in tags]
            entries[:] = [e for e in entries if e.digest != image.manifest_digest]
            if users:
                # docker keeps an image a container needs: untag it, keep its content.
                entries.append(descriptor_entry(BlobRef(image.manifest_digest, mine[0].size), None))
            else:
                report.append(f"Deleted: {image.id}")
        return report

    def containers_using(self, image_id: str) -> list[str]:
        """Who needs this image's layers: container records (containers/<id>/config.json)
        built on it, and read-only mounts of it (mounts/*.json, named by their mountpoint)."""
        users = []
        if self.paths.containers.is_dir():
            for d in sorted(self.paths.containers.iterdir()):
                record = _read_json(d / "config.json")
                if record.get("image_id") == image_id:
                    users.append(d.name)
        mounts = self.paths.root / "mounts"
        if mounts.is_dir():
            for f in sorted(mounts.glob("*.json")):
                record = _read_json(f)
                if (record.get("extra") or {}).get("image_id") == image_id:
                    users.append(f"mount at {record.get('mountpoint')}")
        return users

    def collect_garbage(self) -> None:
        """Delete blobs and unpacked layers that no recorded image references."""
        with flocked(self.paths.locks / "gc"):
            live_blobs: set[str] = set()
            live_layers: set[str] = set()
            for entry in self.layout.entries():
                self._mark(entry.digest, entry.media_type, live_blobs, live_layers)
            for digest in list(self.blobs.digests()):
                if digest not in live_blobs:
                    self.blobs.delete(digest)
            if self.paths.layers.is_dir():
                for p in self.paths.layers.iterdir():
                    key = "sha256:" + p.name.removesuffix(".json")
                    if key not in live_layers and not p.name.startswith("."):
                        _remove_path(p, self.paths.tmp)
            self._collect_indexes()

    def _collect_indexes(self) -> None:
        """Drop merged indexes of layer chains no image has any more."""
        if not self.paths.indexes.is_dir():
            return
        from unionfs.index import chain_id

        live = {chain_id(i.diff_ids).removeprefix("sha256:") for i in self.images() if i.diff_ids}
        for p in self.paths.indexes.iterdir():
            if len(p.name) == 64 and p.name not in live:
                _remove_path(p, self.paths.tmp)

    def _mark(self, digest: str, media_type: str, blobs: set[str], layers: set[str]) -> None:
        blobs.add(digest)
        try:
            doc = self._json_blob(digest, "manifest")
        except (NotFound, BadInput):
            return
        if media_type in INDEX_TYPES or "manifests" in doc:
            for child in doc.get("manifests") or []:
                if isinstance(child, dict) and isinstance(child.get("digest"), str):
                    self._mark(child["digest"], child.get("mediaType", ""), blobs, layers)
            return
        config = doc.get("config") or {}
        if isinstance(config.get("digest"), str):
            blobs.add(config["digest"])
            try:
                cfg = self._json_blob(config["digest"], "config")
                layers.update((cfg.get("rootfs") or {}).get("diff_ids") or [])
            except (NotFound, BadInput):
                pass
        for layer in doc.get("layers") or []:
            if isinstance(layer, dict) and isinstance(layer.get("digest"), str):
                blobs.add(layer["digest"])

    def layer_size(self, diff_id: str) -> int | None:
        """Uncompressed size recorded when the layer was unpacked."""
        try:
            return int(json.loads(self.paths.layer_info(diff_id).read_bytes())["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def image_size(self, image: Image) -> int:
        """Uncompressed size, as docker reports it (compressed size where unknown)."""
        total = 0
        for diff_id, layer in zip(image.diff_ids, image.layers, strict=False):
            size = self.layer_size(diff_id)
            total += size if size is not None else int(layer.get("size") or 0)
        return total


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def oci_manifest(config: BlobRef, layers: list[dict[str, Any]]) -> bytes:
    """The OCI manifest of an image whose config and layer blobs are stored."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": layers,
    }
    return canonical_json(doc)


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A manifest, config or index as a dict, or a one-line error naming `what`."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BadInput(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{what} is not a JSON object")
    return doc


def canonical_json(doc: dict[str, Any]) -> bytes:
    """Stable bytes for a document, so the same content always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor_entry(blob: BlobRef, ref_name: str | None) -> IndexEntry:
    return IndexEntry(blob.digest, OCI_MANIFEST, blob.size, ref_name)


def set_tag(entries: list[IndexEntry], blob: BlobRef, ref_name: str) -> None:
    """Point `ref_name` at `blob`; an image that loses its last tag stays, untagged."""
    previous = {e.digest: e.size for e in entries if e.ref_name == ref_name}
    entries[:] = [
        e
        for e in entries
        if e.ref_name != ref_name and not (e.digest == blob.digest and e.ref_name is None)
    ]
    entries.append(descriptor_entry(blob, ref_name))
    for digest, size in previous.items():
        if not any(e.digest == digest for e in entries):
            entries.append(descriptor_entry(BlobRef(digest, size), None))


def _match_reference(images: list[Image], ref: Reference) -> Image | None:
    wanted = str(ref)
    if ref.digest is not None:
        # a pull by digest records `name@digest` (the registry's digest of what was pulled)
        for img in images:
            if img.manifest_digest == ref.digest or wanted in img.refs:
                return img
        return None
    for img in images:
        if wanted in img.refs:
            return img
    return None


def tag_named_by(name: str, image: Image) -> str | None:
    """The full reference `name` is a tag of, or None when it named an ID or a digest."""
    try:
        ref = reference.parse(name)
    except InvalidReference:
        return None
    if ref.tag is None or ref.digest is not None:
        return None
    return str(ref) if str(ref) in image.refs else None


def _remove_path(path: Path, tmp: Path) -> None:
    """Make a layer disappear at once (rename), then delete it at leisure."""
    if path.is_dir() and not path.is_symlink():
        tmp.mkdir(parents=True, exist_ok=True)
        doomed = temp_name(tmp, "rm-")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
