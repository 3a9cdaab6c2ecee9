"""The store as an OCI layout: import, tags, removal and garbage collection, locking."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from unionfs import reference
from unionfs.errors import Conflict, NotFound
from unionfs.store.images import ImageStore
from unionfs.store.importing import import_image
from unionfs.store.mediatypes import OCI_LAYER_ZSTD, OCI_MANIFEST, REF_NAME_ANNOTATION


def small_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def do_import(store: ImageStore, data: bytes, ref: str | None = None, **kw: object):
    return import_image(store, io.BytesIO(data), ref=reference.parse(ref) if ref else None, **kw)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_import_writes_a_valid_oci_layout(root: Path, busybox_tar: bytes) -> None:
    store = ImageStore(root)
    image = do_import(store, busybox_tar, "busybox")
    oci = root / "oci"
    assert json.loads((oci / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((oci / "index.json").read_text())
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["annotations"][REF_NAME_ANNOTATION] == "docker.io/library/busybox:latest"
    assert entry["mediaType"] == OCI_MANIFEST
    # Every blob is stored under its own digest, and sizes agree with descriptors.
    for blob in (oci / "blobs" / "sha256").iterdir():
        assert sha(blob.read_bytes()) == "sha256:" + blob.name
    manifest_bytes = (oci / "blobs" / "sha256" / entry["digest"][7:]).read_bytes()
    assert len(manifest_bytes) == entry["size"]
    manifest = json.loads(manifest_bytes)
    [layer] = manifest["layers"]
    assert layer["mediaType"] == OCI_LAYER_ZSTD
    config = json.loads((oci / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    assert config["rootfs"]["diff_ids"] == [sha(busybox_tar)]
    assert config["os"] == "linux" and config["architecture"]
    assert config["history"][0]["created_by"].startswith("imgfs import")
    assert image.id == manifest["config"]["digest"]
    # The blob decompresses to exactly the imported tar.
    import zstandard

    blob = (oci / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read() == busybox_tar
    # ... and the layer was unpacked once, under its diff_id.
    layer_dir = root / "layers" / sha(busybox_tar)[7:]
    assert (layer_dir / "bin" / "busybox").is_file()
    assert os.readlink(layer_dir / "bin" / "sh") == "busybox"
    assert list((root / "tmp").iterdir()) == []


@pytest.mark.parametrize("compress", ["gzip", "zstd", "xz", "none"])
def test_compressed_inputs_give_the_same_layer(root: Path, compress: str) -> None:
    import gzip
    import lzma

    import zstandard

    data = small_tar({"a": b"hello", "dir/b": b"world"})
    packed = {
        "gzip": gzip.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "xz": lzma.compress,
        "none": lambda d: d,
    }[compress](data)
    store = ImageStore(root)
    image = do_import(store, packed, "x")
    assert image.diff_ids == [sha(data)]


def test_tags_ids_and_digests_resolve(root: Path) -> None:
    store = ImageStore(root)
    a = do_import(store, small_tar({"a": b"1"}), "example.com:5000/team/app:v1")
    b = do_import(store, small_tar({"b": b"2"}))
    assert store.find("example.com:5000/team/app:v1").id == a.id
    assert store.find(a.id).id == a.id
    assert store.find(a.short_id[:6]).id == a.id
    assert store.find(b.id[7:19]).id == b.id
    assert store.find(f"example.com:5000/team/app@{a.manifest_digest}").id == a.id
    with pytest.raises(NotFound):
        store.find("example.com:5000/team/app:v2")
    with pytest.raises(NotFound):
        store.find("nosuchimage")
    store.tag(a, reference.parse("app"))
    assert store.find("docker.io/library/app:latest").id == a.id
    assert store.find("scratch").diff_ids == []


def test_ambiguous_id_prefix(root: Path) -> None:
    store = ImageStore(root)
    images = [do_import(store, small_tar({f"f{i}": bytes([i])})) for i in range(40)]
    # With 40 images, some pair shares its first hex digit.
    first = [i.id[7] for i in images]
    dup = next(c for c in first if first.count(c) > 1)
    with pytest.raises(Conflict, match="ambiguous"):
        store.find(dup)


def test_retag_leaves_old_image_untagged_and_rmi_collects(root: Path) -> None:
    store = ImageStore(root)
    old = do_import(store, small_tar({"old": b"1"}), "app")
    new = do_import(store, small_tar({"new": b"2"}), "app")
    images = {i.id: i for i in store.images()}
    assert images[old.id].refs == [] and images[new.id].refs == ["docker.io/library/app:latest"]
    lines = store.remove([old.id])
    assert lines == [f"Deleted: {old.id}"]
    blobs = {p.name for p in (root / "oci" / "blobs" / "sha256").iterdir()}
    assert old.manifest_digest[7:] not in blobs and old.id[7:] not in blobs
    assert not (root / "layers" / old.diff_ids[0][7:]).exists()
    assert (root / "layers" / new.diff_ids[0][7:]).is_dir()


def test_rmi_untags_before_deleting(root: Path) -> None:
    store = ImageStore(root)
    img = do_import(store, small_tar({"x": b"1"}), "one")
    store.tag(img, reference.parse("two"))
    assert store.remove(["one"]) == ["Untagged: one:latest"]
    assert store.find("two").id == img.id
    store.tag(img, reference.parse("three"))
    with pytest.raises(Conflict, match="multiple repositories"):
        store.remove([img.id])
    assert store.remove([img.id], force=True) == [
        "Untagged: two:latest",
        "Untagged: three:latest",
        f"Deleted: {img.id}",
    ]
    assert store.images() == []
    assert list((root / "oci" / "blobs" / "sha256").iterdir()) == []
    assert [p for p in (root / "layers").iterdir()] == []


def test_shared_layer_survives_removal_of_one_image(root: Path) -> None:
    store = ImageStore(root)
    data = small_tar({"same": b"layer"})
    a = do_import(store, data, "a", message="first")
    b = do_import(store, data, "b", message="second")
    assert a.id != b.id and a.diff_ids == b.diff_ids
    store.remove(["a"])
    assert (root / "layers" / a.diff_ids[0][7:]).is_dir()
    assert store.find("b").layers[0]["digest"] in {
        "sha256:" + p.name for p in (root / "oci" / "blobs" / "sha256").iterdir()
    }


def test_rmi_refuses_an_image_a_container_uses(root: Path) -> None:
    store = ImageStore(root)
    img = do_import(store, small_tar({"x": b"1"}), "used")
    record = root / "containers" / ("c" * 64)
    record.mkdir(parents=True)
    (record / "config.json").write_text(json.dumps({"image_id": img.id}))
    with pytest.raises(Conflict, match="used by container"):
        store.remove(["used"])
    assert store.find("used").id == img.id
    # -f untags but keeps what the container needs, as docker does.
    assert store.remove(["used"], force=True) == ["Untagged: used:latest"]
    assert store.find(img.id).refs == []
    assert (root / "layers" / img.diff_ids[0][7:]).is_dir()


def test_corrupt_manifest_blob_is_detected(root: Path) -> None:
    store = ImageStore(root)
    img = do_import(store, small_tar({"x": b"1"}), "x")
    blob = root / "oci" / "blobs" / "sha256" / img.manifest_digest[7:]
    blob.write_bytes(blob.read_bytes().replace(b"schemaVersion", b"schemaVersiom"))
    from unionfs.errors import BadInput

    with pytest.raises(BadInput, match="corrupt"):
        ImageStore(root).find("x")


def test_unpack_from_blob_verifies_digests(root: Path) -> None:
    """Images that arrive as blobs (skopeo, later pull) are unpacked on demand, verified."""
    store = ImageStore(root)
    img = do_import(store, small_tar({"x": b"1"}), "x")
    layer_dir = root / "layers" / img.diff_ids[0][7:]
    import shutil

    shutil.rmtree(layer_dir)
    assert store.layers.ensure_unpacked(img.diff_ids[0], img.layers[0]) == layer_dir
    assert (layer_dir / "x").read_bytes() == b"1"
    shutil.rmtree(layer_dir)
    from unionfs.errors import BadInput

    wrong = "sha256:" + "0" * 64
    with pytest.raises(BadInput, match="does not match its diff_id"):
        store.layers.ensure_unpacked(wrong, img.layers[0])
    assert not (root / "layers" / wrong[7:]).exists()
    assert list((root / "tmp").iterdir()) == []


CONCURRENT_SCRIPT = """
import io, sys, tarfile
from unionfs import reference
from unionfs.store.images import ImageStore
from unionfs.store.importing import import_image
root, n = sys.argv[1], int(sys.argv[2])
store = ImageStore(root)
for i in range(4):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = f"{n}-{i}".encode()
        info = tarfile.TarInfo(f"file-{n}-{i}"); info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        shared = b"shared"
        info = tarfile.TarInfo("shared"); info.size = len(shared)
        tar.addfile(info, io.BytesIO(shared))
    img = import_image(store, io.BytesIO(buf.getvalue()), ref=reference.parse(f"p{n}:{i}"))
    store.tag(img, reference.parse(f"all:{n}-{i}"))
    store.tag(img, reference.parse("last"))
