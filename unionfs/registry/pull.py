"""`imgfs pull`: an image from a registry into the store, verified, staged, then recorded.

Manifest (and, for an index, the platform's manifest), config and layer blobs are each
checked against their digest; layers are unpacked (checking their diff_id) in a staging
dir while others still download (three at a time, as docker does). Blobs and unpacked
layers the store has already are not fetched again. Downloads go to
`tmp/downloads/<hex>.part` first, so an interrupted pull, retried, continues with `Range`
where it stopped. Only when everything is verified do blobs and layers move into the
store and the tag into index.json, in one edit.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from dataclasses import dataclass
from typing import Any

import trio

from unionfs.errors import BadInput, NotFound, RegistryError
from unionfs.progress import LineProgress
from unionfs.reference import Reference
from unionfs.registry.client import run_all, status_error
from unionfs.registry.connect import RegistryOptions, Transfer, client_for
from unionfs.registry.manifests import (
    ACCEPT,
    MAX_MANIFEST,
    ImageManifest,
    Platform,
    check_config,
    checked_manifest,
    media_type_of,
    parse_platform,
    select_platform,
)
from unionfs.registry.sources import BlobSources
from unionfs.store.digests import sha256_digest, short_digest
from unionfs.store.images import Image, ImageStore, json_object
from unionfs.store.layerstore import LayerStore
from unionfs.store.lock import flocked
from unionfs.store.mediatypes import INDEX_TYPES
from unionfs.store.staging import Staging

PARALLEL_DOWNLOADS = 3
MAX_CONFIG = 32 << 20


@dataclass
class PullResult:
    image: Image
    digest: str
    """The digest the registry knows the pulled manifest (or index) by."""
    up_to_date: bool


async def pull(
    store: ImageStore,
    ref: Reference,
    *,
    platform: Platform | None = None,
    options: RegistryOptions | None = None,
    progress: LineProgress | None = None,
) -> PullResult:
    options = options or RegistryOptions()
    progress = progress or LineProgress()
    try:
        async with client_for(ref, options) as client:
            return await _Puller(store, client, ref, progress).run(platform)
    finally:
        with contextlib.suppress(OSError):  # only if empty: keep partial downloads to resume
            os.rmdir(store.paths.tmp / "downloads")


@dataclass
class _Puller(Transfer):
    actions = "pull"

    async def run(self, platform: Platform | None) -> PullResult:
        wanted = self.ref.digest or self.ref.tag or "latest"
        raw, media_type, digest = await self.manifest(wanted, self.ref.digest)
        top_digest = digest
        if media_type in INDEX_TYPES:
            _, index = media_type_of(raw, media_type)
            chosen = select_platform(index, platform or parse_platform(None), str(self.ref))
            raw, media_type, digest = await self.manifest(chosen["digest"], chosen["digest"])
            if media_type in INDEX_TYPES:
                raise BadInput(f"{self.ref}: an index inside an index is not supported")
        _, doc = media_type_of(raw, media_type)
        manifest = checked_manifest(doc, raw, media_type, str(self.ref))
        record_as = self._record_name()
        existing = self._existing(sha256_digest(manifest.raw))
        if existing is not None and record_as in existing.refs:
            return PullResult(existing, top_digest, up_to_date=True)
        config_raw = await self.small_blob(manifest.config, "config", MAX_CONFIG)
        config = json_object(config_raw, f"config of {self.ref}")
        diff_ids = check_config(config, len(manifest.layers), platform, str(self.ref))
        gc_lock = flocked(self.store.paths.locks / "gc", shared=True)
        with gc_lock, Staging(self.store, "pull-") as stage:
            await self.layers(stage, manifest, diff_ids)
            image = await trio.to_thread.run_sync(
                self.install, stage, manifest, config_raw, record_as
            )
        BlobSources(self.store.paths).record(
            self.client.host,
            self.repo,
            [manifest.config["digest"], *(lay["digest"] for lay in manifest.layers)],
        )
        self.progress.finish()
        return PullResult(image, top_digest, up_to_date=False)

    def _record_name(self) -> str:
        """A tag, or `name@digest` for a pull by digest (found again by that reference)."""
        return str(self.ref) if self.ref.digest is None else f"{self.ref.name}@{self.ref.digest}"

    def _existing(self, manifest_digest: str) -> Image | None:
        for image in self.store.images():
            if image.manifest_digest == manifest_digest:
                return image
        return None

    # -- manifests and small blobs -------------------------------------------------------

    async def manifest(self, reference: str, expected: str | None) -> tuple[bytes, str, str]:
        resp = await self.client.request(
            "GET",
            f"/v2/{self.repo}/manifests/{reference}",
            self.scopes,
            headers={"Accept": ACCEPT},
            what=f"fetch the manifest of {self.ref}",
            limit=MAX_MANIFEST,
        )
        if resp.status_code == 404:
            raise NotFound(f"{self.ref}: manifest unknown (no such image or tag)")
        if resp.status_code != 200:
            raise status_error(resp, f"{self.ref}")
        raw = resp.content
        digest = sha256_digest(raw)
        header = resp.headers.get("Docker-Content-Digest")
        claimed = expected or (header if header and header.startswith("sha256:") else None)
        if claimed is not None and claimed != digest:
            raise BadInput(
                f"{self.ref}: the manifest does not match its digest {claimed} (content has "
                f"{digest})"
            )
        media_type, _ = media_type_of(raw, resp.headers.get("Content-Type"))
        return raw, media_type, digest

    async def small_blob(self, d: dict[str, Any], what: str, limit: int) -> bytes:
        digest = d["digest"]
        if self.store.blobs.exists(digest):
            try:
                return self.store.blobs.get(digest)
            except BadInput:
                pass  # a corrupt copy in the store: fetch it again
        resp = await self.client.request(
            "GET",
            f"/v2/{self.repo}/blobs/{digest}",
            self.scopes,
            what=f"fetch the {what} of {self.ref}",
            follow=True,
            limit=limit,
        )
        if resp.status_code != 200:
            raise status_error(resp, f"{what} {digest} of {self.ref}")
        if sha256_digest(resp.content) != digest:
            raise BadInput(
                f"{what} {digest} of {self.ref} does not match its digest (content has "
                f"{sha256_digest(resp.content)})"
            )
        return resp.content

    # -- layers --------------------------------------------------------------------------

    async def layers(self, stage: Staging, manifest: ImageManifest, diff_ids: list[str]) -> None:
        jobs = {}
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
            self.progress.set(short_digest(layer["digest"]), "Waiting")
            jobs[(layer["digest"], diff_id)] = functools.partial(self.layer, stage, layer, diff_id)
        await run_all(list(jobs.values()), PARALLEL_DOWNLOADS)

    async def layer(
        self, stage: Staging, layer: dict[str, Any], diff_id: str, limiter: trio.CapacityLimiter
    ) -> None:
        key = short_digest(layer["digest"])
        have_blob = self.store.blobs.exists(layer["digest"])
        if have_blob and stage.has_layer(diff_id):
            self.progress.set(key, "Already exists")
            return
        if not have_blob:
            async with limiter:
                await self.download(stage, layer, key)
        if not stage.has_layer(diff_id):
            self.progress.set(key, "Extracting")
            blobs = stage.blobs if stage.blobs.exists(layer["digest"]) else self.store.blobs
            unpacker = LayerStore(stage.paths, blobs)
            try:
                await trio.to_thread.run_sync(unpacker.ensure_unpacked, diff_id, layer)
            except BadInput as e:
                raise BadInput(f"{self.ref}: {e}") from None
        self.progress.set(key, "Pull complete")

    async def download(self, stage: Staging, layer: dict[str, Any], key: str) -> None:
        digest, size = layer["digest"], int(layer["size"])
        downloads = self.store.paths.tmp / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        part = downloads / (digest.removeprefix("sha256:") + ".part")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(fd, "r+b") as f:
            # another pull of the same blob holds it: wait for it, then use what it left
            await trio.to_thread.run_sync(fcntl.flock, f.fileno(), fcntl.LOCK_EX)
            if self.store.blobs.exists(digest):
                part.unlink(missing_ok=True)
                return
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                self.progress.bytes(key, "Downloading", done, size)

            resumed = os.fstat(f.fileno()).st_size > 0
            try:
                try:
                    await self.client.download_blob(self.repo, digest, size, f, on_bytes)
                except BadInput:
                    if not resumed:
                        raise
                    done = 0  # what an earlier pull left was bad: start over, once
                    await self.client.download_blob(self.repo, digest, size, f, on_bytes)
            except BadInput:
                part.unlink(missing_ok=True)
                raise
            stage.blobs.adopt(part, digest, size)
        self.progress.set(key, "Download complete")

    # -- install -------------------------------------------------------------------------

    def install(
        self, stage: Staging, manifest: ImageManifest, config_raw: bytes, record_as: str
    ) -> Image:
        self.store.layout.ensure()
        stage.install_layers()
        for layer in manifest.layers:
            stage.adopt_blob(layer["digest"])
        self.store.blobs.put(config_raw)
        blob = self.store.blobs.put(manifest.raw)
        self.store.record([(blob, [record_as])])
        image = self._existing(blob.digest)
        if image is None:
            raise RegistryError(f"{self.ref}: the pulled image vanished from the store")
        return image
