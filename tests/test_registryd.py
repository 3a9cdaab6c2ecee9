"""The registry fixtures work, checked with skopeo, a client that isn't ours."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from pathlib import Path

import httpx
import pytest

from registryd import (
    Registry,
    Relay,
    SkopeoError,
    TokenIssuer,
    basic_registry,
    oci_image,
    registry,
    skopeo_copy,
    skopeo_inspect,
    tls_registry,
    token_registry,
)

# Fixtures are used by parameter name only; exporting them keeps ruff from calling them unused.
__all__ = ["basic_registry", "oci_image", "registry", "tls_registry", "token_registry"]

OciImage = tuple[Path, str]


def push(image: OciImage, reg: Registry, name: str = "busybox:1", anonymous: bool = False) -> str:
    """Push the test image to `reg` as `name`; its docker:// reference."""
    oci, ref = image
    dest = f"docker://{reg.ref(name)}"
    skopeo_copy(f"oci:{oci}:{ref}", dest, registry=reg, anonymous=anonymous)
    return dest


def manifest_digest(image: OciImage) -> str:
    oci, ref = image
    index = json.loads((oci / "index.json").read_text())
    [digest] = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    ]
    return digest


def test_plain_registry_round_trip(registry: Registry, oci_image: OciImage, tmp_path: Path) -> None:
    assert registry.url == f"http://{registry.host}"
    ref = push(oci_image, registry)
    info = skopeo_inspect(ref, registry=registry)
    assert info["Digest"] == manifest_digest(oci_image), "the OCI manifest went up unchanged"
    for layer in info["Layers"]:
        assert registry.blob_data_path(layer).is_file()
    skopeo_copy(ref, f"oci:{tmp_path / 'back'}:x", registry=registry)


def test_corrupted_blob_is_served_corrupted(registry: Registry, oci_image: OciImage) -> None:
    """blob_data_path lets a test make the server lie; a verifying client must notice."""
    ref = push(oci_image, registry)
    [layer] = skopeo_inspect(ref, registry=registry)["Layers"]
    path = registry.blob_data_path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    repo = ref.removeprefix(f"docker://{registry.host}/").split(":")[0]
    served = httpx.get(f"{registry.url}/v2/{repo}/blobs/{layer}").content
    assert served == bytes(data)
    assert "sha256:" + hashlib.sha256(served).hexdigest() != layer


def test_basic_auth(basic_registry: Registry, oci_image: OciImage) -> None:
    reg = basic_registry
    assert reg.user and reg.password
    ref = push(oci_image, reg)
    assert skopeo_inspect(ref, registry=reg)["Layers"]
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication required"):
        skopeo_inspect(ref, registry=reg, anonymous=True)
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication required"):
        skopeo_inspect(ref, registry=reg, creds=f"{reg.user}:wrong")
    challenge = httpx.get(f"{reg.url}/v2/")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith("Basic ")


def test_tls(tls_registry: Registry, oci_image: OciImage) -> None:
    reg = tls_registry
    assert reg.url.startswith("https://") and reg.ca_pem and reg.cert_dir
    assert (reg.cert_dir / "ca.crt").is_file() and reg.cert_dir.name == reg.host
    ref = push(oci_image, reg)
    assert skopeo_inspect(ref, registry=reg)["Layers"]
    with pytest.raises(SkopeoError, match="certificate signed by unknown authority"):
        skopeo_inspect(ref)
    ctx = ssl.create_default_context(cafile=str(reg.ca_pem))
    assert httpx.get(f"{reg.url}/v2/", verify=ctx).status_code == 200
    localhost = reg.url.replace("127.0.0.1", "localhost")
    assert httpx.get(f"{localhost}/v2/", verify=ctx).status_code == 200


def test_token_auth(token_registry: Registry, oci_image: OciImage) -> None:
    reg = token_registry
    assert reg.issuer is not None
    before = reg.issuer.issued
    ref = push(oci_image, reg)
    assert reg.issuer.issued > before
    assert skopeo_inspect(ref, registry=reg)["Layers"]
    grant = reg.issuer.grants[-1]
    assert grant.account == reg.user and grant.access
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication required"):
        skopeo_inspect(ref, registry=reg, anonymous=True)
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|incorrect username"):
        skopeo_inspect(ref, registry=reg, creds=f"{reg.user}:wrong")


def test_token_anonymous_pull(tmp_path: Path, oci_image: OciImage) -> None:
    with (
        TokenIssuer(anonymous_pull=True) as issuer,
        Registry(tmp_path / "reg", token=issuer) as reg,
    ):
        ref = push(oci_image, reg)
        assert skopeo_inspect(ref, registry=reg, anonymous=True)["Layers"]
        with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication required"):
            push(oci_image, reg, "other:1", anonymous=True)


