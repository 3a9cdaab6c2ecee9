"""Content-addressed blobs in the OCI layout: verified before they become visible."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from unionfs.errors import BadInput, NotFound
from unionfs.store.atomic import fsync_dir, temp_name
from unionfs.store.digests import HashingWriter, check_digest, sha256_digest
from unionfs.store.paths import StorePaths


@dataclass(frozen=True)
class BlobRef:
    digest: str
    size: int


class BlobWriter(HashingWriter):
    """A blob being written to a temp file; `commit` verifies it and renames it in."""

    def __init__(self, store: BlobStore, f: BinaryIO, tmp: Path) -> None:
        super().__init__(f)
        self.store = store
        self.tmp = tmp
        self.committed: BlobRef | None = None

    def commit(self, expected: str | None = None) -> BlobRef:
        self.raw.flush()
        os.fsync(self.raw.fileno())
        digest = self.digest
        if expected is not None and expected != digest:
            raise BadInput(f"digest mismatch: expected {expected}, content has {digest}")
        self.committed = self.store.adopt(self.tmp, digest, self.count)
        return self.committed


class BlobStore:
    def __init__(self, paths: StorePaths) -> None:
        self.paths = paths

    def path(self, digest: str) -> Path:
        return self.paths.blob(check_digest(digest))

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None

    def digests(self) -> Iterator[str]:
        if not self.paths.blobs.is_dir():
            return
        for entry in os.scandir(self.paths.blobs):
            if entry.is_file() and len(entry.name) == 64 and not entry.name.startswith("."):
                yield "sha256:" + entry.name

    @contextmanager
    def writer(self) -> Iterator[BlobWriter]:
        """Stream a blob in; it only appears in the store if `commit()` is called."""
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(self.paths.tmp, "blob-")
        with open(tmp, "xb") as f:
            w = BlobWriter(self, f, tmp)
            try:
                yield w
            finally:
                if w.committed is None:
                    tmp.unlink(missing_ok=True)

    def adopt(self, tmp: Path, digest: str, size: int) -> BlobRef:
        """Rename a finished temp file into place (a blob already there is kept)."""
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        return BlobRef(digest, size)

    def put(self, data: bytes) -> BlobRef:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def get(self, digest: str) -> bytes:
        """Read a small blob (manifest, config), refusing it if its digest does not match."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None
        if sha256_digest(data) != digest:
            raise BadInput(f"blob {digest} is corrupt (its content does not match its digest)")
        return data

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from the store") from None

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
