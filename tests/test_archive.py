"""save, load and export: OCI archives read by skopeo, docker archives written by skopeo,
round trips through a second store, flattened exports re-imported, and hostile archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from mounts import mounted, require_fuse, tree_of

import tarfactory as tf
from conftest import (
    ImgfsRunner,
    assert_user_error,
    imgfs_runner,
    require,
    require_root,
    snapshot,
)

BUSYBOX = "docker.io/library/busybox:latest"


def tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def imgfs_at(root: Path) -> ImgfsRunner:
    """An `imgfs` runner for another store than the test's own (a second machine)."""
    return imgfs_runner(root)


def imgfs_bytes(root: Path, *args: str) -> bytes:
    """Run imgfs and return its binary standard output (a tar)."""
    env = dict(os.environ, IMGFS_ROOT=str(root))
    return subprocess.run(
        [sys.executable, "-m", "unionfs", *args], capture_output=True, env=env, check=True
    ).stdout


def inspect(imgfs: ImgfsRunner, name: str) -> dict:
    return json.loads(imgfs("inspect", name).stdout)[0]


def layer_dir(imgfs: ImgfsRunner, name: str) -> Path:
    [lower] = inspect(imgfs, name)["GraphDriver"]["Data"]["LowerDir"].split(":")
    return Path(lower)


def listing(data: bytes) -> list[tuple]:
    """A tar's entries without directory mtimes, which copy-up changes behind a live
    mount's back (the daemon does not restore the parent's times as overlayfs does)."""
    return [
        (m.name, m.type, m.mode, m.uid, m.gid, m.linkname, None if m.isdir() else m.mtime, d)
        for m, d in tar_members(data)
    ]


def tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            out.append((m, f.read() if f is not None else None))
    return out


# -- save ---------------------------------------------------------------------------------


@pytest.fixture
def busybox(imgfs: ImgfsRunner, busybox_tar_file: Path) -> str:
    imgfs("import", str(busybox_tar_file), "busybox")
    return BUSYBOX


