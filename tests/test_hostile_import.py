"""Hostile and broken tarballs through `imgfs import`: one clear line, a non-zero exit,
nothing written outside the store, and the store exactly as it was."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

import tarfactory as tf
from conftest import ImgfsRunner, assert_user_error, require_root, snapshot

GOOD = tf.build([tf.directory("etc"), tf.reg("etc/hostname", b"box\n")])


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _through_symlink_to(canary: Path) -> bytes:
    return tf.build([tf.symlink("link", str(canary)), tf.reg("link/pwned", b"x")])


HOSTILE: dict[str, tuple[bytes | Callable[[Path], bytes], str]] = {
    "absolute name": (tf.build([tf.reg("/etc/evil", b"x")]), "/etc/evil"),
    "dot-dot": (tf.build([tf.reg("../evil", b"x")]), "../evil"),
    "dot-dot inside": (tf.build([tf.directory("a"), tf.reg("a/../../evil", b"x")]), "a/../../evil"),
    "symlinked parent to outside": (_through_symlink_to, "link/pwned"),
    "symlinked parent inside": (
        tf.build([tf.directory("d"), tf.symlink("l", "d"), tf.reg("l/f", b"x")]),
        "l/f",
    ),
    "hardlink to host file": (tf.build([tf.hardlink("passwd", "/etc/passwd")]), "passwd"),
    "hardlink escaping": (tf.build([tf.hardlink("x", "../x")]), "x"),
    "hardlink to missing": (tf.build([tf.hardlink("x", "nothere")]), "x"),
    "reserved whiteout": (tf.build([tf.reg(".wh..wh.foo")]), ".wh..wh.foo"),
    "overlay xattr": (
        tf.build([tf.directory("d", xattrs={"trusted.overlay.redirect": "/etc"})]),
        "d",
    ),
    "truncated in data": (_cut(tf.build([tf.reg("big", b"y" * 100_000)]), 0.5), "truncated"),
    "truncated header": (GOOD[:700], "tar"),
    "garbage": (b"this is not a tarball at all\n" * 40, "tar"),
    "empty input": (b"", "empty"),
    "gzip garbage": (b"\x1f\x8b\x08\x00" + b"\xff" * 200, "gzip"),
    "zstd garbage": (b"\x28\xb5\x2f\xfd" + b"\x00\xff" * 100, "zstd"),
    "truncated gzip": (_cut(gzip.compress(GOOD * 3), 0.6), "gzip"),
    "truncated zstd": (_cut(zstandard.ZstdCompressor().compress(GOOD * 3), 0.6), "zstd"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarball_is_refused_and_store_unchanged(
    case: str, imgfs: ImgfsRunner, root: Path, tmp_path: Path
) -> None:
    require_root()
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("untouched")
    imgfs("import", "-", "base", input=GOOD)
    before = snapshot(root)
    spec, fragment = HOSTILE[case]
    data = spec(canary) if callable(spec) else spec
    source = tmp_path / "input.tar"
    source.write_bytes(data)
    result = imgfs("import", str(source), "evil", check=False)
    assert_user_error(result, fragment)
    assert snapshot(root) == before
    assert sorted(p.name for p in canary.iterdir()) == ["keep"]
    assert (canary / "keep").read_text() == "untouched"


def test_stdin_hostile_import_refused(imgfs: ImgfsRunner, root: Path) -> None:
    require_root()
    imgfs("import", "-", "base", input=GOOD)
    before = snapshot(root)
    assert_user_error(imgfs("import", "-", input=b"\x00" * 10, check=False))
    assert snapshot(root) == before


def test_corrupted_store_blob_gives_clear_error(imgfs: ImgfsRunner, root: Path) -> None:
    image_id = imgfs("import", "-", "base", input=GOOD).stdout.strip()
    config = root / "oci" / "blobs" / "sha256" / image_id[7:]
    config.write_bytes(config.read_bytes()[:-3])
    assert_user_error(imgfs("images", check=False), "corrupt")
    assert_user_error(imgfs("inspect", "base", check=False), "corrupt")
