"""`imgfs push`: an image from the store to a registry.

Each blob is first checked with HEAD (a registry that has it needs nothing), then mounted
from another repository of the same registry where a pull or push saw it (no bytes
move), and only then uploaded: monolithically (POST, then one PUT) or, above the chunk
size, in PATCH chunks closed by a PUT. The manifest goes last, under the tag, so the tag
never points at missing blobs. Layers keep their media type (our zstd layers stay zstd);
`--compression gzip` recompresses zstd layers (deterministically: same input, same
digest) for registries and clients that predate zstd.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from unionfs.errors import BadInput, RegistryError
from unionfs.layers.compression import Compression, open_decompressed
from unionfs.progress import LineProgress
from unionfs.reference import Reference
from unionfs.registry.client import run_all, status_error
from unionfs.registry.connect import RegistryOptions, Transfer, client_for
from unionfs.registry.sources import BlobSources
from unionfs.store.atomic import temp_name
from unionfs.store.digests import HashingWriter, sha256_digest, short_digest
from unionfs.store.images import Image, ImageStore, canonical_json
from unionfs.store.layerstore import compressing_writer
from unionfs.store.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST

CHUNK_SIZE = 64 << 20
"""Blobs larger than this go up in PATCH chunks of this size."""
PARALLEL_UPLOADS = 3
READ = 1 << 20


@dataclass
class PushResult:
    digest: str
    size: int


@dataclass
class _Blob:
    descriptor: dict[str, Any]
    path: Path

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])

    @property
    def size(self) -> int:
        return int(self.descriptor["size"])


async def push(
    store: ImageStore,
    image: Image,
    ref: Reference,
    *,
    options: RegistryOptions | None = None,
    compression: Compression | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: LineProgress | None = None,
) -> PushResult:
    if image.is_scratch:
        raise BadInput("'scratch' is the empty image and cannot be pushed")
    if ref.digest is not None:
        raise BadInput(f"cannot push to a digest reference: {ref}")
    options = options or RegistryOptions()
    progress = progress or LineProgress()
    store.paths.tmp.mkdir(parents=True, exist_ok=True)
    scratch = temp_name(store.paths.tmp, "push-")
    scratch.mkdir(mode=0o700)
    try:
        manifest, blobs = await _prepare(store, image, compression, scratch)
        async with client_for(ref, options) as client:
            pusher = _Pusher(store, client, ref, progress, chunk_size)
            await pusher.blobs(blobs)
            digest = await pusher.manifest(manifest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    BlobSources(store.paths).record(client.host, ref.path, [b.digest for b in blobs])
    progress.finish()
    return PushResult(digest, len(manifest))


async def _prepare(
    store: ImageStore, image: Image, compression: Compression | None, scratch: Path
) -> tuple[bytes, list[_Blob]]:
    """The manifest bytes to push and the blobs it needs (recompressed if asked)."""
    config = image.manifest["config"]
    blobs = [_Blob(config, store.blobs.path(config["digest"]))]
    layers = []
    for layer in image.layers:
        path = store.blobs.path(layer["digest"])
        if not path.is_file():
            raise BadInput(f"layer {layer['digest']} of {image.short_id} is missing from the store")
        if compression is Compression.GZIP and layer.get("mediaType") == OCI_LAYER_ZSTD:
            layer = await trio.to_thread.run_sync(_gzip_copy, path, scratch)
            path = scratch / layer["digest"].removeprefix("sha256:")
        layers.append(layer)
        blobs.append(_Blob(layer, path))
    if layers == image.layers:
        raw = store.blobs.get(image.manifest_digest)
    else:
        doc = {**image.manifest, "mediaType": OCI_MANIFEST, "layers": layers}
        raw = canonical_json(doc)
    unique = {b.digest: b for b in blobs}
    return raw, list(unique.values())


def _gzip_copy(path: Path, scratch: Path) -> dict[str, Any]:
    tmp = temp_name(scratch, "gz-")
    with open(path, "rb") as src, open(tmp, "xb") as out:
        hashed = HashingWriter(out)
        _, plain = open_decompressed(src)
        with compressing_writer(hashed, Compression.GZIP) as gz:
            while data := plain.read(READ):
                gz.write(data)
    tmp.rename(scratch / hashed.digest.removeprefix("sha256:"))
    return {"mediaType": OCI_LAYER_GZIP, "digest": hashed.digest, "size": hashed.count}


@dataclass
class _Pusher(Transfer):
    chunk_size: int = CHUNK_SIZE
    actions = "pull,push"

    async def blobs(self, blobs: list[_Blob]) -> None:
        for blob in blobs:
            self.progress.set(short_digest(blob.digest), "Waiting")
        await run_all([functools.partial(self.blob, b) for b in blobs], PARALLEL_UPLOADS)

    async def blob(self, blob: _Blob, limiter: trio.CapacityLimiter) -> None:
        key = short_digest(blob.digest)
        async with limiter:
            resp = await self.client.request(
                "HEAD", f"/v2/{self.repo}/blobs/{blob.digest}", self.scopes, what="check a blob"
            )
            if resp.status_code == 200:
                self.progress.set(key, "Layer already exists")
                return
            if resp.status_code != 404:
                raise status_error(resp, f"{self.ref}: blob {blob.digest}")
            location = await self.mount_or_start(blob, key)
            if location is None:
                return
            if blob.size > self.chunk_size:
                location = await self.patch_chunks(blob, location, key)
                body = None
            else:
                body = self.body(blob, 0, blob.size, key)
            await self.finish_upload(blob, location, body)
        self.progress.set(key, "Pushed")

    async def mount_or_start(self, blob: _Blob, key: str) -> str | None:
        """Mount the blob from a repository known to hold it, or open an upload session
        (a refused mount opens one too). None: mounted, nothing to upload."""
        for source in BlobSources(self.store.paths).repositories(self.client.host, blob.digest):
            if source == self.repo:
                continue
            resp = await self.client.request(
                "POST",
                f"/v2/{self.repo}/blobs/uploads/?mount={blob.digest}&from={source}",
                [*self.scopes, f"repository:{source}:pull"],
                what="mount a blob",
            )
            if resp.status_code == 201:
                self.progress.set(key, f"Mounted from {source}")
                return None
            if resp.status_code == 202:
                return self._location(resp)
        resp = await self.client.request(
            "POST", f"/v2/{self.repo}/blobs/uploads/", self.scopes, what="start an upload"
        )
        if resp.status_code != 202:
            raise status_error(resp, f"{self.ref}: starting the upload of {blob.digest}")
        return self._location(resp)

    def _location(self, resp: httpx.Response) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.client.host} started an upload without a Location")
        return self.client.url(location)

    def body(self, blob: _Blob, start: int, length: int, key: str) -> Callable[[], Any]:
        """A maker of the byte stream of one request (made afresh for every try)."""

        async def stream() -> AsyncIterator[bytes]:
            done = start
            with open(blob.path, "rb") as f:
                f.seek(start)
                left = length
                while left:
                    data = f.read(min(READ, left))
                    if not data:
                        raise BadInput(f"blob {blob.digest} is shorter than its descriptor says")
                    left -= len(data)
                    done += len(data)
                    self.progress.bytes(key, "Pushing", done, blob.size)
                    yield data

        return stream

    async def patch_chunks(self, blob: _Blob, location: str, key: str) -> str:
        for start in range(0, blob.size, self.chunk_size):
            length = min(self.chunk_size, blob.size - start)
            resp = await self.client.request(
                "PATCH",
                location,
                self.scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + length - 1}",
                    "Content-Length": str(length),
                },
                content=self.body(blob, start, length, key),
                what=f"upload a chunk of {blob.digest}",
            )
            if resp.status_code != 202:
                raise status_error(resp, f"{self.ref}: uploading {blob.digest}")
            location = self._location(resp)
        return location

    async def finish_upload(
        self, blob: _Blob, location: str, body: Callable[[], Any] | None
    ) -> None:
        url = str(httpx.URL(location).copy_add_param("digest", blob.digest))
        headers = {"Content-Type": "application/octet-stream"}
        headers["Content-Length"] = str(blob.size if body is not None else 0)
        resp = await self.client.request(
            "PUT", url, self.scopes, headers=headers, content=body or b"", what="upload a blob"
        )
        if resp.status_code != 201:
            raise status_error(resp, f"{self.ref}: uploading {blob.digest}")

    async def manifest(self, raw: bytes) -> str:
        tag = self.ref.tag or "latest"
        resp = await self.client.request(
            "PUT",
            f"/v2/{self.repo}/manifests/{tag}",
            self.scopes,
            headers={"Content-Type": OCI_MANIFEST},
            content=raw,
            what="upload the manifest",
        )
        if resp.status_code not in (200, 201):
            raise status_error(resp, f"{self.ref}: uploading the manifest")
        digest = sha256_digest(raw)
        echoed = resp.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise RegistryError(
                f"{self.ref}: the registry stored the manifest as {echoed}, not {digest}"
            )
        return digest