@pytest.mark.interop
def test_skopeo_reads_the_saved_archive(
    imgfs: ImgfsRunner, busybox: str, busybox_tar_file: Path, tmp_path: Path
) -> None:
    imgfs("import", "-m", "second", str(busybox_tar_file), "registry.example.com:5000/team/app:v1")
    archive = tmp_path / "images.tar"
    imgfs("save", "-o", str(archive), "busybox", "registry.example.com:5000/team/app:v1")
    ours = inspect(imgfs, "busybox")
    # Several images in one archive: skopeo selects one by its full name.
    out = subprocess.run(
        [tool("skopeo"), "inspect", f"oci-archive:{archive}:{BUSYBOX}"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["Digest"] == ours["RepoDigests"][0].split("@")[1]
    assert doc["Layers"] == [layer["digest"] for layer in ours["Manifest"]["Layers"]]
    dest = tmp_path / "copy"
    name = "registry.example.com:5000/team/app:v1"
    subprocess.run(
        [tool("skopeo"), "copy", "--quiet", f"oci-archive:{archive}:{name}", f"oci:{dest}:copied"],
        check=True,
    )
    index = json.loads((dest / "index.json").read_text())
    [copied] = index["manifests"]
    assert copied["digest"] == inspect(imgfs, name)["RepoDigests"][0].split("@")[1]
    # One image: no name needed.
    single = tmp_path / "single.tar"
    imgfs("save", "--output", str(single), "busybox")
    out = subprocess.run(
        [tool("skopeo"), "inspect", f"oci-archive:{single}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["Digest"] == doc["Digest"]


def test_save_is_deterministic_and_streams_to_stdout(
    imgfs: ImgfsRunner, busybox: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    imgfs("save", "-o", str(first), "busybox")
    imgfs("save", "-o", str(second), "busybox")
    piped = imgfs_bytes(tmp_path / "store", "save", "busybox")
    assert first.read_bytes() == second.read_bytes() == piped
    members = tar_members(piped)
    assert [m.name for m, _ in members[:3]] == ["oci-layout", "index.json", "manifest.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m, _ in members} == {(0, 0, 0, "", "")}
    blobs = {m.name: data for m, data in members if m.name.startswith("blobs/sha256/")}
    for name, data in blobs.items():  # every blob is complete and matches its name
        assert data is not None and hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    [entry] = json.loads(dict((m.name, d) for m, d in members)["manifest.json"])
    assert entry["RepoTags"] == ["busybox:latest"]


# -- load ---------------------------------------------------------------------------------


@pytest.mark.root
def test_save_then_load_into_another_store_round_trips(
    imgfs: ImgfsRunner, busybox: str, tmp_path: Path
) -> None:
    imgfs("tag", "busybox", "busybox:second")
    archive = tmp_path / "busybox.tar"
    imgfs("save", "-o", str(archive), "busybox", "busybox:second")
    other = imgfs_at(tmp_path / "other-store")
    out = other("load", "-i", str(archive)).stdout
    assert out.splitlines() == ["Loaded image: busybox:latest", "Loaded image: busybox:second"]
    before, after = inspect(imgfs, "busybox"), inspect(other, "busybox:second")
    assert after["Id"] == before["Id"]
    assert after["RepoDigests"] == before["RepoDigests"]
    assert after["Manifest"] == before["Manifest"]
    assert after["RootFS"] == before["RootFS"]
    assert tree_of(layer_dir(other, "busybox")) == tree_of(layer_dir(imgfs, "busybox"))
    with (
        mounted(imgfs, "busybox", tmp_path / "m1") as m1,
        mounted(other, "busybox", tmp_path / "m2") as m2,
    ):
        assert tree_of(m2) == tree_of(m1)
    # Loading again changes nothing; loading an untagged save reports the ID.
    other("load", "-i", str(archive))
    assert len(other("images", "--format", "json").stdout.splitlines()) == 2
    by_id = tmp_path / "by-id.tar"
    imgfs("save", "-o", str(by_id), before["Id"])
    third = imgfs_at(tmp_path / "third-store")
    assert third("load", input=by_id.read_bytes()).stdout == f"Loaded image ID: {before['Id']}\n"


@pytest.mark.interop
def test_load_a_docker_archive_written_by_skopeo(
    imgfs: ImgfsRunner, root: Path, busybox_tar_file: Path, tmp_path: Path
) -> None:
    """skopeo writes docker-archive layers uncompressed, as `<id>/layer.tar` symlinks to
    `<digest>.tar`, and manifest.json last; the source image is gzip (docker-archive can't
    take zstd layers)."""
    imgfs("import", "--compression", "gzip", str(busybox_tar_file), "busybox:gz")
    archive = tmp_path / "docker.tar"
    subprocess.run(
        [
            tool("skopeo"),
            "copy",
            "--quiet",
            f"oci:{root}/oci:docker.io/library/busybox:gz",
            f"docker-archive:{archive}:busybox:fromskopeo",
        ],
        check=True,
    )
    names = [m.name for m, _ in tar_members(archive.read_bytes())]
    assert names[-2:] == ["manifest.json", "repositories"]
    other = imgfs_at(tmp_path / "other-store")
    # gzip-compressed archive, from standard input
    out = other("load", input=gzip.compress(archive.read_bytes())).stdout
    assert out == "Loaded image: busybox:fromskopeo\n"
    source, loaded = inspect(imgfs, "busybox:gz"), inspect(other, "busybox:fromskopeo")
    assert loaded["Id"] == source["Id"]  # the config is kept byte for byte
    assert loaded["RootFS"] == source["RootFS"]
    [layer] = loaded["Manifest"]["Layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert tree_of(layer_dir(other, "busybox:fromskopeo")) == tree_of(
        layer_dir(imgfs, "busybox:gz")
    )
    # Loaded into the store it came from: the image is there already, so it is only tagged.
    assert imgfs("load", "-i", str(archive)).stdout == "Loaded image: busybox:fromskopeo\n"
    assert inspect(imgfs, "busybox:fromskopeo")["RepoDigests"] == source["RepoDigests"]


# -- export -------------------------------------------------------------------------------


@pytest.mark.root
def test_export_then_import_gives_the_container_view(
    imgfs: ImgfsRunner, busybox: str, tmp_path: Path
) -> None:
    require_fuse()
    imgfs("create", "--name", "box", "busybox")
    with mounted(imgfs, "box", tmp_path / "rw") as m:
        (m / "root" / "hi").write_text("hello\n")
        os.link(m / "root" / "hi", m / "root" / "hi2")
        os.link(m / "bin" / "busybox", m / "bin" / "bb")  # a hard link to a lower file
        os.setxattr(m / "root" / "hi", "user.note", b"\x00\xffbinary")
        os.mkfifo(m / "tmp" / "fifo")
        os.mknod(m / "tmp" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.symlink("../etc/hostname", m / "root" / "link")
        (m / "bin" / "vi").unlink()  # a whiteout in the upper dir
        os.rename(m / "etc", m / "etc2")  # a redirected directory
        os.chown(m / "etc2" / "hostname", 5, 6)
        os.chmod(m / "bin" / "busybox", 0o4755)
        os.mkdir(m / "home" / "ünïcode dir")
        live = imgfs_bytes(tmp_path / "store", "export", "box")
    exported = tmp_path / "box.tar"
    imgfs("export", "box", "-o", str(exported))
    data = exported.read_bytes()
    members = tar_members(data)
    names = [m.name for m, _ in members]
    assert names[0] == "." and names == sorted(names, key=lambda n: n.encode())
    assert not any(".wh." in n for n in names)
    assert "./bin/vi" not in names and "./etc2/hostname" in names and "./etc" not in names
    kinds = {m.name: m for m, _ in members}
    assert kinds["./root/hi2"].islnk() and kinds["./root/hi2"].linkname == "./root/hi"
    assert kinds["./tmp/fifo"].isfifo() and kinds["./tmp/null"].ischr()
    # deterministic, stdout by default, and the live mount showed the same tree
    assert imgfs_bytes(tmp_path / "store", "export", "box") == data
    assert listing(live) == listing(data)
    imgfs("import", str(exported), "exported")
    with (
        mounted(imgfs, "box", tmp_path / "c", "ro") as container,
        mounted(imgfs, "exported", tmp_path / "i") as image,
    ):
        want = tree_of(container, with_root=True)
        assert tree_of(image, with_root=True) == want
    assert tree_of(layer_dir(imgfs, "exported"), with_root=True) == want
    assert want["root/hi"][5] == (("user.note", b"\x00\xffbinary"),)
    assert ("bin/bb", "bin/busybox") in want["<hard links>"]


@pytest.mark.root
def test_export_of_a_mounted_container_reads_its_live_mount(
    imgfs: ImgfsRunner, busybox: str, tmp_path: Path
) -> None:
    require_fuse()
    imgfs("create", "--name", "box", "busybox")

    def export() -> bytes:
        return imgfs_bytes(tmp_path / "store", "export", "box")

    with mounted(imgfs, "box", tmp_path / "rw") as m:
        (m / "etc" / "added").write_text("x")
        live = export()
    assert listing(export()) == listing(live)
    assert "./etc/added" in [m.name for m, _ in tar_members(live)]
    assert_user_error(imgfs("export", "nosuch", check=False), "no such container")


# -- hostile and broken archives ------------------------------------------------------------

SMALL = tf.build(
    [tf.directory("etc"), tf.reg("etc/hostname", b"small\n"), tf.reg("etc/motd", b"hi\n")]
)
EVIL_LAYER = tf.build([tf.reg("../evil", b"x")])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_archive(
    layer: bytes = SMALL,
    *,
    diff_id: str | None = None,
    config_name: str | None = None,
    layer_name: str = "abc/layer.tar",
    extra: list[tf.Member] | None = None,
) -> bytes:
    """A legacy `docker save` archive of one single-layer image."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id or "sha256:" + _sha(layer)]},
        }
    ).encode()
    config_name = config_name or f"{_sha(config)}.json"
    manifest = [{"Config": config_name, "RepoTags": ["small:docker"], "Layers": [layer_name]}]
    return tf.build(
        [
            tf.directory("abc"),
            tf.reg("abc/layer.tar", layer),
            tf.reg(f"{_sha(config)}.json", config),
            *(extra or []),
            tf.reg("manifest.json", json.dumps(manifest).encode()),
        ]
    )


def rewrite(archive: bytes, change: Callable[[str, bytes], tuple[str, bytes] | None]) -> bytes:
    """The archive with each regular member passed through `change` (None drops it)."""
    members: list[tf.Member] = []
    for info, data in tar_members(archive):
        if data is not None:
            changed = change(info.name, data)
            if changed is None:
                continue
            info.name, data = changed
            info.size = len(data)
        members.append((info, data))
    return tf.build(members)


def _layer_blob(archive: bytes) -> str:
    index = json.loads(dict((m.name, d) for m, d in tar_members(archive))["manifest.json"])
    return index[0]["Layers"][0]


def _corrupt_layer(archive: bytes) -> bytes:
    target = _layer_blob(archive)
    return rewrite(
        archive, lambda n, d: (n, d[:-1] + bytes([d[-1] ^ 1])) if n == target else (n, d)
    )


def _drop_layer(archive: bytes) -> bytes:
    target = _layer_blob(archive)
    return rewrite(archive, lambda n, d: None if n == target else (n, d))


def _bad_descriptor_digest(archive: bytes) -> bytes:
    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "index.json":
            doc = json.loads(data)
            doc["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
            return name, json.dumps(doc).encode()
        return name, data

    return rewrite(archive, change)


def _descriptor_size(archive: bytes) -> bytes:
    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "index.json":
            doc = json.loads(data)
            doc["manifests"][0]["size"] += 1
            return name, json.dumps(doc).encode()
        return name, data

    return rewrite(archive, change)


def _no_index(archive: bytes) -> bytes:
    return rewrite(archive, lambda n, d: None if n in ("index.json", "manifest.json") else (n, d))


def _with_member(member: tf.Member) -> Callable[[bytes], bytes]:
    def add(archive: bytes) -> bytes:
        return tf.build([*(m for m in tar_members(archive)), member])

    return add


# case name → (archive made from a good OCI archive of SMALL, or bytes; expected fragment)
HOSTILE: dict[str, tuple[Callable[[bytes], bytes] | bytes, str]] = {
    "corrupt blob": (_corrupt_layer, "does not match its digest"),
    "missing blob": (_drop_layer, "missing from the archive"),
    "descriptor digest outside": (_bad_descriptor_digest, "invalid digest"),
    "descriptor size": (_descriptor_size, "descriptor says"),
    "truncated": (lambda a: a[: len(a) * 6 // 10], "truncated"),
    "truncated zstd": (
        lambda a: zstandard.ZstdCompressor().compress(a)[:-40],
        "zstd",
    ),
    "no end marker": (lambda a: a[: a.rstrip(b"\0").__len__() + 512], "truncated"),
    "not an archive": (b"this is not an archive\n" * 50, "tar"),
    "empty input": (b"", "empty"),
    "no index": (_no_index, "not an image archive"),
    "absolute member": (_with_member(tf.reg("/etc/evil", b"x")), "absolute"),
    "dot-dot member": (_with_member(tf.reg("a/../../evil", b"x")), ".."),
    "device member": (_with_member(tf.device("dev/null", 1, 3)), "unexpected entry"),
    "docker: layer outside": (
        docker_archive(layer_name="../../../etc/passwd"),
        "points outside the archive",
    ),
    "docker: absolute config": (docker_archive(config_name="/etc/passwd"), "outside"),
    "docker: symlink outside": (
        docker_archive(
            layer_name="abc/link.tar", extra=[tf.symlink("abc/link.tar", "../../etc/passwd")]
        ),
        "outside the archive",
    ),
    "docker: wrong diff_id": (docker_archive(diff_id="sha256:" + "0" * 64), "diff_id"),
    "docker: config digest": (
        docker_archive(config_name="0" * 64 + ".json", extra=[tf.reg("0" * 64 + ".json", b"{}")]),
        "does not match its digest",
    ),
    "docker: missing layer": (docker_archive(layer_name="nothere/layer.tar"), "missing"),
    "docker: hostile layer": (docker_archive(EVIL_LAYER), "../evil"),
}


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An OCI archive (from `imgfs save`) of a one-layer image of SMALL."""
    root = tmp_path_factory.mktemp("small")
    run = imgfs_at(root / "store")
    run("import", "-", "small:oci", input=SMALL)
    run("save", "-o", str(root / "small.tar"), "small:oci")
    return (root / "small.tar").read_bytes()


def test_hostile_inputs_load_when_intact(
    imgfs: ImgfsRunner, small_archive: bytes, tmp_path: Path
) -> None:
    """The unmodified inputs the hostile cases start from do load."""
    assert imgfs("load", input=small_archive).stdout == "Loaded image: small:oci\n"
    assert imgfs("load", input=docker_archive()).stdout == "Loaded image: small:docker\n"
    assert tree_of(layer_dir(imgfs, "small:oci")) == tree_of(layer_dir(imgfs, "small:docker"))


@pytest.mark.root
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_store_unchanged(
    case: str, imgfs: ImgfsRunner, root: Path, small_archive: bytes, tmp_path: Path
) -> None:
    require_root()
    imgfs("import", "-", "base", input=tf.build([tf.reg("base", b"base\n")]))
    before = snapshot(root)
    spec, fragment = HOSTILE[case]
    data = spec(small_archive) if callable(spec) else spec
    path = tmp_path / "archive.tar"
    path.write_bytes(data)
    assert_user_error(imgfs("load", "-i", str(path), check=False), fragment)
    assert snapshot(root) == before
    assert not Path("/etc/evil").exists()
