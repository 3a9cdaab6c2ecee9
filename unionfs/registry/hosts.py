"""Where a registry answers and how to trust it: endpoints, insecure registries, CAs.

Docker's rules: `docker.io` is served by `registry-1.docker.io`; everything else is the
`host[:port]` of the reference. HTTPS with certificate verification is the default. Plain
HTTP is allowed only for loopback registries and registries listed as insecure
(`--tls-verify=false`, or `insecure = true` in a registries.conf `[[registry]]` table, the
file podman reads); for those, HTTPS is still tried first. CAs and client certificates
come from a cert dir laid out as `certs.d/<host:port>/{*.crt, *.cert, *.key}` (podman's
`--cert-dir`, `/etc/containers/certs.d`, `/etc/docker/certs.d`).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.errors import BadInput
from unionfs.reference import DEFAULT_DOMAIN

DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
SYSTEM_CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
REGISTRIES_CONF = Path("/etc/containers/registries.conf")


def endpoint_host(domain: str) -> str:
    """The host:port that serves the API for a reference's domain."""
    return DOCKER_HUB_ENDPOINT if domain == DEFAULT_DOMAIN else domain


def is_loopback(host: str) -> bool:
    """Whether `host[:port]` names this machine (plain HTTP is then acceptable)."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:5000
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


@dataclass(frozen=True)
class TlsOptions:
    """What the user said about TLS: None means "the default for this registry"."""

    verify: bool | None = None
    cert_dir: Path | None = None
    registries_conf: Path | None = None


@dataclass
class HostSettings:
    host: str
    insecure: bool
    """Plain HTTP allowed and certificates not verified (--tls-verify=false / insecure)."""
    allow_http: bool
    ssl_context: ssl.SSLContext = field(repr=False)

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)


def host_settings(host: str, tls: TlsOptions) -> HostSettings:
    insecure = tls.verify is False or (tls.verify is None and _listed_insecure(host, tls))
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for directory in _cert_dirs(host, tls):
        _load_cert_dir(context, directory)
    return HostSettings(host, insecure, insecure or is_loopback(host), context)


def _cert_dirs(host: str, tls: TlsOptions) -> list[Path]:
    if tls.cert_dir is not None:
        return [tls.cert_dir]  # podman: --cert-dir replaces the system dirs
    return [d / host for d in SYSTEM_CERT_DIRS if (d / host).is_dir()]


def _load_cert_dir(context: ssl.SSLContext, directory: Path) -> None:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise BadInput(f"cert dir {directory} does not exist") from None
    for name in names:
        path = directory / name
        try:
            if name.endswith(".crt"):
                context.load_verify_locations(cafile=str(path))
            elif name.endswith(".cert"):
                key = path.with_suffix(".key")
                if not key.is_file():
                    raise BadInput(f"client certificate {path} has no key {key.name} beside it")
                context.load_cert_chain(str(path), str(key))
        except ssl.SSLError as e:
            raise BadInput(f"cannot load {path}: {e.reason or e}") from None


def _listed_insecure(host: str, tls: TlsOptions) -> bool:
    path = tls.registries_conf or Path(
        os.environ.get("CONTAINERS_REGISTRIES_CONF") or REGISTRIES_CONF
    )
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {path}: {e}") from None
    for entry in doc.get("registry") or []:
        if not isinstance(entry, dict):
            continue
        location = str(entry.get("location") or entry.get("prefix") or "")
        if location.split("/", 1)[0] == host and entry.get("insecure") is True:
            return True
    # registries.conf v1: [registries.insecure] registries = ["host:port"]
    v1 = (doc.get("registries") or {}).get("insecure") or {}
    return host in (v1.get("registries") or [])
