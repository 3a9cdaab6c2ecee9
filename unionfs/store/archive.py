"""`imgfs save` and `imgfs load`: images in and out of the store as single archive files.

Save writes an OCI archive: a tar of an OCI image layout (`oci-layout`, `index.json`,
`blobs/sha256/…`) in which every named image's manifest descriptor carries its full
normalized reference as `org.opencontainers.image.ref.name` (so `skopeo copy
oci-archive:FILE:docker.io/library/busybox:latest …` selects it, and two repositories with
the same tag never collide) and as `io.containerd.image.name` (what docker and containerd
read first). A `manifest.json` in docker's format sits beside it, as `docker save` (25+)
writes one, so docker's own `load` takes the archive too. Headers are deterministic (mode,
owner, mtime 0) and blobs are streamed from the store, verified as they pass.

Load takes OCI archives (skopeo's `oci-archive:`, docker 25+'s `docker save`, ours) and
docker-save archives (`manifest.json` with Config/RepoTags/Layers: legacy `docker save`,
skopeo's `docker-archive:`), as plain tar or gzip/zstd/xz/bzip2-compressed tar, from a
file or a pipe. The archive is read in one streaming pass: every regular member is copied
into a staging store under `tmp/` (same filesystem, so installing is a rename), named by
its content digest, which checks each `blobs/sha256/<hex>` member against its name as it
arrives. Random access (docker archives list manifest.json last) then costs no memory.
Everything is verified and every new layer is unpacked in staging before anything is
installed; a failure removes the staging dir and leaves the store exactly as it was.

Docker layers are tars (possibly compressed) whose uncompressed digest is the diff_id;
they go through `LayerStore.import_tar`, the same path as `imgfs import`, so they become
zstd blobs and unpacked layers exactly like imports. OCI layers are kept as the blobs
they are (and unpacked, checking blob digest and diff_id). Configs are kept byte for
byte, so an image keeps its ID.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from unionfs import reference
from unionfs.errors import BadInput, InvalidReference, NotFound
from unionfs.layers.compression import open_decompressed
from unionfs.layers.unpack import next_member, open_tar_stream
from unionfs.reference import Reference
from unionfs.store.blobs import BlobRef
from unionfs.store.digests import HashingReader, check_digest
from unionfs.store.images import (
    Image,
    ImageStore,
    host_architecture,
    oci_manifest,
    tag_named_by,
)
from unionfs.store.layerstore import StoredLayer
from unionfs.store.lock import flocked
from unionfs.store.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    LAYER_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
)
from unionfs.store.staging import Staging

__all__ = ["LoadResult", "load_archive", "save_images"]

CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"
CHUNK = 1 << 20
MAX_JSON = 32 << 20
"""Largest manifest, config or index read into memory (real ones are kilobytes)."""
MAX_SYMLINK_HOPS = 40
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_DIGEST_NAME = re.compile(r"(?:.*/)?(?:sha256:)?([0-9a-f]{64})(?:\.json|\.tar)?")
# OCI equivalents of docker schema 2 media types, for manifests converted on load.
_TO_OCI = {
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_TAR: OCI_LAYER_TAR,
    DOCKER_CONFIG: OCI_CONFIG,
}

_SPECIAL_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}

ByteCounter = Callable[[int], None]


# -- save ---------------------------------------------------------------------------------


@dataclass
class _Saved:
    image: Image
    ref_names: list[str] = field(default_factory=list)


def save_images(
    store: ImageStore, names: list[str], out: BinaryIO, on_bytes: ByteCounter | None = None
) -> int:
    """Write an OCI archive of the images `names` to `out`; returns the bytes of blobs.

    The shared gc lock is held throughout, so no blob is collected while it is read.
    """
    if not names:
        raise BadInput("nothing to save: name at least one image")
    with flocked(store.paths.locks / "gc", shared=True):
        saved = _resolve_for_save(store, names)
        blobs = _blob_list(store, saved)
        writer = _TarWriter(out)
        writer.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        writer.add_bytes("index.json", _archive_index(store, saved))
        writer.add_bytes("manifest.json", _docker_manifest(saved))
        writer.add_dir("blobs")
        writer.add_dir("blobs/sha256")
        total = 0
        for digest, size in blobs:
            with store.blobs.open(digest) as f:
                reader = HashingReader(_Counting(f, on_bytes))
                writer.add_file(f"blobs/sha256/{digest.removeprefix('sha256:')}", size, reader)
            if reader.digest != digest or reader.count != size:
                raise BadInput(
                    f"blob {digest} in the store is corrupt (its content does not match its "
                    "digest); the archive is incomplete"
                )
            total += size
        writer.close()
    return total


def _resolve_for_save(store: ImageStore, names: list[str]) -> list[_Saved]:
    """Images in the order first named; each with the tags it was named by."""
    by_manifest: dict[str, _Saved] = {}
    for name in names:
        image = store.find(name)
        if image.is_scratch:
            raise BadInput("'scratch' is the empty image and cannot be saved")
        entry = by_manifest.setdefault(image.manifest_digest, _Saved(image))
        ref_name = tag_named_by(name, image)
        if ref_name is not None and ref_name not in entry.ref_names:
            entry.ref_names.append(ref_name)
    return list(by_manifest.values())


def _blob_list(store: ImageStore, saved: list[_Saved]) -> list[tuple[str, int]]:
    """(digest, size) of every blob, each once: per image manifest, config, layers."""
    seen: dict[str, int] = {}
    for s in saved:
        image = s.image
        digests = [image.manifest_digest, image.config_digest]
        digests += [str(layer.get("digest")) for layer in image.layers]
        for digest in digests:
            if digest in seen:
                continue
            check_digest(digest)
            try:
                seen[digest] = store.blobs.size(digest)
            except NotFound:
                raise NotFound(
                    f"blob {digest} of image {image.short_id} is missing from the store"
                ) from None
    return list(seen.items())


def _archive_index(store: ImageStore, saved: list[_Saved]) -> str:
    manifests = []
    for s in saved:
        image = s.image
        descriptor = {
            "mediaType": str(image.manifest.get("mediaType") or OCI_MANIFEST),
            "digest": image.manifest_digest,
            "size": store.blobs.size(image.manifest_digest),
        }
        if not s.ref_names:
            manifests.append(descriptor)
        for ref_name in s.ref_names:
            annotations = {REF_NAME_ANNOTATION: ref_name, CONTAINERD_NAME_ANNOTATION: ref_name}
            manifests.append({**descriptor, "annotations": annotations})
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _docker_manifest(saved: list[_Saved]) -> str:
    """docker's manifest.json, pointing into the same blobs (as docker 25+ writes it)."""
    entries = []
    for s in saved:
        entries.append(
            {
                "Config": _blob_path(s.image.config_digest),
                "RepoTags": [reference.parse(r).familiar() for r in s.ref_names] or None,
                "Layers": [_blob_path(str(layer["digest"])) for layer in s.image.layers],
            }
        )
    return json.dumps(entries, separators=(",", ":"))


