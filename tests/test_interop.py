"""Other tools of the ecosystem read the store: skopeo inspect/copy and umoci unpack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import ImgfsRunner, require, require_root

pytestmark = pytest.mark.interop


def tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def tree_of(root: Path) -> dict[str, tuple]:
    """Name → (type, mode, uid, gid, content or link target), the way a rootfs is compared."""
    tree: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                tree[rel] = ("l", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("d", st.st_mode & 0o7777, st.st_uid, st.st_gid)
            else:
                tree[rel] = ("f", st.st_mode & 0o7777, st.st_uid, st.st_gid, path.read_bytes())
    return tree


def tree_of_tar(data: Path) -> dict[str, tuple]:
    tree: dict[str, tuple] = {}
    with tarfile.open(data) as tar:
        for m in tar.getmembers():
            name = m.name.removeprefix("./").rstrip("/")
            if not name:
                continue
            if m.issym():
                tree[name] = ("l", m.linkname)
            elif m.isdir():
                tree[name] = ("d", m.mode, m.uid, m.gid)
            else:
                f = tar.extractfile(m)
                assert f is not None
                tree[name] = ("f", m.mode, m.uid, m.gid, f.read())
    return tree


@pytest.fixture
def imported(imgfs: ImgfsRunner, busybox_tar_file: Path) -> str:
    imgfs("import", str(busybox_tar_file), "busybox:interop")
    return "docker.io/library/busybox:interop"


def test_skopeo_inspects_the_layout(root: Path, imported: str, imgfs: ImgfsRunner) -> None:
    out = subprocess.run(
        [tool("skopeo"), "inspect", f"oci:{root}/oci:{imported}"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    [ours] = json.loads(imgfs("inspect", imported).stdout)
    assert doc["Layers"] == [layer["digest"] for layer in ours["Manifest"]["Layers"]]
    assert doc["Os"] == "linux"


def test_skopeo_copy_verifies_every_digest(root: Path, imported: str, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    subprocess.run(
        [tool("skopeo"), "copy", "--quiet", f"oci:{root}/oci:{imported}", f"oci:{dest}:copied"],
        check=True,
    )
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "copied"


def test_umoci_unpack_gives_the_imported_tree(
    root: Path, imgfs: ImgfsRunner, tmp_path: Path, busybox_tar_file: Path
) -> None:
    """Debian 12's umoci (0.4.7) predates zstd layers, so this image is stored with gzip."""
    require_root()
    imgfs("import", "--compression", "gzip", str(busybox_tar_file), "busybox:gzip")
    bundle = tmp_path / "bundle"
    image = f"{root}/oci:docker.io/library/busybox:gzip"
    subprocess.run(
        [tool("umoci"), "unpack", "--image", image, str(bundle)],
        check=True,
        capture_output=True,
    )
    assert tree_of(bundle / "rootfs") == tree_of_tar(busybox_tar_file)
