"""Where everything lives under the store root (see DESIGN.md, "On-disk layout")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_root() -> Path:
    """`IMGFS_ROOT`, else /var/lib/unionfs for root, else $XDG_DATA_HOME/unionfs."""
    env = os.environ.get("IMGFS_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/unionfs")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(xdg) / "unionfs"


@dataclass(frozen=True)
class StorePaths:
    root: Path

    @property
    def oci(self) -> Path:
        """The OCI image layout that skopeo and umoci read (`oci:<root>/oci:<ref>`)."""
        return self.root / "oci"

    @property
    def blobs(self) -> Path:
        return self.oci / "blobs" / "sha256"

    @property
    def index_json(self) -> Path:
        return self.oci / "index.json"

    @property
    def layers(self) -> Path:
        """Layers unpacked once each, in kernel overlayfs format, named by diff_id hex."""
        return self.root / "layers"

    @property
    def indexes(self) -> Path:
        """Merged lower indexes, one per chain of layers, named by chain id hex."""
        return self.root / "indexes"

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    @property
    def tmp(self) -> Path:
        """Scratch space on the store's filesystem, so finished work can be renamed in."""
        return self.root / "tmp"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def blob(self, digest: str) -> Path:
        return self.blobs / digest.removeprefix("sha256:")

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers / diff_id.removeprefix("sha256:")

    def layer_info(self, diff_id: str) -> Path:
        return self.layers / (diff_id.removeprefix("sha256:") + ".json")
