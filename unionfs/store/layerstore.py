"""Layers: a tar stream becomes a zstd blob and an unpacked overlay-format dir in one pass.

The uncompressed tar is read once: as it streams by it is hashed (diff_id), recompressed
(the blob) and unpacked (the dir). Work happens under tmp/ and is renamed into place
only when everything succeeded, so a failure never leaves a half-written layer.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from unionfs.errors import BadInput
from unionfs.layers.compression import Compression, open_decompressed
from unionfs.layers.unpack import UnpackStats, unpack_tar
from unionfs.safeio import syncfs
from unionfs.store.atomic import fsync_dir, temp_name, write_atomic
from unionfs.store.blobs import BlobRef, BlobStore
from unionfs.store.digests import HashingReader, check_digest
from unionfs.store.mediatypes import LAYER_TYPES, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from unionfs.store.paths import StorePaths

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
CHUNK = 1 << 20

# zstd is the default (fast, multithreaded); gzip is for tools that predate zstd layers,
# such as Debian 12's umoci 0.4.7 and older registries.
BLOB_COMPRESSIONS = {Compression.ZSTD: OCI_LAYER_ZSTD, Compression.GZIP: OCI_LAYER_GZIP}


def compressing_writer(sink: Any, kind: Compression) -> Any:
    """A context-managed writer that compresses into `sink` and finishes the stream on exit."""
    if kind is Compression.ZSTD:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        return compressor.stream_writer(sink, closefd=False)
    if kind is Compression.GZIP:
        return gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
    raise ValueError(f"layers cannot be stored with {kind.name} compression")


@dataclass(frozen=True)
class StoredLayer:
    diff_id: str
    blob: BlobRef
    size: int
    media_type: str = OCI_LAYER_ZSTD

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.blob.digest, "size": self.blob.size}


class _TeeReader(HashingReader):
    """Hashes the uncompressed tar and feeds it to the compressor while unpack reads it."""

    def __init__(self, raw: BinaryIO, sink: Any) -> None:
        super().__init__(raw)
        self.sink = sink

    def read(self, n: int = -1) -> bytes:
        data = super().read(n)
        if data:
            self.sink.write(data)
        return data


def _drain(stream: Any) -> None:
    while stream.read(CHUNK):
        pass


class LayerStore:
    def __init__(self, paths: StorePaths, blobs: BlobStore) -> None:
        self.paths = paths
        self.blobs = blobs

    def path(self, diff_id: str) -> Path:
        return self.paths.layer_dir(check_digest(diff_id))

    def import_tar(
        self,
        raw: BinaryIO,
        on_entry: Callable[[Any], None] | None = None,
        compression: Compression = Compression.ZSTD,
    ) -> StoredLayer:
        """Store a tar (plain, gzip, zstd, xz, bzip2) as a new layer."""
        if compression not in BLOB_COMPRESSIONS:
            raise BadInput(f"layers cannot be stored with {compression.name.lower()} compression")
        _, plain = open_decompressed(raw)
        with self.blobs.writer() as blob:
            with compressing_writer(blob, compression) as zw:
                tee = _TeeReader(plain, zw)
                tmp, stats = self._unpack(tee, on_entry)
            try:
                blob_ref = blob.commit()
                self._install(tmp, tee.digest, tee.count, stats)
            except BaseException:
                _rmtree(tmp)
                raise
        return StoredLayer(tee.digest, blob_ref, tee.count, BLOB_COMPRESSIONS[compression])

    def ensure_unpacked(
        self, diff_id: str, layer: dict[str, Any], on_entry: Callable[[Any], None] | None = None
    ) -> Path:
        """Unpack a layer blob once (for images that arrived as blobs, e.g. from skopeo)."""
        dest = self.path(diff_id)
        if dest.is_dir():
            return dest
        media_type = layer.get("mediaType", "")
        if media_type not in LAYER_TYPES:
            raise BadInput(f"layer {layer.get('digest')} has unsupported media type {media_type!r}")
        with self.blobs.open(check_digest(str(layer.get("digest")))) as f:
            compressed = HashingReader(f)
            _, plain = open_decompressed(compressed)
            tar = HashingReader(plain)
            tmp, stats = self._unpack(tar, on_entry)
            try:
                _drain(compressed)
                if compressed.digest != layer["digest"]:
                    raise BadInput(f"layer blob {layer['digest']} is corrupt (digest mismatch)")
                if tar.digest != diff_id:
                    raise BadInput(
                        f"layer {layer['digest']} does not match its diff_id {diff_id} "
                        f"(content has {tar.digest})"
                    )
                self._install(tmp, diff_id, tar.count, stats)
            except BaseException:
                _rmtree(tmp)
                raise
        return dest

    def _unpack(
        self, stream: HashingReader, on_entry: Callable[[Any], None] | None
    ) -> tuple[Path, UnpackStats]:
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.paths.tmp, "layer-")
        os.mkdir(tmp, 0o755)
        os.chmod(tmp, 0o755)
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                stats = unpack_tar(stream, fd, on_entry=on_entry)  # reads to the end
                syncfs(fd)
            finally:
                os.close(fd)
        except BaseException:
            _rmtree(tmp)
            raise
        return tmp, stats

    def _install(self, tmp: Path, diff_id: str, size: int, stats: UnpackStats) -> None:
        dest = self.path(diff_id)
        self.paths.layers.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            _rmtree(tmp)  # another process unpacked the same layer first
        else:
            fsync_dir(self.paths.layers)
        info = {"diff_id": diff_id, "size": size, "entries": stats.entries}
        write_atomic(self.paths.layer_info(diff_id), json.dumps(info).encode())


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
