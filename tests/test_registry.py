"""pull, push, login, logout and search against real docker-registry servers on loopback:
plain, htpasswd, TLS with a test CA, and token auth; skopeo as the independent client on
the other side; faults injected by killing the registry, cutting connections mid-blob and
corrupting blobs in the registry's storage."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pty
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from mounts import mounted, tree_of

from unionfs import reference
from unionfs.errors import RegistryError, Unauthorized
from unionfs.layers.compression import Compression
from unionfs.progress import LineProgress
from unionfs.registry.auth import (
    Credentials,
    find_credentials,
    parse_challenges,
    remove_credentials,
    store_credentials,
)
from unionfs.registry.client import RetryPolicy
from unionfs.registry.connect import RegistryOptions
from unionfs.registry.hosts import TlsOptions, endpoint_host, host_settings, is_loopback
from unionfs.registry.manifests import parse_platform
from unionfs.registry.pull import pull
from unionfs.registry.push import push
from unionfs.registry.search import search
from unionfs.store.images import ImageStore

from conftest import ImgfsRunner, Result, assert_user_error, imgfs_runner, snapshot
from registryd import (
    PASSWORD,
    USER,
    Registry,
    Relay,
    basic_registry,
    registry,
    skopeo,
    skopeo_copy,
    skopeo_inspect,
    tls_registry,
    token_registry,
)

__all__ = ["basic_registry", "registry", "tls_registry", "token_registry"]

BUSYBOX = "docker.io/library/busybox:latest"
FAST_RETRY = RetryPolicy(attempts=6, base_delay=0.2, max_delay=2.0)


@pytest.fixture
def auth_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private auth.json for this test (the imgfs subprocesses inherit the variable)."""
    path = tmp_path / "auth" / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    return path


@pytest.fixture
def imgfs(root: Path, auth_env: Path) -> ImgfsRunner:
    return imgfs_runner(root)


@pytest.fixture
def imported(imgfs: ImgfsRunner, busybox_tar_file: Path) -> str:
    imgfs("import", str(busybox_tar_file), "busybox")
    return BUSYBOX


def image_id(imgfs: ImgfsRunner, name: str) -> str:
    return json.loads(imgfs("inspect", name).stdout)[0]["Id"]


def pushed_away(
    imgfs: ImgfsRunner, registry: Registry, tmp_path: Path, repo: str, size: int
) -> tuple[str, str]:
    """An image whose one layer holds `size` random bytes (so its blob is that large),
    pushed to `registry` as `repo:1` and removed from the store: (its remote name, its ID)."""
    tar = tmp_path / "payload.tar"
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(size))
    with tarfile.open(tar, "w") as t:
        t.add(payload, "payload")
    imgfs("import", str(tar), "big")
    remote = registry.ref(f"{repo}:1")
    imgfs("push", "big", remote)
    image_id = json.loads(imgfs("inspect", "big").stdout)[0]["Id"]
    imgfs("rmi", "big")
    return remote, image_id


# -- round trips and skopeo interop --------------------------------------------------------


