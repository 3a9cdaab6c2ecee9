"""What every registry command needs to open a client: TLS choices, credentials, retries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from unionfs.progress import LineProgress
from unionfs.reference import Reference
from unionfs.registry.auth import Credentials, find_credentials
from unionfs.registry.client import RegistryClient, RetryPolicy
from unionfs.registry.hosts import TlsOptions, endpoint_host, host_settings
from unionfs.store.images import ImageStore


@dataclass(frozen=True)
class RegistryOptions:
    tls: TlsOptions = field(default_factory=TlsOptions)
    authfile: Path | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    credentials: Credentials | None = None
    """Given on the command line (`--creds`); else looked up in the auth files."""


def client_for(ref: Reference, options: RegistryOptions) -> RegistryClient:
    return client_for_domain(ref.domain, ref.path, options)


def client_for_domain(domain: str, repository: str, options: RegistryOptions) -> RegistryClient:
    host = endpoint_host(domain)
    creds = options.credentials or find_credentials(domain, repository, options.authfile)
    return RegistryClient(host_settings(host, options.tls), creds, options.retry)


@dataclass
class Transfer:
    """One image moving between the store and one repository of a registry."""

    store: ImageStore
    client: RegistryClient
    ref: Reference
    progress: LineProgress
    actions: ClassVar[str] = "pull"
    """What the token must allow in the repository."""

    @property
    def repo(self) -> str:
        return self.ref.path

    @property
    def scopes(self) -> list[str]:
        return [f"repository:{self.ref.path}:{self.actions}"]
