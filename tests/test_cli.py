"""The imgfs command as users run it: output formats, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import ImgfsRunner, assert_user_error, snapshot


def test_import_images_inspect_history(imgfs: ImgfsRunner, busybox_tar_file: Path) -> None:
    out = imgfs(
        "import",
        "-m",
        "the base",
        "-c",
        'CMD ["sh"]',
        "-c",
        "ENV A=1 B='two words'",
        "-c",
        "WORKDIR /root",
        "-c",
        "EXPOSE 8080",
        "-c",
        "LABEL org.example=yes",
        "-c",
        "USER nobody",
        str(busybox_tar_file),
        "busybox:1.0",
    ).stdout.strip()
    assert out.startswith("sha256:") and len(out) == 71
    table = imgfs("images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = table[1].split()
    assert row[:3] == ["busybox", "1.0", out[7:19]]
    assert imgfs("images", "-q").stdout.split() == [out[7:19]]
    assert "sha256:" in imgfs("images", "--digests").stdout
    [doc] = json.loads(imgfs("inspect", "busybox:1.0").stdout)
    assert doc["Id"] == out
    assert doc["RepoTags"] == ["busybox:1.0"]
    assert doc["Config"] == {
        "Cmd": ["sh"],
        "Env": ["A=1", "B=two words"],
        "WorkingDir": "/root",
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"org.example": "yes"},
        "User": "nobody",
    }
    assert doc["Comment"] == "the base"
    assert doc["Os"] == "linux"
    history = imgfs("history", "busybox:1.0").stdout.splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]
    assert out[7:19] in history[1] and "imgfs import busybox.tar" in history[1]
    lines = imgfs("images", "--format", "json").stdout.splitlines()
    assert json.loads(lines[0])["Repository"] == "busybox"


def test_import_from_stdin_untagged(imgfs: ImgfsRunner, busybox_tar: bytes) -> None:
    image_id = imgfs("import", "-", input=busybox_tar).stdout.strip()
    assert imgfs("images").stdout.splitlines()[1].split()[:3] == [
        "<none>",
        "<none>",
        image_id[7:19],
    ]
    imgfs("tag", image_id[7:13], "localhost:5000/me/box:v2")
    out = imgfs("images", "localhost:5000/me/box").stdout.splitlines()
    assert out[1].split()[:2] == ["localhost:5000/me/box", "v2"]
    assert len(imgfs("images", "other").stdout.splitlines()) == 1
    assert imgfs("rmi", "localhost:5000/me/box:v2").stdout.splitlines() == [
        "Untagged: localhost:5000/me/box:v2",
        f"Deleted: {image_id}",
    ]
    assert imgfs("images", "-q").stdout == ""


def test_user_errors_are_one_line(
    imgfs: ImgfsRunner, busybox_tar_file: Path, tmp_path: Path, root: Path
) -> None:
    imgfs("import", str(busybox_tar_file), "base")
    before = snapshot(root)
    cases = [
        (("import", str(tmp_path / "missing.tar")), "cannot open"),
        (("import", str(tmp_path)), "Is a directory"),
        (("import", str(busybox_tar_file), "Upper"), "must be lowercase"),
        (("import", str(busybox_tar_file), "x:" + "t" * 129), "tag"),
        (("import", "-c", "FROB x", str(busybox_tar_file)), "not supported"),
        (("import", "-c", "CMD [not json", str(busybox_tar_file)), "JSON"),
        (("tag", "nosuch", "x"), "no such image"),
        (("tag", "base", "Bad Name"), "invalid reference"),
        (("rmi", "nosuch"), "no such image"),
        (("inspect", "nosuch"), "no such image"),
        (("history", "nosuch"), "no such image"),
        (("images", "-x"), "unrecognized arguments"),
        (("frobnicate",), "invalid choice"),
        (("import",), "required"),
    ]
    for args, fragment in cases:
        assert_user_error(imgfs(*args, check=False), fragment)
    assert snapshot(root) == before


def test_rmi_partial_failure_reports_each(imgfs: ImgfsRunner, busybox_tar_file: Path) -> None:
    imgfs("import", str(busybox_tar_file), "keep")
    result = imgfs("rmi", "nosuch", "keep", check=False)
    assert result.returncode == 1
    assert "no such image: nosuch" in result.stderr
    assert "Untagged: keep:latest" in result.stdout


def test_python_dash_m_works(imgfs: ImgfsRunner) -> None:
    assert imgfs("--version").stdout.startswith("imgfs ")