def _blob_path(digest: str) -> str:
    return f"blobs/sha256/{check_digest(digest).removeprefix('sha256:')}"


class _Counting:
    """Reports the bytes read through it."""

    def __init__(self, raw: BinaryIO, on_bytes: ByteCounter | None) -> None:
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data


class _TarWriter:
    """A streamed tar with deterministic headers: root-owned, mtime 0, fixed modes."""

    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, copybufsize=CHUNK
        )

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_dir(self, name: str) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, 0o755))

    def add_bytes(self, name: str, text: str) -> None:
        data = text.encode()
        self.add_file(name, len(data), _BytesReader(data))

    def add_file(self, name: str, size: int, source: Any) -> None:
        try:
            self.tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, size), source)
        except OSError as e:
            if "unexpected end of data" in str(e):
                raise BadInput(f"{name} shrank while it was being saved") from None
            raise

    def close(self) -> None:
        self.tar.close()


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self.data)
        chunk, self.data = self.data[:n], self.data[n:]
        return bytes(chunk)


# -- load: staging ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """A regular member of the archive, staged as the blob `digest` of the staging store."""

    digest: str
    size: int


class _Stage(Staging):
    """The archive's members, read once, staged content-addressed under the store's tmp/."""

    def __init__(self, store: ImageStore) -> None:
        super().__init__(store, "load-")
        self.files: dict[str, _Member] = {}
        self.links: dict[str, str] = {}
        """Symlink and hard-link members: name → the member name they resolve to."""

    # reading the archive

    def read(self, source: BinaryIO) -> None:
        _, plain = open_decompressed(source)
        tar = open_tar_stream(plain)
        try:
            while (member := next_member(tar)) is not None:
                tar.members.clear()
                self._add(tar, member)
        finally:
            tar.close()
        while plain.read(CHUNK):  # a compressed archive is checked to its end
            pass

    def _add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _member_name(member.name)
        if name == "" and member.isdir():
            return
        if name in self.files or name in self.links:
            raise BadInput(f"corrupt archive: entry {member.name!r} appears twice")
        if member.isdir():
            return
        if member.issym():
            if member.linkname.startswith("/"):
                raise BadInput(
                    f"unsafe entry {member.name!r} in archive: absolute symlink {member.linkname!r}"
                )
            self.links[name] = _link_target(name, member.linkname)
        elif member.islnk():
            target = _member_name(member.linkname, what=f"hard link {member.name!r}")
            if target not in self.files and target not in self.links:
                raise BadInput(
                    f"corrupt archive: hard link {member.name!r} to missing {member.linkname!r}"
                )
            self.links[name] = target
        elif member.isreg():
            self.files[name] = self._stage_file(tar, member, name)
        else:
            kind = _SPECIAL_TYPES.get(member.type, f"type {member.type.decode(errors='replace')}")
            raise BadInput(
                f"unexpected entry {member.name!r} in archive (a {kind}): "
                "image archives hold only files, directories and links"
            )

    def _stage_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> _Member:
        source = tar.extractfile(member)
        assert source is not None
        with self.blobs.writer() as w:
            try:
                while chunk := source.read(CHUNK):
                    w.write(chunk)
            except tarfile.ReadError as e:
                raise BadInput(f"truncated archive: {e} in entry {member.name!r}") from None
            except (tarfile.TarError, EOFError) as e:
                raise BadInput(f"corrupt archive: {e} in entry {member.name!r}") from None
            if w.count != member.size:
                raise BadInput(f"truncated archive: entry {member.name!r} is incomplete")
            blob = w.commit()
        match = _BLOB_NAME.fullmatch(name)
        if match and blob.digest != "sha256:" + match.group(1):
            raise BadInput(
                f"corrupt archive: {name} does not match its digest (content has {blob.digest})"
            )
        return _Member(blob.digest, blob.size)

    # looking members up

    def lookup(self, name: str, what: str) -> _Member:
        """The member `name` (a path inside the archive, as a manifest names it)."""
        if not isinstance(name, str) or not name:
            raise BadInput(f"corrupt archive: {what} has no file name")
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "\x00" in name:
            raise BadInput(f"unsafe archive: {what} ({name!r}) points outside the archive")
        key = _member_name(name)
        member = self.resolve(key)
        if member is None:
            raise BadInput(f"corrupt archive: {what} {name!r} is missing from the archive")
        return member

    def resolve(self, key: str) -> _Member | None:
        """The regular member a normalized name is, or links to; None if there is none."""
        for _ in range(MAX_SYMLINK_HOPS):
            if key in self.files:
                return self.files[key]
            if key not in self.links:
                return None
            key = self.links[key]
        raise BadInput(f"corrupt archive: {key!r} is a symlink loop")

    def blob(self, digest: object, what: str, size: object = None) -> _Member:
        """The `blobs/sha256/<hex>` member of an OCI descriptor's digest (and size)."""
        if not isinstance(digest, str):
            raise BadInput(f"corrupt archive: {what} has no digest")
        try:
            check_digest(digest)
        except BadInput:
            raise BadInput(f"corrupt archive: {what} has an invalid digest {digest!r}") from None
        member = self.resolve(_blob_path(digest))
        if member is None:
            raise BadInput(f"corrupt archive: blob {digest} ({what}) is missing from the archive")
        if member.digest != digest:  # a link to another member
            raise BadInput(f"corrupt archive: blob {digest} does not match its digest")
        if size is not None and (not isinstance(size, int) or size != member.size):
            raise BadInput(
                f"corrupt archive: blob {digest} ({what}) has {member.size} bytes, "
                f"its descriptor says {size}"
            )
        return member

    def json(self, member: _Member, what: str) -> tuple[dict[str, Any] | list[Any], bytes]:
        if member.size > MAX_JSON:
            raise BadInput(f"corrupt archive: {what} is too large ({member.size} bytes)")
        data = self.blobs.path(member.digest).read_bytes()
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise BadInput(f"corrupt archive: {what} is not valid JSON: {e}") from None
        if not isinstance(doc, dict | list):
            raise BadInput(f"corrupt archive: {what} is not a JSON object")
        return doc, data


