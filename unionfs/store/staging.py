"""A private store under the store's tmp/ where incoming images are assembled.

Loads and pulls put blobs and unpacked layers here first and verify all of it; only then
are they renamed into the store (same filesystem) and recorded in index.json. A failure
at any point removes the staging dir, so the store never holds half an image.
"""

from __future__ import annotations

import os
import re
import shutil

from unionfs.store.atomic import fsync_dir, temp_name
from unionfs.store.blobs import BlobRef, BlobStore
from unionfs.store.images import ImageStore
from unionfs.store.layerstore import LayerStore
from unionfs.store.paths import StorePaths

_LAYER_NAME = re.compile(r"[0-9a-f]{64}")


class Staging:
    def __init__(self, store: ImageStore, hint: str) -> None:
        store.paths.tmp.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.dir = temp_name(store.paths.tmp, hint)
        os.mkdir(self.dir, 0o700)
        self.paths = StorePaths(self.dir)
        self.blobs = BlobStore(self.paths)
        self.layers = LayerStore(self.paths, self.blobs)
        self._moved: dict[str, int] = {}

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def has_layer(self, diff_id: str) -> bool:
        return self.store.layers.path(diff_id).is_dir() or self.layers.path(diff_id).is_dir()

    def adopt_blob(self, digest: str) -> BlobRef:
        """Move a staged blob into the store (a no-op for one moved or present already)."""
        if digest not in self._moved:
            if self.blobs.exists(digest):
                self._moved[digest] = self.blobs.size(digest)
                self.store.blobs.adopt(self.paths.blob(digest), digest, self._moved[digest])
            else:
                self._moved[digest] = self.store.blobs.size(digest)
        return BlobRef(digest, self._moved[digest])

    def install_layers(self) -> None:
        """Rename staged unpacked layers (and their info files) into the store's layers/."""
        if not self.paths.layers.is_dir():
            return
        store_layers = self.store.paths.layers
        store_layers.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.listdir(self.paths.layers)):
            if not _LAYER_NAME.fullmatch(entry):
                continue
            src, dest = self.paths.layers / entry, store_layers / entry
            if dest.is_dir():
                continue  # another process unpacked the same layer meanwhile
            try:
                os.rename(src, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                continue
            info = self.paths.layers / f"{entry}.json"
            if info.exists():
                os.replace(info, store_layers / f"{entry}.json")
        fsync_dir(store_layers)
