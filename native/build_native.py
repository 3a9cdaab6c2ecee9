"""cffi out-of-line API-mode builder for `unionfs._native` (openat2, syncfs, index lookup).

API mode (a real C compile) rather than ABI mode because openat2 has no libc
wrapper: the syscall number and `struct open_how` must come from the headers; the
merged-index lookup is here because it is the FUSE daemon's hot path.
setuptools runs this via `cffi_modules` in setup.py from the project root.
"""

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

if __name__ == "__main__":  # in-place build: unionfs/_native.{c,o,*.so} (all git-ignored)
    import os

    os.chdir(_ROOT)
    ffibuilder.compile(verbose=True)
