"""Content digests as the OCI spec writes them: `sha256:<64 lowercase hex>`."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from unionfs.errors import BadInput

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def short_digest(digest: str) -> str:
    """The 12 hex digits docker shows for a digest or ID."""
    return digest.removeprefix("sha256:")[:12]


def check_digest(digest: str) -> str:
    """Refuse anything but a well-formed sha256 digest: it becomes a file name."""
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise BadInput(f"invalid or unsupported digest {digest!r}")
    return digest


class HashingReader:
    """Reads through another stream, hashing and counting what passes."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class HashingWriter:
    """Writes through to a file object, hashing and counting what passes."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()
