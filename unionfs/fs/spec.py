"""What a mount is made of; shared by `imgfs mount`, `imgfs-overlay` and the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unionfs.fs.options import FUSE_OPTIONS, FUSE_VALUE_OPTIONS

__all__ = ["FUSE_OPTIONS", "FUSE_VALUE_OPTIONS", "MountSpec", "spec_from_dict", "spec_to_dict"]


@dataclass
class MountSpec:
    lower_dirs: list[Path]
    """Read-only layer dirs in kernel overlayfs format, top layer first (as lowerdir=)."""
    mountpoint: Path
    upper_dir: Path | None = None
    """Writable upper dir; None makes the mount read-only."""
    work_dir: Path | None = None
    """Scratch dir on the upper dir's filesystem (copy-up staging), as overlayfs's workdir."""
    index_path: Path | None = None
    """Where the merged index of `lower_dirs` is persisted; None builds it at mount time."""
    options: list[str] = field(default_factory=list)
    """FUSE mount options passed through (allow_other, ro, ...)."""
    fsname: str = "imgfs"
    debug: bool = False
    control: bool = False
    """Serve pause/resume requests (commit of a mounted container), see fs/control.py."""
    userxattr: bool = False
    """Write the upper dir in kernel overlayfs's `-o userxattr` format (`user.overlay.*`)
    even as root; a daemon that cannot write trusted.* xattrs always does."""

    @property
    def read_only(self) -> bool:
        return self.upper_dir is None or "ro" in self.options


_PATHS = ("upper_dir", "work_dir", "index_path")


def spec_to_dict(spec: MountSpec) -> dict[str, Any]:
    """Plain JSON data (paths as str), for a mount request to the mount server."""
    return {
        "lower_dirs": [str(d) for d in spec.lower_dirs],
        "mountpoint": str(spec.mountpoint),
        **{k: None if getattr(spec, k) is None else str(getattr(spec, k)) for k in _PATHS},
        "options": list(spec.options),
        "fsname": spec.fsname,
        "debug": spec.debug,
        "control": spec.control,
        "userxattr": spec.userxattr,
    }


def spec_from_dict(d: dict[str, Any]) -> MountSpec:
    """The inverse of `spec_to_dict`; a malformed request raises ValueError."""
    try:
        opt = {k: None if d.get(k) is None else Path(str(d[k])) for k in _PATHS}
        return MountSpec(
            lower_dirs=[Path(str(p)) for p in d["lower_dirs"]],
            mountpoint=Path(str(d["mountpoint"])),
            upper_dir=opt["upper_dir"],
            work_dir=opt["work_dir"],
            index_path=opt["index_path"],
            options=[str(o) for o in d.get("options") or []],
            fsname=str(d.get("fsname") or "imgfs"),
            debug=bool(d.get("debug")),
            control=bool(d.get("control")),
            userxattr=bool(d.get("userxattr")),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed mount spec: {e}") from None
