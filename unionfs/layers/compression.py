"""Detect a layer's compression by its magic bytes and decompress it as a stream.

Layers arrive from files, registries and stdin, so nothing here may seek: the
magic is read once and replayed in front of the rest of the input. Every
decompressor error (corrupt or truncated input) surfaces as `BadInput` on the
read that meets it, so callers handle one exception type for bad layers.
"""

from __future__ import annotations

import bz2
import enum
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from typing import BinaryIO, cast

import zstandard

from unionfs.errors import BadInput

__all__ = ["Compression", "detect", "open_decompressed"]

HEAD_SIZE = 6
"""Bytes of input needed to recognise every supported format."""

_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50


class Compression(enum.Enum):
    """Compression of a layer blob, named like the media-type suffix."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"
    XZ = "xz"
    BZIP2 = "bzip2"


def detect(head: bytes) -> Compression:
    """The compression whose magic `head` (the first bytes of the input) starts with."""
    if head.startswith(b"\x1f\x8b"):
        return Compression.GZIP
    if head.startswith(b"\xfd7zXZ\x00"):
        return Compression.XZ
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[3:4] != b"0":
        return Compression.BZIP2
    if len(head) >= 4:
        magic = int.from_bytes(head[:4], "little")
        if magic == _ZSTD_MAGIC or magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            return Compression.ZSTD
    return Compression.NONE


def open_decompressed(raw: BinaryIO) -> tuple[Compression, BinaryIO]:
    """Detect the compression of `raw` and return a stream of its decompressed bytes.

    Works on pipes (never seeks). Closing the returned stream does not close `raw`.
    """
    head = _read_head(raw)
    kind = detect(head)
    if kind is Compression.NONE:
        return kind, cast(BinaryIO, _Source(head, raw, shield=False))
    if kind is Compression.ZSTD:
        tracker = _ZstdFrameTracker()
        source = _Source(head, raw, shield=True, tap=tracker.feed)
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True, closefd=False
        )
        stream = _Decompressed(reader, kind, (zstandard.ZstdError,), tracker.check_end, source)
        return kind, cast(BinaryIO, stream)
    source = _Source(head, raw, shield=True)
    inner: BinaryIO
    errors: tuple[type[BaseException], ...]
    if kind is Compression.GZIP:
        inner = cast(BinaryIO, gzip.GzipFile(fileobj=source, mode="rb"))
        errors = (OSError, EOFError, zlib.error)
    elif kind is Compression.XZ:
        inner = cast(BinaryIO, lzma.LZMAFile(source))  # noqa: SIM115 (returned open)
        errors = (lzma.LZMAError, EOFError)
    else:
        inner = cast(BinaryIO, bz2.BZ2File(source))
        errors = (OSError, EOFError)
    return kind, cast(BinaryIO, _Decompressed(inner, kind, errors, None, source))


def _read_head(raw: BinaryIO) -> bytes:
    """Up to HEAD_SIZE bytes; loops because a pipe may return fewer than asked."""
    head = b""
    while len(head) < HEAD_SIZE:
        chunk = raw.read(HEAD_SIZE - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _SourceError(Exception):
    """Carries an I/O error of the raw input through a decompressor.

    Decompressors report corrupt data with OSError too (gzip, bz2); wrapping the
    input's own errors keeps a failing disk from being reported as corrupt data.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Source(io.RawIOBase):
    """The raw input with its already-read head replayed first."""

    def __init__(
        self,
        head: bytes,
        raw: BinaryIO,
        *,
        shield: bool,
        tap: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__()
        self._head = head
        self._raw = raw
        self._shield = shield
        self._tap = tap
        self.at_eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._read_raw(size)
        if self._tap is not None:
            self._tap(data)
        return data

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read_raw(self, size: int) -> bytes:
        if self.at_eof:
            return b""
        try:
            data = self._raw.read(size)
        except OSError as e:
            if self._shield:
                raise _SourceError(e) from e
            raise
        if not data and size:
            self.at_eof = True
        return data or b""


class _Decompressed(io.RawIOBase):
    """A decompressor whose library exceptions become `BadInput` on every read."""

    def __init__(
        self,
        inner: BinaryIO,
        kind: Compression,
        errors: tuple[type[BaseException], ...],
        check_end: Callable[[], None] | None,
        source: _Source,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._kind = kind
        self._errors = errors
        self._check_end = check_end
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None:
            size = -1
        try:
            data = self._inner.read(size)
        except _SourceError as e:
            raise e.error from None
        except self._errors as e:
            raise BadInput(f"corrupt {self._kind.value} data: {_reason(e)}") from e
        if not data and size and self._check_end is not None:
            self._finish()
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()

    def _finish(self) -> None:
        """At the decompressor's end: feed the rest of the input to the end check."""
        try:
            while self._source.read(1 << 20):
                pass
        except _SourceError as e:
            raise e.error from None
        assert self._check_end is not None
        self._check_end()


def _reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "truncated (the input ends before the end-of-stream marker)"
    return str(error) or type(error).__name__


class _ZstdFrameTracker:
    """Follows zstd frame and block headers in the compressed bytes.

    python-zstandard's stream_reader ends silently when its input stops inside a
    frame; following the headers (not decoding them) is how truncation is noticed.
    Format: RFC 8878 section 3.1.
    """

    _MAGIC, _SKIP_SIZE, _DESCRIPTOR, _HEADER_REST, _BLOCK, _CHECKSUM = range(6)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            taken = min(self._need - len(self._buf), end - pos)
            self._buf += data[pos : pos + taken]
            pos += taken
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._advance(field)

    def check_end(self) -> None:
        """Raise unless the input ended exactly between two frames."""
        if self._state != self._MAGIC or self._skip or self._buf:
            raise BadInput("corrupt zstd data: truncated (the input ends inside a frame)")

    def _advance(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == self._MAGIC:
            if value == _ZSTD_MAGIC:
                self._expect(self._DESCRIPTOR, 1)
            elif value & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
                self._expect(self._SKIP_SIZE, 4)
            else:
                raise BadInput("corrupt zstd data: unknown frame magic")
        elif self._state == self._SKIP_SIZE:
            self._expect(self._MAGIC, 4, skip=value)
        elif self._state == self._DESCRIPTOR:
            self._descriptor(value)
        elif self._state == self._HEADER_REST:
            self._expect(self._BLOCK, 3)
        elif self._state == self._BLOCK:
            self._block(value)
        else:  # checksum read: the frame is complete
            self._expect(self._MAGIC, 4)

    def _descriptor(self, value: int) -> None:
        single_segment = bool(value & 0x20)
        self._checksum = bool(value & 0x04)
        dict_id_size = (0, 1, 2, 4)[value & 0x03]
        content_size_size = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
        rest = (0 if single_segment else 1) + dict_id_size + content_size_size
        if rest:
            self._expect(self._HEADER_REST, rest)
        else:
            self._expect(self._BLOCK, 3)

    def _block(self, value: int) -> None:
        last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:
            raise BadInput("corrupt zstd data: reserved block type")
        skip = 1 if block_type == 1 else size
        if not last:
            self._expect(self._BLOCK, 3, skip=skip)
        elif self._checksum:
            self._expect(self._CHECKSUM, 4, skip=skip)
        else:
            self._expect(self._MAGIC, 4, skip=skip)

    def _expect(self, state: int, need: int, *, skip: int = 0) -> None:
        self._state, self._need, self._skip = state, need, skip
