"""fd-relative access to the read-only layer dirs and the upper dir.

Every path the daemon touches is resolved beneath one of these roots with
`open_beneath` (no symlink is ever followed, `..` never climbs out), and entries
are then reached by name relative to their parent's fd.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from unionfs.safeio import open_beneath

O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WHITEOUT_DEV = 0


@dataclass(frozen=True, slots=True)
class XattrFormat:
    """The overlay-private xattr names of one of kernel overlayfs's two upper dir formats:
    `trusted.overlay.*` (the default, which needs CAP_SYS_ADMIN) or `user.overlay.*`
    (`-o userxattr`, what an unprivileged mount writes)."""

    prefix: bytes
    """Everything under it belongs to the overlay and is hidden from users."""

    @property
    def user(self) -> bool:
        return self.prefix.startswith(b"user.")

    @property
    def opaque(self) -> str:
        return self.prefix.decode() + "opaque"

    @property
    def redirect(self) -> str:
        return self.prefix.decode() + "redirect"

    @property
    def origin(self) -> str:
        """Merged-index id of a copied-up entry's origin, so it keeps its inode number; in
        the overlay-private namespace, so kernel overlayfs hides it too."""
        return self.prefix.decode() + "imgfs.origin"

    @property
    def escaped_prefix(self) -> bytes:
        """As kernel overlayfs (6.7+) does, a user's own PREFIX.X is stored escaped as
        PREFIX.overlay.X, so it can never be mistaken for the overlay's own."""
        return self.prefix + b"overlay."

    def real(self, name: bytes) -> bytes:
        """The name stored in a layer for an xattr name a user asked for."""
        if name.startswith(self.prefix):
            return self.escaped_prefix + name[len(self.prefix) :]
        return name

    def shown(self, real: bytes) -> bytes | None:
        """The name a user sees for a stored xattr, or None for the overlay's private ones."""
        if real.startswith(self.escaped_prefix):
            return self.prefix + real[len(self.escaped_prefix) :]
        if real.startswith(self.prefix):
            return None
        return real


TRUSTED = XattrFormat(b"trusted.overlay.")
USER = XattrFormat(b"user.overlay.")
"""Kernel overlayfs's `-o userxattr` format: the only one an unprivileged process can write."""

# The default (trusted) format's names, for code that only reads that format.
OPAQUE_XATTR = TRUSTED.opaque
REDIRECT_XATTR = TRUSTED.redirect
shown_xattr = TRUSTED.shown


def in_initial_userns() -> bool:
    """Whether this process sees every uid unmapped (the host's user namespace). Root in any
    other user namespace (rootless podman's) cannot write trusted.* xattrs."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            lines = f.read().split("\n")
    except OSError:
        return True
    return [ln.split() for ln in lines if ln.strip()] == [["0", "0", "4294967295"]]


def default_format(userxattr: bool = False) -> XattrFormat:
    """The format a mount writes: `userxattr` asked for, or a process that cannot write
    trusted.* xattrs (not root, or root of a user namespace), gets the user.* one."""
    if userxattr or os.geteuid() != 0 or not in_initial_userns():
        return USER
    return TRUSTED


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def renameat2(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int) -> None:
    if _renameat2(src_fd, src, dst_fd, dst, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def open_dir(root_fd: int, path: bytes) -> int:
    """O_PATH fd of directory `path` beneath `root_fd` (b"" is the root itself)."""
    if not path:
        return os.open(".", O_PATH_DIR, dir_fd=root_fd)
    return open_beneath(root_fd, os.fsdecode(path), O_PATH_DIR)


def at(dir_fd: int, name: bytes) -> str:
    """A path naming `name` in an open directory, for calls that have no *at form (xattrs).

    Only the final component is looked up by name; callers pass follow_symlinks=False.
    """
    return f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_DEV


def get_xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


class LayerDirs:
    """The lower layer dirs, top first, each held open by an fd."""

    def __init__(self, dirs: list[Path]) -> None:
        self.fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in dirs]

    def open(self, layer: int, path: bytes, flags: int) -> int:
        return open_beneath(self.fds[layer], os.fsdecode(path), flags | os.O_NOFOLLOW)

    def parent_fd(self, layer: int, path: bytes) -> tuple[int, bytes]:
        """(O_PATH fd of the entry's parent dir, the entry's name); the caller closes the fd."""
        parent, _, name = path.rpartition(b"/")
        return open_dir(self.fds[layer], parent), name

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
