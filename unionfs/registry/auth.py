"""Registry credentials (auth.json / docker config.json) and WWW-Authenticate challenges.

Credentials live where podman and docker keep them, in the same format, so a `podman
login` is honoured by `imgfs pull` and the other way round: `{"auths": {"host:port":
{"auth": base64("user:password")}}}`. Read order: `--authfile` or `$REGISTRY_AUTH_FILE`
alone when given; else `$XDG_RUNTIME_DIR/containers/auth.json` (root without it:
`/run/containers/0/auth.json`), `$XDG_CONFIG_HOME/containers/auth.json`, then docker's
`$DOCKER_CONFIG/config.json` (`~/.docker/config.json`). `imgfs login` writes the first of
those, created with mode 0600 and replaced atomically.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unionfs.errors import BadInput
from unionfs.reference import DEFAULT_DOMAIN
from unionfs.store.atomic import write_atomic

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def default_auth_file() -> Path:
    """Where `imgfs login` writes: podman's per-session auth.json."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    if os.geteuid() == 0:
        return Path("/run/containers/0/auth.json")
    return _config_home() / "containers" / "auth.json"


def auth_files(explicit: Path | None = None) -> list[Path]:
    if explicit is not None:
        return [explicit]
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return [Path(env)]
    docker_dir = os.environ.get("DOCKER_CONFIG")
    docker = Path(docker_dir) if docker_dir else Path.home() / ".docker"
    files = [
        default_auth_file(),
        _config_home() / "containers" / "auth.json",
        docker / "config.json",
    ]
    return list(dict.fromkeys(files))


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _keys_for(domain: str) -> tuple[str, ...]:
    return (domain, *_HUB_KEYS) if domain == DEFAULT_DOMAIN else (domain,)


def _normalize_key(key: str) -> str:
    return key.removeprefix("https://").removeprefix("http://").rstrip("/")


def find_credentials(
    domain: str, repository: str = "", authfile: Path | None = None
) -> Credentials | None:
    """The most specific entry for `domain/repository` (podman allows per-namespace keys)."""
    wanted = {_normalize_key(k) for k in _keys_for(domain)}
    for path in auth_files(authfile):
        auths = _read(path).get("auths") or {}
        best: tuple[int, Credentials] | None = None
        for key, entry in auths.items():
            if not isinstance(key, str) or not isinstance(entry, dict):
                continue
            norm = _normalize_key(key)
            host, _, namespace = norm.partition("/")
            if norm.removesuffix("/v1") in wanted:
                host, namespace = norm.removesuffix("/v1"), ""
            if host not in wanted or (namespace and not _within(repository, namespace)):
                continue
            creds = _decode(entry, path)
            if creds is not None and (best is None or len(namespace) > best[0]):
                best = (len(namespace), creds)
        if best is not None:
            return best[1]
    return None


def _within(repository: str, namespace: str) -> bool:
    return repository == namespace or repository.startswith(namespace + "/")


def _decode(entry: dict[str, Any], path: Path) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise BadInput(f'{path}: an "auth" entry is not base64 of user:password') from None
        return Credentials(user, password) if sep else None
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str):
        return Credentials(user, password)
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read credentials from {path}: {e}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"cannot read credentials from {path}: not a JSON object")
    return doc


def store_credentials(domain: str, creds: Credentials, authfile: Path | None = None) -> Path:
    path = authfile or default_auth_file()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    raw = f"{creds.username}:{creds.password}".encode()
    auths[_login_key(domain, auths)] = {"auth": base64.b64encode(raw).decode()}
    _write(path, doc)
    return path


def remove_credentials(domain: str, authfile: Path | None = None) -> list[Path]:
    """Forget `domain` in every file we read; returns the files that had it."""
    changed = []
    wanted = {_normalize_key(k) for k in _keys_for(domain)}
    for path in auth_files(authfile):
        doc = _read(path)
        auths = doc.get("auths") or {}
        keep = {
            k: v for k, v in auths.items() if _normalize_key(k).removesuffix("/v1") not in wanted
        }
        if len(keep) != len(auths):
            doc["auths"] = keep
            _write(path, doc)
            changed.append(path)
    return changed


def _login_key(domain: str, auths: dict[str, Any]) -> str:
    if domain != DEFAULT_DOMAIN:
        return domain
    return next((k for k in _HUB_KEYS if k in auths), "docker.io")


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, (json.dumps(doc, indent="\t") + "\n").encode(), mode=0o600)


# -- challenges ------------------------------------------------------------------------

_PARAM = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    scheme: str
    """"basic" or "bearer" (lowercase)."""
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """`Bearer realm="…",service="…",scope="…"` (one header may hold several challenges)."""
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        scheme, _, rest = rest.partition(" ")
        params: dict[str, str] = {}
        while (m := _PARAM.match(rest)) is not None and m.end() > 0:
            value = m.group(2) if m.group(2) is not None else m.group(3)
            params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            rest = rest[m.end() :]
        challenges.append(Challenge(scheme.strip(",").lower(), params))
        rest = rest.lstrip(", ")
    return [c for c in challenges if c.scheme]