def user_pass(reg: Registry) -> tuple[str, str]:
    assert reg.user is not None and reg.password is not None
    return reg.user, reg.password


def bearer_challenge(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


async def test_token_flow_from_a_trio_test(token_registry: Registry) -> None:
    """The issuer runs in a thread, so an in-process async client can talk to it."""
    reg = token_registry
    assert reg.issuer is not None
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{reg.url}/v2/_catalog")
        assert r.status_code == 401
        challenge = bearer_challenge(r.headers["www-authenticate"])
        assert challenge["realm"] == reg.issuer.realm
        assert challenge["scope"] == "registry:catalog:*"
        params = {"service": challenge["service"], "scope": challenge["scope"]}
        anon = (await client.get(challenge["realm"], params=params)).json()
        r = await client.get(
            f"{reg.url}/v2/_catalog", headers={"Authorization": f"Bearer {anon['token']}"}
        )
        assert r.status_code == 401, "anonymous tokens grant nothing by default"
        token = await client.get(challenge["realm"], params=params, auth=user_pass(reg))
        assert token.status_code == 200
        body = token.json()
        assert body["expires_in"] == reg.issuer.expires_in and body["issued_at"]
        r = await client.get(
            f"{reg.url}/v2/_catalog", headers={"Authorization": f"Bearer {body['token']}"}
        )
        assert r.status_code == 200 and r.json() == {"repositories": []}
        form = {"grant_type": "password", "username": reg.user, "password": reg.password}
        form |= {"service": challenge["service"], "scope": challenge["scope"]}
        form |= {"access_type": "offline", "client_id": "test"}
        posted = (await client.post(challenge["realm"], data=form)).json()
        assert posted["refresh_token"]
        form = {"grant_type": "refresh_token", "refresh_token": posted["refresh_token"]}
        form |= {"service": challenge["service"], "scope": challenge["scope"]}
        refreshed = await client.post(challenge["realm"], data=form)
        assert refreshed.status_code == 200 and refreshed.json()["access_token"]
    assert reg.issuer.issued == 4


def test_kill_and_restart_keep_content(registry: Registry, oci_image: OciImage) -> None:
    ref = push(oci_image, registry)
    port = registry.port
    registry.kill()
    assert not registry.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.url}/v2/")
    registry.start()
    assert registry.port == port
    assert skopeo_inspect(ref, registry=registry)["Digest"] == manifest_digest(oci_image)
    registry.stop()
    assert not registry.running


def test_relay_forwards_and_dies(registry: Registry, oci_image: OciImage) -> None:
    ref = push(oci_image, registry)
    with Relay.to(registry, bytes_per_second=1 << 20) as relay:
        via = ref.replace(registry.host, relay.host)
        assert skopeo_inspect(via, registry=registry)["Digest"] == manifest_digest(oci_image)
        assert relay.bytes_down > 0 and relay.bytes_up > 0 and relay.connections >= 1
        port = relay.port
        relay.kill()
        with pytest.raises(SkopeoError, match="connection refused"):
            skopeo_inspect(via, registry=registry)
        relay.start()
        assert relay.port == port
        assert skopeo_inspect(via, registry=registry)["Layers"]


def test_relay_cuts_a_blob_midway_and_range_resumes(
    registry: Registry, oci_image: OciImage
) -> None:
    """The pattern for resume tests: exactly n bytes reach the client, then the line drops."""
    ref = push(oci_image, registry)
    [layer] = skopeo_inspect(ref, registry=registry)["Layers"]
    size = registry.blob_data_path(layer).stat().st_size
    repo = ref.removeprefix(f"docker://{registry.host}/").split(":")[0]
    with Relay.to(registry, bytes_per_second=4 << 20) as relay:
        url = f"http://{relay.host}/v2/{repo}/blobs/{layer}"
        got = bytearray()
        relay.cut_after(size // 2)
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                got += chunk
        assert 0 < len(got) < size // 2
        r = httpx.get(url, headers={"Range": f"bytes={len(got)}-"})
        assert r.status_code == 206
        got += r.content
    assert "sha256:" + hashlib.sha256(got).hexdigest() == layer


def test_expired_token_is_refused(token_registry: Registry) -> None:
    """distribution allows 60 s past `exp`; token_lifetime=-120 gets a token it refuses."""
    reg = token_registry
    issuer = reg.issuer
    assert issuer is not None
    params = {"service": issuer.service, "scope": "registry:catalog:*"}

    def catalog() -> httpx.Response:
        token = httpx.get(issuer.realm, params=params, auth=user_pass(reg)).json()["token"]
        return httpx.get(f"{reg.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"})

    issuer.token_lifetime = -120
    refused = catalog()
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    issuer.token_lifetime = None
    assert catalog().status_code == 200