def test_push_rmi_pull_gives_back_the_same_image_and_tree(
    registry: Registry, imgfs: ImgfsRunner, imported: str, tmp_path: Path
) -> None:
    remote = registry.ref("tests/busybox:1")
    original = image_id(imgfs, imported)
    with mounted(imgfs, imported, tmp_path / "before") as m:
        before = tree_of(m)
    out = imgfs("push", imported, remote)
    assert out.stdout.splitlines()[-1].startswith("1: digest: sha256:")
    # skopeo, an independent client, reads what we pushed: our zstd layer kept its type
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{remote}"))
    assert [lay["mediaType"] for lay in raw["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ]
    skopeo_copy(f"docker://{remote}", f"oci:{tmp_path / 'copy'}:x", registry=registry)
    imgfs("rmi", imported)
    assert imgfs("images", "-q").stdout == ""
    pulled = imgfs("pull", remote)
    assert "Downloaded newer image" in pulled.stdout
    assert image_id(imgfs, remote) == original, "same config, same image ID"
    with mounted(imgfs, remote, tmp_path / "after") as m:
        assert tree_of(m) == before
    again = imgfs("pull", remote)
    assert "Image is up to date" in again.stdout


def test_pull_of_a_docker_schema2_gzip_image_pushed_by_skopeo(
    registry: Registry, imgfs: ImgfsRunner, busybox_tar_file: Path, root: Path, tmp_path: Path
) -> None:
    imgfs("import", "--compression", "gzip", str(busybox_tar_file), "gz")
    remote = registry.ref("tests/docker:v2s2")
    skopeo_copy(
        f"oci:{root / 'oci'}:docker.io/library/gz:latest",
        f"docker://{remote}",
        registry=registry,
        extra=["--format", "v2s2"],
    )
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{remote}"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    imgfs("pull", remote)
    # skopeo's own copy of the image, unpacked with tar, is the reference tree
    skopeo("copy", "--src-tls-verify=false", f"docker://{remote}", f"dir:{tmp_path / 'dir'}")
    manifest = json.loads((tmp_path / "dir" / "manifest.json").read_text())
    expected = tmp_path / "expected"
    expected.mkdir()
    for layer in manifest["layers"]:
        blob = tmp_path / "dir" / layer["digest"].removeprefix("sha256:")
        with tarfile.open(blob) as t:
            t.extractall(expected, numeric_owner=True, filter="fully_trusted")
            for m in t.getmembers():  # tarfile leaves symlinks with the time of extraction
                if m.issym():
                    os.utime(expected / m.name, (m.mtime, m.mtime), follow_symlinks=False)
    with mounted(imgfs, remote, tmp_path / "m") as m:
        assert tree_of(m) == tree_of(expected)
    assert json.loads(imgfs("inspect", remote).stdout)[0]["RootFS"]["Layers"] == [
        json.loads(imgfs("inspect", "gz").stdout)[0]["RootFS"]["Layers"][0]
    ]


def make_two_platform_index(store: Path, tmp_path: Path) -> Path:
    """An OCI layout with one index tagged `multi`: the store's busybox image as
    linux/amd64 and the same layer under an arm64 config as linux/arm64/v8."""
    layout = tmp_path / "multi"
    shutil.copytree(store / "oci", layout)
    index = json.loads((layout / "index.json").read_text())
    [entry] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == BUSYBOX
    ]

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def put(doc: dict) -> dict:
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(digest).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    manifest = json.loads(blob(entry["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    arm_config = put({**config, "architecture": "arm64", "variant": "v8"})
    arm_manifest = put({**manifest, "config": {**manifest["config"], **arm_config}})
    amd = {"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]}
    arm = {"mediaType": entry["mediaType"], **arm_manifest}
    idx = put(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
                {**arm, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ],
        }
    )
    index["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            **idx,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    ]
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_pull_picks_the_platform_from_an_oci_index(
    registry: Registry, imgfs: ImgfsRunner, imported: str, root: Path, tmp_path: Path
) -> None:
    layout = make_two_platform_index(root, tmp_path)
    remote = registry.ref("tests/multi:1")
    skopeo_copy(f"oci:{layout}:multi", f"docker://{remote}", registry=registry, extra=["--all"])
    imgfs("rmi", imported)

    def arch(name: str) -> str:
        return json.loads(imgfs("inspect", name).stdout)[0]["Architecture"]

    imgfs("pull", "--platform", "linux/amd64", remote)
    assert arch(remote) == "amd64"
    imgfs("pull", "--platform", "linux/arm64", remote)
    assert arch(remote) == "arm64"
    assert imgfs("images", "-q").stdout.count("\n") == 2, "the amd64 image stays, untagged"
    result = imgfs("pull", "--platform", "linux/s390x", remote, check=False)
    assert_user_error(result, "no image for platform linux/s390x", "linux/amd64", "linux/arm64")


# -- authentication --------------------------------------------------------------------


def test_login_basic_auth_file_is_private_and_shared_with_skopeo(
    basic_registry: Registry, imgfs: ImgfsRunner, imported: str, auth_env: Path
) -> None:
    reg = basic_registry
    remote = reg.ref("private/busybox:1")
    result = imgfs("push", imported, remote, check=False)
    assert_user_error(result, "authentication required", f"imgfs login {reg.host}")
    wrong = imgfs("login", "-u", USER, "--password-stdin", reg.host, input=b"nope\n", check=False)
    assert_user_error(wrong, "incorrect username or password")
    assert not auth_env.exists()
    ok = imgfs("login", "-u", USER, "--password-stdin", reg.host, input=f"{PASSWORD}\n".encode())
    assert "Login Succeeded" in ok.stdout
    assert stat.S_IMODE(auth_env.stat().st_mode) == 0o600
    assert reg.host in json.loads(auth_env.read_text())["auths"]
    imgfs("push", imported, remote)
    # skopeo reads the same credentials file
    skopeo("inspect", "--tls-verify=false", f"--authfile={auth_env}", f"docker://{remote}")
    imgfs("rmi", imported)
    imgfs("pull", remote)
    imgfs("logout", reg.host)
    assert reg.host not in json.loads(auth_env.read_text())["auths"]
    assert_user_error(imgfs("logout", reg.host, check=False), "not logged in")
    assert_user_error(imgfs("pull", remote, check=False), "authentication required")


def test_token_auth_caches_tokens_and_names_the_missing_login(
    token_registry: Registry, imgfs: ImgfsRunner, imported: str
) -> None:
    reg = token_registry
    remote = reg.ref("team/busybox:1")
    assert_user_error(imgfs("pull", remote, check=False), "authentication required")
    imgfs("login", "-u", USER, "--password-stdin", reg.host, input=f"{PASSWORD}\n".encode())
    before = reg.issuer.issued
    imgfs("push", imported, remote)
    pushed = reg.issuer.issued - before
    assert 1 <= pushed <= 3, f"a push of 2 blobs and a manifest fetched {pushed} tokens"
    imgfs("rmi", imported)
    before = reg.issuer.issued
    imgfs("pull", remote)
    assert reg.issuer.issued - before <= 2
    result = imgfs("push", "--creds", f"{USER}:wrong", remote, reg.ref("team/other:1"), check=False)
    assert_user_error(result, "incorrect username or password")


async def test_an_expired_token_is_fetched_again(
    token_registry: Registry, root: Path, busybox_tar_file: Path
) -> None:
    reg = token_registry
    store = ImageStore(root)
    imgfs_runner(root)("import", str(busybox_tar_file), "busybox")
    options = RegistryOptions(credentials=Credentials(USER, PASSWORD), retry=FAST_RETRY)
    reg.issuer.token_lifetime = -120  # every token is already expired for the registry
    ref = reference.parse(reg.ref("team/expired:1"))
    with pytest.raises(Unauthorized):
        await push(store, store.find("busybox"), ref, options=options)
    reg.issuer.token_lifetime = None
    await push(store, store.find("busybox"), ref, options=options)


def test_tls_needs_the_ca_or_tls_verify_false(
    tls_registry: Registry, imgfs: ImgfsRunner, imported: str
) -> None:
    reg = tls_registry
    remote = reg.ref("secure/busybox:1")
    result = imgfs("push", imported, remote, check=False)
    assert_user_error(result, "cannot verify the TLS certificate", "--cert-dir")
    imgfs("push", "--cert-dir", str(reg.cert_dir), imported, remote)
    imgfs("rmi", imported)
    imgfs("pull", "--tls-verify=false", remote)
    imgfs("rmi", remote)
    imgfs("pull", "--cert-dir", str(reg.cert_dir), remote)


def test_insecure_registry_from_registries_conf(
    tls_registry: Registry,
    imgfs: ImgfsRunner,
    imported: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{tls_registry.host}"\ninsecure = true\n')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    imgfs("push", imported, tls_registry.ref("conf/busybox:1"))


# -- faults ----------------------------------------------------------------------------


def test_unknown_tag_and_unreachable_registry_fail_cleanly(
    registry: Registry, imgfs: ImgfsRunner, imported: str, root: Path
) -> None:
    before = snapshot(root)
    assert_user_error(imgfs("pull", registry.ref("tests/none:1"), check=False), "manifest unknown")
    assert_user_error(imgfs("pull", "not a ref", check=False), "invalid reference format")
    assert_user_error(imgfs("push", "missing:1", registry.ref("x:1"), check=False), "no such image")
    assert_user_error(
        imgfs("push", imported, registry.ref("x@sha256:" + "0" * 64), check=False),
        "cannot push to a digest reference",
    )
    assert_user_error(imgfs("search", "--limit", "0", f"{registry.host}/x", check=False), "limit")
    assert snapshot(root) == before


def test_corrupt_blob_on_the_registry_is_refused_and_nothing_is_stored(
    registry: Registry, imgfs: ImgfsRunner, imported: str, root: Path, tmp_path: Path
) -> None:
    remote = registry.ref("tests/corrupt:1")
    imgfs("push", imported, remote)
    imgfs("rmi", imported)
    before = snapshot(root)
    layer = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{remote}"))["Layers"][0]
    data = registry.blob_data_path(layer)
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data.write_bytes(bytes(content))
    result = imgfs("pull", remote, check=False)
    assert_user_error(result, "does not match its digest", layer)
    assert snapshot(root) == before


async def test_a_connection_cut_mid_blob_resumes_with_range(
    registry: Registry, imgfs: ImgfsRunner, root: Path, tmp_path: Path
) -> None:
    _, expected = pushed_away(imgfs, registry, tmp_path, "tests/big", 8 << 20)
    store = ImageStore(root)
    with Relay.to(registry) as relay:
        relay.cut_after(3 << 20)  # mid-way through the 8 MiB layer
        ref = reference.parse(f"{relay.host}/tests/big:1")
        result = await pull(store, ref, options=RegistryOptions(retry=FAST_RETRY))
        assert relay.connections >= 2, "the cut connection was followed by a resumed one"
    assert result.image.id == expected
    assert not (root / "tmp" / "downloads").exists()


def test_partial_download_from_an_earlier_pull_is_resumed_or_redone(
    registry: Registry, imgfs: ImgfsRunner, root: Path, tmp_path: Path
) -> None:
    remote, expected = pushed_away(imgfs, registry, tmp_path, "tests/resume", 2 << 20)
    [digest] = skopeo_inspect(f"docker://{remote}", registry=registry)["Layers"]
    blob = registry.blob_data_path(digest).read_bytes()
    downloads = root / "tmp" / "downloads"
    part = downloads / (digest.removeprefix("sha256:") + ".part")
    for leftover in (blob[: len(blob) // 2], b"\0" * (len(blob) // 2)):
        # an interrupted pull left the first half (resumed), or garbage (fetched afresh)
        downloads.mkdir(parents=True, exist_ok=True)
        part.write_bytes(leftover)
        imgfs("pull", remote)
        assert ImageStore(root).find(remote).id == expected
        assert not part.exists()
        imgfs("rmi", remote)


def test_registry_killed_mid_pull_then_restarted(
    registry: Registry, imgfs: ImgfsRunner, root: Path, tmp_path: Path
) -> None:
    remote, _ = pushed_away(imgfs, registry, tmp_path, "tests/killed", 6 << 20)
    before = snapshot(root)
    with Relay.to(registry, bytes_per_second=2 << 20) as relay:
        via_relay = f"{relay.host}/tests/killed:1"
        proc = subprocess.Popen(
            [sys.executable, "-m", "unionfs", "pull", via_relay],
            env=dict(os.environ, IMGFS_ROOT=str(root)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        relay.wait_for_bytes(1 << 20)
        registry.kill()
        relay.drop()
        time.sleep(1.0)
        registry.start()
        _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the retries outlived the outage and resumed the download
        assert ImageStore(root).find(via_relay)
        return
    # gave up cleanly: one line, nothing but a partial download kept, and a retry works
    assert err.decode().startswith("imgfs: ") and err.decode().count("\n") == 1, err
    assert _only_partial_downloads(root, before)
    imgfs("pull", remote)
    assert ImageStore(root).find(remote)


def _only_partial_downloads(root: Path, before: dict) -> bool:
    now = snapshot(root)
    extra = {k for k in now if k not in before}
    return all(k.startswith("tmp/downloads") for k in extra)


# -- push details ----------------------------------------------------------------------


async def test_chunked_upload_cross_repository_mount_and_gzip_recompression(
    registry: Registry, root: Path, busybox_tar_file: Path
) -> None:
    imgfs_runner(root)("import", str(busybox_tar_file), "busybox")
    store = ImageStore(root)
    image = store.find("busybox")
    options = RegistryOptions(retry=FAST_RETRY)
    first = reference.parse(registry.ref("team/a:1"))
    await push(store, image, first, options=options, chunk_size=64 << 10)
    info = skopeo_inspect(f"docker://{first}", registry=registry)
    assert info["Layers"] == [lay["digest"] for lay in image.layers]

    progress = LineProgress()
    second = reference.parse(registry.ref("team/b:1"))
    await push(store, image, second, options=options, progress=progress)
    assert any("Mounted from team/a" in line for line in progress.lines.values()), progress.lines

    third = reference.parse(registry.ref("team/gz:1"))
    result = await push(store, image, third, options=options, compression=Compression.GZIP)
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{third}"))
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    again = await push(store, image, third, options=options, compression=Compression.GZIP)
    assert again.digest == result.digest, "recompression is deterministic"
    other = ImageStore(root.parent / "other")
    pulled = await pull(other, third, options=options)
    assert pulled.image.id == image.id, "same config: the same image"


# -- search ----------------------------------------------------------------------------


def test_search_lists_matching_repositories_with_tags(
    registry: Registry, imgfs: ImgfsRunner, imported: str
) -> None:
    for name in ("apps/web:1", "apps/web:2", "apps/db:1", "tools/webhook:x"):
        imgfs("push", imported, registry.ref(name))
    out = imgfs("search", "--registry", registry.host, "web").stdout.splitlines()
    assert out[0].split() == ["NAME", "TAGS"]
    assert [line.split()[0] for line in out[1:]] == [
        f"{registry.host}/apps/web",
        f"{registry.host}/tools/webhook",
    ]
    assert "1, 2" in out[1]
    doc = json.loads(imgfs("search", "--format", "json", f"{registry.host}/db").stdout)
    assert doc == [{"name": f"{registry.host}/apps/db", "tags": ["1"]}]
    assert (
        len(
            json.loads(
                imgfs("search", "--format", "json", "--limit", "1", f"{registry.host}/web").stdout
            )
        )
        == 1
    )


async def test_search_follows_catalog_pagination(
    registry: Registry, root: Path, busybox_tar_file: Path
) -> None:
    imgfs_runner(root)("import", str(busybox_tar_file), "busybox")
    store = ImageStore(root)
    for i in range(5):
        await push(store, store.find("busybox"), reference.parse(registry.ref(f"p/r{i}:1")))
    found = await search(registry.host, "p/r", page=2)
    assert [r.name for r in found] == [f"{registry.host}/p/r{i}" for i in range(5)]


def test_registry_commands_refuse_bad_arguments(imgfs: ImgfsRunner) -> None:
    for args, fragment in [
        (("login", "--password", "x", "--password-stdin", "-u", "u", "h:1"), "cannot be used"),
        (("pull", "--platform", "linux", "h:1/x"), "invalid platform"),
        (("pull", "--tls-verify=maybe", "h:1/x"), "expected true or false"),
        (("login", "-u", "u", "a/b"), "invalid registry"),
    ]:
        result: Result = imgfs(*args, check=False, input=b"pw\n")
        assert_user_error(result, fragment)


# -- the pieces without a server -------------------------------------------------------


def test_docker_hub_and_self_hosted_names_reach_the_right_endpoint() -> None:
    assert endpoint_host(reference.parse("ubuntu").domain) == "registry-1.docker.io"
    assert reference.parse("ubuntu").path == "library/ubuntu"
    assert reference.parse("user/app").path == "user/app"
    assert endpoint_host(reference.parse("ghcr.io/o/app:1").domain) == "ghcr.io"
    assert endpoint_host(reference.parse("myhost:5000/team/app").domain) == "myhost:5000"
    for host, loopback in [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.0.1", True),
        ("[::1]:5000", True),
        ("registry.example.com", False),
        ("10.0.0.1:5000", False),
    ]:
        assert is_loopback(host) is loopback, host
        assert host_settings(host, TlsOptions()).allow_http is loopback, host
    assert host_settings("registry.example.com", TlsOptions(verify=False)).allow_http


def test_credentials_are_read_from_podman_and_docker_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    (tmp_path / "docker" / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")},
                    "reg.example:5000": {"auth": b64("d:dpw")},
                    "reg.example:5000/team": {"auth": b64("team:tpw")},
                }
            }
        )
    )
    assert find_credentials("docker.io", "library/ubuntu") == Credentials("hubuser", "hubpw")
    assert find_credentials("reg.example:5000", "other/app") == Credentials("d", "dpw")
    assert find_credentials("reg.example:5000", "team/app") == Credentials("team", "tpw")
    assert find_credentials("elsewhere.example", "x") is None
    # a podman login (the runtime auth.json) wins over docker's file
    written = store_credentials("reg.example:5000", Credentials("p", "ppw"))
    assert written == tmp_path / "run" / "containers" / "auth.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert find_credentials("reg.example:5000", "other/app") == Credentials("p", "ppw")
    assert remove_credentials("reg.example:5000") == [written, tmp_path / "docker" / "config.json"]
    assert find_credentials("reg.example:5000", "other/app") is None


def test_challenges_and_platforms_parse_as_registries_write_them() -> None:
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params["scope"] == "repository:library/ubuntu:pull"
    assert [c.scheme for c in parse_challenges('Basic realm="x", Bearer realm="y"')] == [
        "basic",
        "bearer",
    ]
    assert str(parse_platform("linux/arm64/v8")) == "linux/arm64/v8"
    assert parse_platform("linux/arm64").matches({"os": "linux", "architecture": "arm64"})
    assert parse_platform("linux/arm64/v8").matches({"os": "linux", "architecture": "arm64"})
    assert not parse_platform("linux/arm/v7").matches(
        {"os": "linux", "architecture": "arm", "variant": "v6"}
    )


def test_pull_shows_layer_progress_on_a_terminal(
    registry: Registry, imgfs: ImgfsRunner, imported: str, root: Path
) -> None:
    remote = registry.ref("tests/progress:1")
    imgfs("push", imported, remote)
    imgfs("rmi", imported)
    primary, secondary = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "unionfs", "pull", remote],
        env=dict(os.environ, IMGFS_ROOT=str(root)),
        stdout=subprocess.PIPE,
        stderr=secondary,
        timeout=120,
    )
    os.close(secondary)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(primary, 65536):
            shown += chunk
    os.close(primary)
    assert proc.returncode == 0
    assert b"Pull complete" in shown and b"\x1b[" in shown, shown
    assert b"Pull complete" not in proc.stdout


async def test_server_errors_are_retried_a_bounded_number_of_times(
    registry: Registry, imgfs: ImgfsRunner, root: Path, tmp_path: Path
) -> None:
    _, expected = pushed_away(imgfs, registry, tmp_path, "tests/flaky", 64 << 10)
    store = ImageStore(root)
    with Relay.to(registry) as relay:
        ref = reference.parse(f"{relay.host}/tests/flaky:1")
        relay.fail_next(100)
        options = RegistryOptions(retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1))
        with pytest.raises(RegistryError, match=r"HTTP 503.*gave up after 3 attempts"):
            await pull(store, ref, options=options)
        assert relay.failed >= 3 and not store.images()
        relay.fail_next(2)  # a short outage: the retries outlive it
        result = await pull(store, ref, options=options)
    assert result.image.id == expected