"""


def test_concurrent_imports_and_tags_keep_the_layout_whole(root: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(root), str(n)])
        for n in range(6)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * 6
    store = ImageStore(root)
    refs = {r for img in store.images() for r in img.refs}
    for n in range(6):
        for i in range(4):
            assert f"docker.io/library/p{n}:{i}" in refs
            assert f"docker.io/library/all:{n}-{i}" in refs
    assert "docker.io/library/last:latest" in refs
    index = json.loads((root / "oci" / "index.json").read_text())
    names = [m.get("annotations", {}).get(REF_NAME_ANNOTATION) for m in index["manifests"]]
    assert len([n for n in names if n]) == len({n for n in names if n})
    for image in store.images():
        assert (root / "layers" / image.diff_ids[0][7:]).is_dir()
        for layer in image.layers:
            assert (root / "oci" / "blobs" / "sha256" / layer["digest"][7:]).is_file()


def test_rmi_collects_the_merged_index_of_the_image(root: Path) -> None:
    from unionfs import containers

    from conftest import require_root

    require_root()
    store = ImageStore(root)
    img = do_import(store, small_tar({"x": b"1"}), "indexed")
    container = containers.create(store, "indexed")
    indexes = list((root / "indexes").iterdir())
    assert len(indexes) == 1 and len(indexes[0].name) == 64
    containers.Containers(store).remove(container)
    store.remove([img.id])
    assert list((root / "indexes").iterdir()) == []
