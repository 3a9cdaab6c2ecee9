"""Progress on a terminal for long work (import, unpack); silent when stderr is not a tty."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from unionfs.units import human_size


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.done = 0
        self._last = 0.0
        self._shown = False

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last >= 0.1:
                self._last = now
                self._draw()

    def _draw(self) -> None:
        text = f"{self.label}: {human_size(self.done)}"
        if self.total:
            pct = min(100, self.done * 100 // self.total)
            text += f" / {human_size(self.total)} ({pct}%)"
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self.enabled and self._shown:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


class ProgressReader:
    """Reports bytes read from a stream to a Progress (for the compressed input side)."""

    def __init__(self, raw, progress: Progress) -> None:
        self.raw = raw
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.progress.advance(len(data))
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class LineProgress:
    """One status line per item (a layer), redrawn in place on a terminal, as `docker pull`
    shows them; silent when the stream is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.lines: dict[str, str] = {}
        self._drawn = 0
        self._last = 0.0

    def set(self, key: str, text: str, *, force: bool = True) -> None:
        """Change a line; `force=False` redraws at most every 0.1 s (byte counters)."""
        self.lines[key] = text
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.1:
            self._last = now
            self._draw()

    def bytes(self, key: str, verb: str, done: int, total: int) -> None:
        pct = min(100, done * 100 // total) if total else 100
        self.set(key, f"{verb} {human_size(done)} / {human_size(total)} ({pct}%)", force=False)

    def _draw(self) -> None:
        out = f"\x1b[{self._drawn}A" if self._drawn else ""
        for key, text in self.lines.items():
            out += f"\r\x1b[K{key}: {text}\n"
        self._drawn = len(self.lines)
        self.stream.write(out)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.lines:
            self._draw()
