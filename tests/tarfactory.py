"""Build tar archives in memory, including hostile ones, for the layer tests.

Each helper returns a `Member` (a TarInfo and its data); `build` writes them in
order with tarfile, which writes names exactly as given (absolute, `..`, …).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

Member = tuple[tarfile.TarInfo, bytes | None]

MTIME = 1_600_000_000


def _info(
    name: str,
    kind: bytes,
    *,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    pax: dict[str, str] | None = None,
    xattrs: dict[str, str] | None = None,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = mtime
    headers = dict(pax or {})
    for key, value in (xattrs or {}).items():
        headers[f"SCHILY.xattr.{key}"] = value
    info.pax_headers = headers
    return info


def reg(name: str, data: bytes = b"", *, mode: int = 0o644, **kw: object) -> Member:
    info = _info(name, tarfile.REGTYPE, mode=mode, **kw)  # type: ignore[arg-type]
    info.size = len(data)
    return info, data


def directory(name: str, *, mode: int = 0o755, **kw: object) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=mode, **kw), None  # type: ignore[arg-type]


def symlink(name: str, target: str, **kw: object) -> Member:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, **kw)  # type: ignore[arg-type]
    info.linkname = target
    return info, None


def hardlink(name: str, target: str, **kw: object) -> Member:
    info = _info(name, tarfile.LNKTYPE, mode=0o644, **kw)  # type: ignore[arg-type]
    info.linkname = target
    return info, None


def fifo(name: str, *, mode: int = 0o644, **kw: object) -> Member:
    return _info(name, tarfile.FIFOTYPE, mode=mode, **kw), None  # type: ignore[arg-type]


def device(name: str, major: int, minor: int, *, block: bool = False, **kw: object) -> Member:
    kind = tarfile.BLKTYPE if block else tarfile.CHRTYPE
    info = _info(name, kind, mode=0o660, **kw)  # type: ignore[arg-type]
    info.devmajor, info.devminor = major, minor
    return info, None


def whiteout(path: str) -> Member:
    """The OCI whiteout file that deletes `path` from lower layers."""
    parent, _, base = path.rpartition("/")
    return reg(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opaque(dir_path: str) -> Member:
    """The OCI marker that hides every lower child of `dir_path`."""
    return reg(f"{dir_path}/.wh..wh..opq" if dir_path else ".wh..wh..opq")


def build(members: Iterable[Member], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def header_offsets(data: bytes) -> list[int]:
    """Byte offsets of each member's first header (for cutting or corrupting a tar)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [member.offset for member in tar.getmembers()]