def _link_target(name: str, target: str) -> str:
    """The member a relative symlink points to, resolved lexically inside the archive
    (skopeo's `<id>/layer.tar -> ../<digest>.tar`); refuses targets outside it."""
    parts = name.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BadInput(
                    f"unsafe entry {name!r} in archive: symlink {target!r} points outside "
                    "the archive"
                )
            parts.pop()
        else:
            parts.append(part)
    return _member_name("/".join(parts), what=f"symlink {name!r} to {target!r}")


def _member_name(name: str, *, what: str = "") -> str:
    """A member name normalized ("./a//b" → "a/b"); refuses absolute names and `..`."""
    label = what or f"entry {name!r}"
    if "\x00" in name:
        raise BadInput(f"unsafe {label} in archive: NUL byte in name")
    if name.startswith("/"):
        raise BadInput(f"unsafe {label} in archive: absolute name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadInput(f"unsafe {label} in archive: has a .. component")
    return "/".join(parts)


# -- load: what the archive holds ---------------------------------------------------------


@dataclass
class _LayerPlan:
    diff_id: str
    member: _Member
    descriptor: dict[str, Any] | None
    """The OCI descriptor of a layer kept as its blob; None for docker layer tars."""


@dataclass
class _ImagePlan:
    config: dict[str, Any]
    config_member: _Member
    layers: list[_LayerPlan]
    manifest: bytes | None
    """An OCI manifest kept byte for byte (its blob), or None to write our own."""
    refs: list[Reference] = field(default_factory=list)
    label: str = ""


@dataclass
class LoadResult:
    image: Image
    refs: list[Reference]


def _oci_plans(stage: _Stage, warnings: list[str]) -> list[_ImagePlan]:
    layout_member = stage.resolve("oci-layout")
    if layout_member is None:
        raise BadInput("not an OCI archive: it has index.json but no oci-layout")
    layout, _ = stage.json(layout_member, "oci-layout")
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        raise BadInput(f"unsupported OCI layout version {version!r} in oci-layout")
    index, _ = stage.json(stage.lookup("index.json", "index.json"), "index.json")
    descriptors = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(descriptors, list) or not descriptors:
        raise BadInput("corrupt archive: index.json lists no images")
    plans: dict[str, _ImagePlan] = {}
    order: list[str] = []
    for i, d in enumerate(descriptors):
        if not isinstance(d, dict):
            raise BadInput(f"corrupt archive: index.json entry {i} is not an object")
        d = _platform_manifest(stage, d, f"index.json entry {i}")
        digest = d.get("digest")
        if not isinstance(digest, str) or digest not in plans:
            plan = _oci_image(stage, d, f"image {digest}")
            digest = str(digest)
            plans[digest] = plan
            order.append(digest)
        name = _descriptor_name(d)
        if name is not None:
            ref = _parse_name(name, warnings)
            if ref is not None and ref not in plans[digest].refs:
                plans[digest].refs.append(ref)
    return [plans[d] for d in order]


def _platform_manifest(stage: _Stage, d: dict[str, Any], what: str) -> dict[str, Any]:
    """`d` itself, or for an image index, the manifest for this host's platform (keeping
    the index's name annotations)."""
    media_type = d.get("mediaType")
    if media_type not in INDEX_TYPES:
        return d
    index, _ = stage.json(stage.blob(d.get("digest"), what, d.get("size")), what)
    children = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(children, list):
        raise BadInput(f"corrupt archive: image index {d.get('digest')} lists no manifests")
    arch = host_architecture()
    images = [c for c in children if isinstance(c, dict) and c.get("mediaType") not in INDEX_TYPES]
    matching = [
        c
        for c in images
        if (c.get("platform") or {}).get("os") == "linux"
        and (c.get("platform") or {}).get("architecture") == arch
    ]
    if not matching and len(images) == 1:
        matching = images
    if not matching:
        raise BadInput(f"image index {d.get('digest')} has no manifest for linux/{arch}")
    chosen = dict(matching[0])
    if d.get("annotations"):
        chosen["annotations"] = {**(chosen.get("annotations") or {}), **d["annotations"]}
    return chosen


def _descriptor_name(d: dict[str, Any]) -> str | None:
    annotations = d.get("annotations")
    if not isinstance(annotations, dict):
        return None
    for key in (CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION):
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _parse_name(name: str, warnings: list[str]) -> Reference | None:
    try:
        ref = reference.parse(name)
    except InvalidReference as e:
        warnings.append(f"ignoring the name {name!r} in the archive: {e}")
        return None
    if ref.digest is not None:
        return None  # a digest is not a tag
    return ref


def _oci_image(stage: _Stage, d: dict[str, Any], what: str) -> _ImagePlan:
    media_type = d.get("mediaType")
    if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
        raise BadInput(f"unsupported media type {media_type!r} of {what} in index.json")
    member = stage.blob(d.get("digest"), f"manifest of {what}", d.get("size"))
    manifest, raw = stage.json(member, f"manifest {d['digest']}")
    if not isinstance(manifest, dict):
        raise BadInput(f"corrupt archive: manifest {d['digest']} is not a JSON object")
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise BadInput(f"corrupt archive: manifest {d['digest']} has no config")
    config_member = stage.blob(
        config_desc.get("digest"), f"config of {what}", config_desc.get("size")
    )
    config = _config(stage, config_member, f"config {config_desc.get('digest')}")
    layer_descs = manifest.get("layers")
    if not isinstance(layer_descs, list):
        raise BadInput(f"corrupt archive: manifest {d['digest']} has no layer list")
    diff_ids = _diff_ids(config, len(layer_descs), f"config {config_desc.get('digest')}")
    layers = []
    for i, (layer, diff_id) in enumerate(zip(layer_descs, diff_ids, strict=True)):
        if not isinstance(layer, dict):
            raise BadInput(f"corrupt archive: layer {i} of {what} is not an object")
        if layer.get("mediaType") not in LAYER_TYPES:
            raise BadInput(
                f"layer {layer.get('digest')} of {what} has unsupported media type "
                f"{layer.get('mediaType')!r}"
            )
        layer_member = stage.blob(layer.get("digest"), f"layer {i} of {what}", layer.get("size"))
        descriptor = {k: v for k, v in layer.items() if k != "mediaType"}
        descriptor["mediaType"] = _TO_OCI.get(layer["mediaType"], layer["mediaType"])
        layers.append(_LayerPlan(diff_id, layer_member, descriptor))
    keep = raw if manifest.get("mediaType", OCI_MANIFEST) == OCI_MANIFEST else None
    return _ImagePlan(config, config_member, layers, keep, label=what)


def _config(stage: _Stage, member: _Member, what: str) -> dict[str, Any]:
    config, _ = stage.json(member, what)
    if not isinstance(config, dict):
        raise BadInput(f"corrupt archive: {what} is not a JSON object")
    return config


def _diff_ids(config: dict[str, Any], count: int, what: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise BadInput(f"corrupt archive: {what} has no rootfs.diff_ids")
    if len(diff_ids) != count:
        raise BadInput(f"corrupt archive: {what} lists {len(diff_ids)} diff_ids for {count} layers")
    for diff_id in diff_ids:
        if not isinstance(diff_id, str):
            raise BadInput(f"corrupt archive: {what} has an invalid diff_id {diff_id!r}")
        try:
            check_digest(diff_id)
        except BadInput:
            raise BadInput(f"corrupt archive: {what} has an invalid diff_id {diff_id!r}") from None
    return diff_ids


def _docker_plans(stage: _Stage, warnings: list[str]) -> list[_ImagePlan]:
    doc, _ = stage.json(stage.lookup("manifest.json", "manifest.json"), "manifest.json")
    if not isinstance(doc, list) or not doc:
        raise BadInput("corrupt archive: manifest.json lists no images")
    plans = []
    for i, entry in enumerate(doc):
        what = f"image {i} of manifest.json"
        if not isinstance(entry, dict):
            raise BadInput(f"corrupt archive: {what} is not an object")
        config_name = entry.get("Config")
        config_member = stage.lookup(config_name, f"the config of {what}")
        _check_named_digest(config_name, config_member, f"config {config_name!r}")
        config = _config(stage, config_member, f"config {config_name!r}")
        layer_names = entry.get("Layers")
        if not isinstance(layer_names, list):
            raise BadInput(f"corrupt archive: {what} has no Layers list")
        diff_ids = _diff_ids(config, len(layer_names), f"config {config_name!r}")
        layers = []
        for j, (layer_name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True)):
            member = stage.lookup(layer_name, f"layer {j} of {what}")
            layers.append(_LayerPlan(diff_id, member, None))
        plan = _ImagePlan(config, config_member, layers, None, label=what)
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list):
            raise BadInput(f"corrupt archive: RepoTags of {what} is not a list")
        for tag in tags:
            ref = _parse_name(tag, warnings) if isinstance(tag, str) else None
            if ref is not None and ref not in plan.refs:
                plan.refs.append(ref)
        plans.append(plan)
    return plans


