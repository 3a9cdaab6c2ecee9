"""flock(2) locks, so that concurrent imgfs processes never corrupt shared state.

Two locks exist: `index` (exclusive, around every read-modify-write of index.json and
container records) and `gc` (shared while a process adds blobs that nothing references
yet, exclusive while garbage is collected, so a fresh blob is never collected).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flocked(path: Path, *, shared: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
