"""Path resolution that never leaves a directory and never follows a symlink.

Every store and daemon write goes through `open_beneath`: the path is resolved
relative to a directory fd, `..` may not climb above it, and no component
(not even the last, unless the caller asks for O_PATH|O_NOFOLLOW) may be a symlink.
The native module uses openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) in one syscall;
the pure-Python walk below is the fallback and must give the same answers, errno
included, so callers never see which one ran. IMGFS_NO_NATIVE=1 forces the fallback.
"""

from __future__ import annotations

import errno
import os
import stat

try:
    from unionfs._native import lib as _lib
except ImportError:  # not built (e.g. running from a source tree): the walk still works
    _lib = None

_AT_FDCWD = -100
_PATH_MAX = 4096
# Intermediate components are opened O_PATH: like the kernel's walk, that needs only
# search permission, and it yields a fd for the object itself, so fstat can't be raced.
_WALK_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH_ALLOWED = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY
_EAGAIN_RETRIES = 16


def _probe_native() -> bool:
    """An absolute path fails with EXDEV before any lookup iff openat2 exists and is allowed
    (seccomp filters answer ENOSYS or EPERM instead)."""
    if _lib is None or os.environ.get("IMGFS_NO_NATIVE", "") not in ("", "0"):
        return False
    return _lib.imgfs_open_beneath(_AT_FDCWD, b"/", os.O_PATH, 0) == -errno.EXDEV


HAVE_NATIVE: bool = _probe_native()


def _err(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), path)


def _encode(path: str | bytes | os.PathLike) -> bytes:
    raw = os.fsencode(path)
    if b"\0" in raw:  # C would silently truncate; os.open raises the same ValueError
        raise ValueError("embedded null byte")
    return raw


def open_beneath_native(
    root_fd: int, path: str | bytes | os.PathLike, flags: int, mode: int = 0o777
) -> int:
    """openat2 via unionfs._native, whatever HAVE_NATIVE says (tests compare both)."""
    if _lib is None:
        raise _err(errno.ENOSYS, path)
    raw = _encode(path)
    retries = _EAGAIN_RETRIES
    while True:
        rc = _lib.imgfs_open_beneath(root_fd, raw, flags, mode)
        if rc >= 0:
            return rc
        if rc == -errno.EINTR:  # as os.open does (PEP 475)
            continue
        # A rename anywhere in the system while resolving `..` makes openat2 give up.
        if rc == -errno.EAGAIN and retries:
            retries -= 1
            continue
        raise _err(-rc, path)


def _invalid_flags(flags: int) -> bool:
    """Combinations openat2 rejects with EINVAL before looking at the path."""
    if flags & os.O_PATH:  # open(2) ignores the extras; openat2 is strict
        return bool(flags & ~_O_PATH_ALLOWED)
    if flags & os.O_CREAT and flags & os.O_DIRECTORY:
        return True
    if flags & _TMPFILE_BIT:
        return not flags & os.O_DIRECTORY or flags & os.O_ACCMODE == os.O_RDONLY
    return False


def _step(stack: list[int], name: bytes) -> None:
    """Move the walk (a stack of directory fds, root first) through one component."""
    if name == b".":
        return
    if name == b"..":
        if len(stack) > 1:
            os.close(stack.pop())
            return
        # openat2 checks the dirfd before walking: EBADF / ENOTDIR beat EXDEV.
        if not stat.S_ISDIR(os.fstat(stack[0]).st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        raise OSError(errno.EXDEV, "path escapes its root")
    stack.append(os.open(name, _WALK_FLAGS, dir_fd=stack[-1]))
    st_mode = os.fstat(stack[-1]).st_mode
    if stat.S_ISLNK(st_mode):  # O_DIRECTORY|O_NOFOLLOW would say ENOTDIR; openat2 says ELOOP
        raise OSError(errno.ELOOP, "symlink in path")
    if not stat.S_ISDIR(st_mode):
        raise OSError(errno.ENOTDIR, "not a directory")


def _open_last(dirfd: int, name: bytes, flags: int, mode: int, slash: bool) -> int:
    """Open the final component the way openat2 would, but never through a symlink."""
    if slash and flags & os.O_CREAT:
        raise OSError(errno.EISDIR, "trailing slash with O_CREAT")
    # The kernel follows a final symlink unless O_NOFOLLOW (implied by O_CREAT|O_EXCL),
    # and always with a trailing slash; under RESOLVE_NO_SYMLINKS following means ELOOP.
    nofollow = flags & os.O_NOFOLLOW or (flags & os.O_CREAT and flags & os.O_EXCL)
    if slash or not nofollow:
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            pass  # let the open below report it, as openat2 would
        else:
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, "symlink in path")
    # O_NOFOLLOW closes the race with a symlink swapped in after the lstat;
    # O_DIRECTORY is what a trailing slash means.
    extra = os.O_NOFOLLOW | (os.O_DIRECTORY if slash else 0)
    return os.open(name, flags | extra, mode, dir_fd=dirfd)


def open_beneath_py(
    root_fd: int, path: str | bytes | os.PathLike, flags: int, mode: int = 0o777
) -> int:
    """Pure-Python equivalent of openat2(root_fd, path, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS).

    `..` is resolved physically (popping the fd stack), not lexically: in `a/../b`
    openat2 still requires `a` to be a real directory.
    """
    raw = _encode(path)
    if _invalid_flags(flags):
        raise _err(errno.EINVAL, path)
    if not raw:
        raise _err(errno.ENOENT, path)
    if len(raw) >= _PATH_MAX:
        raise _err(errno.ENAMETOOLONG, path)
    if raw.startswith(b"/"):
        raise _err(errno.EXDEV, path)
    names = raw.split(b"/")
    slash = names[-1] == b""
    names = [n for n in names if n]
    stack = [root_fd]
    try:
        for name in names[:-1]:
            _step(stack, name)
        if names[-1] in (b".", b".."):
            _step(stack, names[-1])
            return os.open(".", flags, mode, dir_fd=stack[-1])
        return _open_last(stack[-1], names[-1], flags, mode, slash)
    except OSError as e:
        raise _err(e.errno, path) from None
    finally:
        for fd in stack[1:]:
            os.close(fd)


def open_beneath(
    root_fd: int, path: str | bytes | os.PathLike, flags: int, mode: int = 0o777
) -> int:
    """Open `path` beneath `root_fd` without following any symlink; raises OSError."""
    global HAVE_NATIVE
    if HAVE_NATIVE:
        try:
            return open_beneath_native(root_fd, path, flags, mode)
        except OSError as e:
            if e.errno == errno.ENOSYS and not _probe_native():  # openat2 itself is gone
                HAVE_NATIVE = False
            elif e.errno != errno.EAGAIN:  # persistent rename races: the walk has none
                raise
    return open_beneath_py(root_fd, path, flags, mode)


def set_xattr(target: int | str, name: str, value: bytes) -> None:
    """Set an xattr on an fd, or on a path whose last component is never followed."""
    if isinstance(target, int):
        os.setxattr(target, name, value)
    else:
        os.setxattr(target, name, value, follow_symlinks=False)


def syncfs(fd: int) -> None:
    """Flush only the filesystem holding `fd`; os.sync() (every filesystem) without native."""
    if HAVE_NATIVE:
        rc = _lib.imgfs_syncfs(fd)
        if rc == 0:
            return
        if rc != -errno.ENOSYS:
            raise _err(-rc, None)
    os.fstat(fd)  # a bad fd is still an error, as with syncfs(2)
    os.sync()