def _check_named_digest(name: str, member: _Member, what: str) -> None:
    """A config named by its digest (`<hex>.json`, `blobs/sha256/<hex>`) must have it."""
    match = _DIGEST_NAME.fullmatch(name)
    if match and member.digest != "sha256:" + match.group(1):
        raise BadInput(
            f"corrupt archive: {what} does not match its digest (content has {member.digest})"
        )


# -- load: verify, unpack, install --------------------------------------------------------


@dataclass
class _Prepared:
    plan: _ImagePlan
    existing: Image | None
    layers: list[dict[str, Any]] = field(default_factory=list)
    """Manifest layer descriptors (for a new image)."""


def load_archive(
    store: ImageStore, source: BinaryIO, warn: Callable[[str], None] | None = None
) -> list[LoadResult]:
    """Load every image of an archive; the store is unchanged if anything is wrong."""
    warnings: list[str] = []
    with flocked(store.paths.locks / "gc", shared=True), _staging(store) as stage:
        stage.read(source)
        if stage.resolve("index.json") is not None:
            plans = _oci_plans(stage, warnings)
        elif stage.resolve("manifest.json") is not None:
            plans = _docker_plans(stage, warnings)
        else:
            raise BadInput(
                "not an image archive: it has neither index.json (OCI) nor manifest.json "
                "(docker save)"
            )
        prepared = _prepare(store, stage, plans)
        results = _install(store, stage, prepared)
    if warn is not None:
        for w in warnings:
            warn(w)
    return results


