"""Manifests from registries: what to ask for, which platform to take, what to refuse.

Registries serve OCI manifests and indexes and Docker schema-2 manifests and manifest
lists. A Docker manifest is stored as the equivalent OCI manifest (same config and layer
blobs, OCI media types), as `imgfs load` does, so everything in the store is OCI; an OCI
manifest is kept byte for byte, so its digest stays the registry's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unionfs.errors import BadInput
from unionfs.store.digests import check_digest
from unionfs.store.images import canonical_json, host_architecture, json_object
from unionfs.store.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
)

ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
DOCKER_SCHEMA1 = {
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
}
MAX_MANIFEST = 4 << 20
_TO_OCI = {DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_LAYER_TAR: OCI_LAYER_TAR}
_VARIANT_DEFAULTS = {"arm64": "v8"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, doc: dict[str, Any]) -> bool:
        if doc.get("os") != self.os or doc.get("architecture") != self.architecture:
            return False
        if self.variant is None:
            return True
        variant = doc.get("variant") or _VARIANT_DEFAULTS.get(self.architecture)
        return variant == self.variant


def parse_platform(text: str | None) -> Platform:
    """`os/arch[/variant]`; the host's when not given (as docker pull does)."""
    if not text:
        return Platform("linux", host_architecture())
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def media_type_of(raw: bytes, header: str | None) -> tuple[str, dict[str, Any]]:
    """The document and its media type (the body's own field wins over Content-Type)."""
    doc = json_object(raw, "the manifest the registry sent")
    media_type = doc.get("mediaType") or (header or "").split(";")[0].strip()
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise BadInput(
            "unsupported manifest type: Docker schema 1 (deprecated; push the image again "
            "with a current client)"
        )
    if media_type not in MANIFEST_TYPES | INDEX_TYPES:
        raise BadInput(f"unsupported manifest type {media_type!r}")
    return media_type, doc


def select_platform(index: dict[str, Any], platform: Platform, what: str) -> dict[str, Any]:
    """The descriptor of `platform`'s image in an index (the first match, as docker)."""
    found = []
    for d in index.get("manifests") or []:
        if not isinstance(d, dict):
            continue
        p = d.get("platform") if isinstance(d.get("platform"), dict) else {}
        if d.get("mediaType", OCI_MANIFEST) in MANIFEST_TYPES and platform.matches(p):
            check_digest(d.get("digest"))
            return d
        if p.get("os") and p.get("os") != "unknown":
            found.append(str(Platform(p["os"], p.get("architecture", "?"), p.get("variant"))))
    available = ", ".join(dict.fromkeys(found)) or "none"
    raise BadInput(f"{what} has no image for platform {platform} (available: {available})")


@dataclass
class ImageManifest:
    """A manifest ready to store: its bytes, its config and its layer descriptors."""

    raw: bytes
    config: dict[str, Any]
    layers: list[dict[str, Any]]


def checked_manifest(doc: dict[str, Any], raw: bytes, media_type: str, what: str) -> ImageManifest:
    """Refuse manifests the store cannot use; convert a Docker one to OCI."""
    config = doc.get("config")
    if not isinstance(config, dict):
        raise BadInput(f"manifest of {what} has no config descriptor")
    _check_descriptor(config, f"config of {what}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BadInput(f"manifest of {what} has no layer list")
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise BadInput(f"layer {i} of {what} is not a descriptor")
        _check_descriptor(layer, f"layer {i} of {what}")
        if layer.get("mediaType") not in LAYER_TYPES:
            raise BadInput(
                f"layer {i} of {what} has unsupported media type {layer.get('mediaType')!r}"
            )
    if media_type == OCI_MANIFEST:
        return ImageManifest(raw, config, list(layers))
    oci_layers = [
        {**lay, "mediaType": _TO_OCI.get(lay["mediaType"], lay["mediaType"])} for lay in layers
    ]
    oci_config = {
        **config,
        "mediaType": OCI_CONFIG
        if config.get("mediaType") in (DOCKER_CONFIG, None)
        else config["mediaType"],
    }
    converted = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": oci_config,
        "layers": oci_layers,
    }
    return ImageManifest(canonical_json(converted), oci_config, oci_layers)


def _check_descriptor(d: dict[str, Any], what: str) -> None:
    check_digest(d.get("digest"))
    size = d.get("size")
    if not isinstance(size, int) or size < 0:
        raise BadInput(f"{what} has an invalid size {size!r}")
    if d.get("urls"):
        raise BadInput(f"{what} is a foreign layer (served from other URLs), not supported")


def check_config(
    config: dict[str, Any], layer_count: int, platform: Platform | None, what: str
) -> list[str]:
    """The config's diff_ids (one per layer); a config for another platform is refused
    when the user asked for a platform explicitly."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        raise BadInput(f"config of {what} does not list one diff_id per layer")
    for d in diff_ids:
        check_digest(d)
    if platform is not None and not platform.matches(config):
        got = Platform(
            str(config.get("os")), str(config.get("architecture")), config.get("variant")
        )
        raise BadInput(f"{what} is an image for {got}, not {platform}")
    return [str(d) for d in diff_ids]
