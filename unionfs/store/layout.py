"""The OCI layout's `index.json`: one manifest descriptor per tag (plus untagged images).

Tags are `org.opencontainers.image.ref.name` annotations holding the full normalized
reference, so `skopeo inspect oci:<root>/oci:docker.io/library/busybox:latest` finds
them. Every change happens under the `index` lock and is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from unionfs.errors import BadInput
from unionfs.store.atomic import write_atomic
from unionfs.store.lock import flocked
from unionfs.store.mediatypes import OCI_INDEX, OCI_LAYOUT_VERSION, REF_NAME_ANNOTATION
from unionfs.store.paths import StorePaths


@dataclass
class IndexEntry:
    """A manifest descriptor of index.json; `extra` keeps fields other tools wrote."""

    digest: str
    media_type: str
    size: int
    ref_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IndexEntry:
        annotations = dict(d.get("annotations") or {})
        ref = annotations.pop(REF_NAME_ANNOTATION, None)
        extra = {
            k: v for k, v in d.items() if k not in ("digest", "mediaType", "size", "annotations")
        }
        if annotations:
            extra["annotations"] = annotations
        try:
            return cls(str(d["digest"]), str(d["mediaType"]), int(d["size"]), ref, extra)
        except (KeyError, TypeError, ValueError) as e:
            raise BadInput(f"index.json has a malformed descriptor: {d!r}") from e

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        annotations = dict(self.extra.get("annotations") or {})
        if self.ref_name is not None:
            annotations[REF_NAME_ANNOTATION] = self.ref_name
        d.update({k: v for k, v in self.extra.items() if k != "annotations"})
        if annotations:
            d["annotations"] = annotations
        return d


class Layout:
    def __init__(self, paths: StorePaths) -> None:
        self.paths = paths

    def ensure(self) -> None:
        """Create an empty layout on first use (idempotent, safe to race)."""
        for d in (self.paths.blobs, self.paths.layers, self.paths.tmp, self.paths.locks):
            d.mkdir(parents=True, exist_ok=True)
        marker = self.paths.oci / "oci-layout"
        if not marker.exists():
            write_atomic(marker, json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
        if not self.paths.index_json.exists():
            with flocked(self.paths.locks / "index"):
                if not self.paths.index_json.exists():
                    self._write([])

    def entries(self) -> list[IndexEntry]:
        try:
            raw = self.paths.index_json.read_bytes()
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
            manifests = doc.get("manifests") or []
        except (ValueError, AttributeError) as e:
            raise BadInput(f"{self.paths.index_json} is not valid JSON: {e}") from e
        return [IndexEntry.from_json(m) for m in manifests]

    def _write(self, entries: list[IndexEntry]) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [e.to_json() for e in entries],
        }
        write_atomic(self.paths.index_json, json.dumps(doc, indent=2).encode() + b"\n")

    @contextmanager
    def editing(self) -> Iterator[list[IndexEntry]]:
        """Read-modify-write index.json under the lock; the list is written back on success."""
        os.makedirs(self.paths.locks, exist_ok=True)
        with flocked(self.paths.locks / "index"):
            entries = self.entries()
            before = [e.to_json() for e in entries]
            yield entries
            if [e.to_json() for e in entries] != before:
                self._write(entries)

    def update(self, change: Callable[[list[IndexEntry]], None]) -> None:
        with self.editing() as entries:
            change(entries)