@contextmanager
def _staging(store: ImageStore) -> Iterator[_Stage]:
    stage = _Stage(store)
    try:
        yield stage
    finally:
        stage.remove()


def _prepare(store: ImageStore, stage: _Stage, plans: list[_ImagePlan]) -> list[_Prepared]:
    """Check every layer against its diff_id and unpack new ones in staging."""
    by_id: dict[str, Image] = {}
    for image in store.images():
        # prefer a tagged image if several manifests share one config
        if image.id not in by_id or (image.refs and not by_id[image.id].refs):
            by_id[image.id] = image
    done: dict[tuple[str, str, bool], StoredLayer | None] = {}
    prepared = []
    for plan in plans:
        existing = by_id.get(plan.config_member.digest)
        p = _Prepared(plan, existing)
        for i, layer in enumerate(plan.layers):
            key = (layer.diff_id, layer.member.digest, existing is None)
            if key not in done:
                try:
                    done[key] = _prepare_layer(store, stage, layer, unpack=existing is None)
                except BadInput as e:
                    raise BadInput(f"layer {i} of {plan.label}: {e}") from None
            stored = done[key]
            if layer.descriptor is not None:
                p.layers.append(layer.descriptor)
            elif stored is not None:
                p.layers.append(stored.descriptor())
        prepared.append(p)
    return prepared


