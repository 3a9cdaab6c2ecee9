"""What a mount is made of; shared by `imgfs mount`, `imgfs-overlay` and the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Mount options passed through to the FUSE mount (`imgfs mount -o`, `imgfs-overlay -o`);
# anything else is refused with a clear message rather than by libfuse with an obscure one.
FUSE_OPTIONS = frozenset(
    {
        "allow_other", "allow_root", "ro", "rw", "default_permissions", "suid", "nosuid",
        "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "diratime", "nodiratime", "sync", "async", "dirsync",
    }
)  # fmt: skip
FUSE_VALUE_OPTIONS = ("context=", "fscontext=", "defcontext=", "rootcontext=", "max_read=")


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
