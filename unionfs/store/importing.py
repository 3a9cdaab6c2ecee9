"""`imgfs import`: a rootfs tarball becomes a standalone single-layer image."""

from __future__ import annotations

from typing import Any, BinaryIO

from unionfs.imageconfig import apply_change
from unionfs.layers.compression import Compression
from unionfs.reference import Reference
from unionfs.store.images import Image, ImageStore, host_architecture, utc_now
from unionfs.store.lock import flocked


def import_image(
    store: ImageStore,
    source: BinaryIO,
    *,
    ref: Reference | None = None,
    source_name: str = "-",
    message: str = "",
    changes: list[str] | None = None,
    on_entry: Any = None,
    compression: Compression = Compression.ZSTD,
) -> Image:
    store.layout.ensure()
    config_section: dict[str, Any] = {}
    for change in changes or []:
        apply_change(config_section, change)  # bad changes fail before any work is done
    with flocked(store.paths.locks / "gc", shared=True):
        layer = store.layers.import_tar(source, on_entry, compression)
        created = utc_now()
        history: dict[str, Any] = {"created": created, "created_by": f"imgfs import {source_name}"}
        if message:
            history["comment"] = message
        config = {
            "created": created,
            "architecture": host_architecture(),
            "os": "linux",
            "config": config_section,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [history],
        }
        return store.add_image(config, [layer.descriptor()], ref)