def _prepare_layer(
    store: ImageStore, stage: _Stage, layer: _LayerPlan, *, unpack: bool
) -> StoredLayer | None:
    if layer.descriptor is not None:  # an OCI layer, kept as its blob
        if unpack and not stage.has_layer(layer.diff_id):
            stage.layers.ensure_unpacked(layer.diff_id, layer.descriptor)
        else:
            _check_diff_id(stage, layer)
        return None
    if not unpack:  # the image is in the store already: only check the archive's copy
        _check_diff_id(stage, layer)
        return None
    with stage.blobs.open(layer.member.digest) as f:
        stored = stage.layers.import_tar(f)
    if stored.diff_id != layer.diff_id:
        raise BadInput(
            f"corrupt archive: the layer's tar has digest {stored.diff_id}, but its config "
            f"gives the diff_id {layer.diff_id}"
        )
    return stored


def _check_diff_id(stage: _Stage, layer: _LayerPlan) -> None:
    """The member decompresses to a tar whose digest is the layer's diff_id."""
    with stage.blobs.open(layer.member.digest) as f:
        _, plain = open_decompressed(f)
        tar = HashingReader(plain)
        while tar.read(CHUNK):
            pass
    if tar.digest != layer.diff_id:
        raise BadInput(
            f"corrupt archive: the layer's tar has digest {tar.digest}, but its config "
            f"gives the diff_id {layer.diff_id}"
        )


def _install(store: ImageStore, stage: _Stage, prepared: list[_Prepared]) -> list[LoadResult]:
    """Move staged blobs and layers into the store and record the images (one index edit)."""
    store.layout.ensure()
    stage.install_layers()
    records: list[tuple[_Prepared, BlobRef]] = []
    for p in prepared:
        if p.existing is not None:
            size = store.blobs.size(p.existing.manifest_digest)
            records.append((p, BlobRef(p.existing.manifest_digest, size)))
            continue
        for layer in p.layers:
            stage.adopt_blob(str(layer["digest"]))
        config = stage.adopt_blob(p.plan.config_member.digest)
        raw = p.plan.manifest if p.plan.manifest is not None else oci_manifest(config, p.layers)
        records.append((p, store.blobs.put(raw)))
    store.record([(manifest, [str(r) for r in p.plan.refs]) for p, manifest in records])
    images = {i.manifest_digest: i for i in store.images()}
    return [LoadResult(images[manifest.digest], list(p.plan.refs)) for p, manifest in records]
