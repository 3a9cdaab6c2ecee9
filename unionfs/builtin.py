"""The built-in default image: a tiny rootfs made from the host's static busybox.

It needs no network, so the demo, the tests and the benchmarks all start from it.
Usage: `python -m unionfs.builtin OUT.tar` (OUT.tar may be - for standard output).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import BinaryIO

from unionfs.errors import ImgfsError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

_FILES = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    ),
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "busybox\n",
    "etc/os-release": 'NAME="imgfs busybox"\nID=busybox\n',
}
_DIRS = {
    "bin": 0o755,
    "etc": 0o755,
    "root": 0o700,
    "tmp": 0o1777,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "home": 0o755,
    "var": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
}


def find_busybox() -> Path:
    """A statically linked busybox: a dynamic one would not run inside the bare rootfs."""
    which = shutil.which("busybox")
    for candidate in (*BUSYBOX_CANDIDATES, *([which] if which else [])):
        path = Path(candidate)
        if path.is_file() and is_static_elf(path):
            return path
    raise ImgfsError("a static busybox is needed: apt-get install busybox-static")


def is_static_elf(path: Path) -> bool:
    """True for an ELF64 little-endian executable without a PT_INTERP program header."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        int.from_bytes(table[i * phentsize : i * phentsize + 4], "little") != pt_interp
        for i in range(phnum)
    )


def applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, check=True, text=True)
    return sorted({a for a in out.stdout.split() if a and "/" not in a and a != "busybox"})


def write_rootfs_tar(out: BinaryIO, busybox: Path | None = None) -> None:
    """A deterministic-order rootfs: /bin/busybox plus one symlink per applet."""
    busybox = busybox or find_busybox()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in sorted(_DIRS.items()):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.mode, info.size, info.mtime = 0o755, len(data), now
        tar.addfile(info, io.BytesIO(data))
        for applet in applets(busybox):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, now
            tar.addfile(info)
        for name, text in sorted(_FILES.items()):
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.mode, info.size, info.mtime = 0o644, len(payload), now
            tar.addfile(info, io.BytesIO(payload))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m unionfs.builtin OUT.tar|-\n")
        return 2
    try:
        if argv[0] == "-":
            write_rootfs_tar(sys.stdout.buffer)
        else:
            with open(argv[0], "wb") as f:
                write_rootfs_tar(f)
    except ImgfsError as e:
        sys.stderr.write(f"imgfs: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
