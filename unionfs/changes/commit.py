"""`imgfs commit`: a container's upper dir becomes a new image (its parent's layers + one).

The layer tar (`layertar.write_layer_tar`) is generated in a thread into a pipe, and the
pipe's other end is the input of `LayerStore.import_tar`, which hashes it (the diff_id),
compresses it into a verified blob and unpacks it into `layers/<diff_id>/`, all in one
pass: the tar is never stored, the upper dir is read once, and the new image mounts at
once. (A temp file would cost a second write and read of the whole layer, and as much
disk space again.)

A mounted container's daemon is asked to pause writes (after the mount is synced) while
the tar is generated, so the layer is one snapshot of the upper dir; the pause is taken
and released by the generating thread, so writers resume as soon as the last byte of the
upper dir has been read, not after the blob and the unpacked layer were flushed to disk.

The new config is the parent's (deep copy) with the `--change`s applied, a new `created`,
the given `author`, one more diff_id and one more history entry; the manifest lists the
parent's layer descriptors unchanged (their blobs are shared, not copied) plus the new one.
"""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Any

from unionfs.changes.layertar import write_layer_tar
from unionfs.containers import Container, Containers, ensure_index, lower_dirs_for
from unionfs.errors import BadInput, ImgfsError, NotFound
from unionfs.fs.control import writes_paused
from unionfs.fs.lifecycle import MountState
from unionfs.imageconfig import apply_change
from unionfs.index import MergedIndex
from unionfs.layers.compression import Compression
from unionfs.reference import Reference
from unionfs.store.images import Image, ImageStore, scratch_image, utc_now
from unionfs.store.layerstore import BLOB_COMPRESSIONS, StoredLayer
from unionfs.store.lock import flocked

__all__ = ["commit_container"]

PIPE_BUFFER = 1 << 20
CREATED_BY = "imgfs commit"


def commit_container(
    store: ImageStore,
    container_name: str,
    *,
    ref: Reference | None = None,
    message: str = "",
    author: str = "",
    changes: list[str] | None = None,
    compression: Compression = Compression.ZSTD,
    progress: Any = None,
) -> Image:
    """Commit a container (name, ID or ID prefix) as a new image, tagged `ref` if given."""
    if compression not in BLOB_COMPRESSIONS:
        raise BadInput(f"layers cannot be stored with {compression.value} compression")
    if ref is not None:
        _check_ref(ref)
    containers = Containers(store)
    container = containers.find(container_name)
    store.layout.ensure()
    with containers.locked(container), flocked(store.paths.locks / "gc", shared=True):
        parent = _parent_image(store, container)
        config = copy.deepcopy(parent.config)
        section = config.get("config")
        if not isinstance(section, dict):
            section = config["config"] = {}
        for change in changes or []:
            apply_change(section, change)  # a bad change fails before any work is done
        layer = _store_layer(store, container, compression, progress)
        created = utc_now()
        config["created"] = created
        if author:
            config["author"] = author
        else:
            config.pop("author", None)  # the parent's author did not make this image
        config["rootfs"] = {"type": "layers", "diff_ids": [*parent.diff_ids, layer.diff_id]}
        history: dict[str, Any] = {"created": created, "created_by": CREATED_BY}
        if author:
            history["author"] = author
        if message:
            history["comment"] = message
        config["history"] = [*(config.get("history") or []), history]
        return store.add_image(config, [*parent.layers, layer.descriptor()], ref)


def _check_ref(ref: Reference) -> None:
    if ref.digest is not None:
        raise BadInput(f"cannot tag with a digest reference: {ref.familiar()}")
    if ref.familiar_name == "scratch":
        raise BadInput("'scratch' is a reserved name and cannot be tagged")


def _parent_image(store: ImageStore, container: Container) -> Image:
    if not container.image_id:
        parent = scratch_image()
    else:
        try:
            parent = store.find(container.image_id)
        except NotFound:
            raise NotFound(
                f"container {container.name}: its image {container.image_id} is missing "
                "from the store"
            ) from None
    if parent.diff_ids != container.diff_ids or len(parent.layers) != len(parent.diff_ids):
        raise ImgfsError(
            f"container {container.name}: its image {parent.short_id or 'scratch'} does not "
            "have the layers the container was created on"
        )
    return parent


def _mountpoint(container: Container) -> Path | None:
    """Where a daemon serves the container (to sync it before pausing), if it does."""
    record = container.mount_record()
    if record is None or container.mount_state() is not MountState.MOUNTED:
        return None
    return Path(record.mountpoint)


def _store_layer(
    store: ImageStore, container: Container, compression: Compression, progress: Any
) -> StoredLayer:
    lower = lower_dirs_for(store, container.diff_ids)
    for d in lower:
        if not d.is_dir():
            raise ImgfsError(f"container {container.name}: layer dir {d} is missing")
    index = MergedIndex.open(ensure_index(store, container.diff_ids, lower), lower)
    try:
        return _pipe_through_store(store, container, index, compression, progress)
    finally:
        index.close()


def _pipe_through_store(
    store: ImageStore,
    container: Container,
    index: MergedIndex,
    compression: Compression,
    progress: Any,
) -> StoredLayer:
    mountpoint = _mountpoint(container)
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            # The daemon is always asked: one started after the check above pauses too.
            with (
                os.fdopen(write_fd, "wb", buffering=PIPE_BUFFER) as out,
                writes_paused(container.upper, mountpoint),
            ):
                write_layer_tar(container.upper, index, out, progress)
        except BaseException as e:  # handed to the main thread
            failure.append(e)

    thread = threading.Thread(target=produce, name="imgfs-commit-tar", daemon=True)
    thread.start()
    reader_error: BaseException | None = None
    layer: StoredLayer | None = None
    try:
        with os.fdopen(read_fd, "rb", buffering=PIPE_BUFFER) as source:
            layer = store.layers.import_tar(source, None, compression)
    except BaseException as e:
        reader_error = e
    finally:
        thread.join()  # the read end is closed: a writer still writing gets EPIPE
    # The writer's own error explains a truncated tar better than the reader's.
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise failure[0]
    if reader_error is not None:
        raise reader_error
    if failure:
        raise failure[0]
    assert layer is not None
    return layer
