"""Which repositories of which registries hold a blob, so a push can mount it from there.

A registry can link a blob it already has in another repository into the one being
pushed to (`POST …/blobs/uploads/?mount=<digest>&from=<repo>`) instead of receiving it
again. Pulls and pushes record where each blob was seen in `registry-sources.json`
beside the OCI layout; the file is a cache, so a lost or unreadable one costs only bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from unionfs.store.atomic import write_atomic
from unionfs.store.lock import flocked
from unionfs.store.paths import StorePaths

KEEP_PER_BLOB = 8


class BlobSources:
    def __init__(self, paths: StorePaths) -> None:
        self.file: Path = paths.root / "registry-sources.json"
        self.lock: Path = paths.locks / "registry-sources"

    def _read(self) -> dict[str, dict[str, list[str]]]:
        try:
            doc = json.loads(self.file.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def repositories(self, host: str, digest: str) -> list[str]:
        repos = (self._read().get(host) or {}).get(digest) or []
        return [r for r in repos if isinstance(r, str)]

    def record(self, host: str, repository: str, digests: Iterable[str]) -> None:
        with flocked(self.lock):
            doc = self._read()
            blobs = doc.setdefault(host, {})
            for digest in digests:
                repos = [r for r in blobs.get(digest) or [] if r != repository]
                blobs[digest] = [repository, *repos][:KEEP_PER_BLOB]
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.file, json.dumps(doc, sort_keys=True).encode())
