"""cffi out-of-line API-mode builders: `unionfs._native` (openat2, syncfs, index lookup)
and `unionfs._fastpath` (the daemon's C answers to lower-entry lookups, with libfuse3).

API mode (a real C compile) rather than ABI mode because openat2 has no libc
wrapper: the syscall number and `struct open_how` must come from the headers; the
merged-index lookup is here because it is the FUSE daemon's hot path.
setuptools runs this via `cffi_modules` in setup.py from the project root.
"""

import re
import shlex
import subprocess
from pathlib import Path

from cffi import FFI

# setuptools wants source paths relative to the project root (its cwd while building).
_ROOT = Path(__file__).resolve().parent.parent
_NATIVE = Path(__file__).resolve().parent.relative_to(_ROOT)

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int imgfs_open_beneath(int dirfd, const char *path, int flags, int mode);
    int imgfs_syncfs(int fd);
    uint64_t imgfs_index_hash(uint64_t parent, const char *name, size_t namelen);
    int64_t imgfs_index_lookup(const uint8_t *base, uint64_t len, uint64_t parent,
                               const char *name, size_t namelen);
    """
)
ffibuilder.set_source(
    "unionfs._native",
    '#include "safeopen.h"\n#include "index.h"',
    sources=[str(_NATIVE / "safeopen.c"), str(_NATIVE / "index.c")],
    include_dirs=[str(_NATIVE)],
    extra_compile_args=["-Wall", "-Wextra", "-O2"],
)


def _fuse3_flags() -> tuple[list[str], list[str]]:
    """(include dirs, libraries) of libfuse3, from pkg-config when it is there."""
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
        ).stdout
    except OSError:
        out = ""
    flags = shlex.split(out) or ["-I/usr/include/fuse3", "-lfuse3"]
    includes = [f[2:] for f in flags if f.startswith("-I")]
    return includes, [f[2:] for f in flags if f.startswith("-l")]


def _prototypes(header: Path) -> str:
    """A header's declarations for cdef: without comments and preprocessor lines, so the
    header stays the one place they are written."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.DOTALL)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


fastpath_builder = FFI()
fastpath_builder.cdef(_prototypes(_ROOT / _NATIVE / "fastpath.h"))
_fuse_includes, _fuse_libs = _fuse3_flags()
fastpath_builder.set_source(
    "unionfs._fastpath",
    '#include "fastpath.h"',
    sources=[str(_NATIVE / n) for n in ("fastpath.c", "index.c", "safeopen.c")],
    include_dirs=[str(_NATIVE), *_fuse_includes],
    libraries=_fuse_libs,
    extra_compile_args=["-Wall", "-Wextra", "-O2"],
)

if __name__ == "__main__":  # in-place build: unionfs/_native.{c,o,*.so} (all git-ignored)
    import os

    os.chdir(_ROOT)
    ffibuilder.compile(verbose=True)
    fastpath_builder.compile(verbose=True)
