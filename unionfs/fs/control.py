"""Pausing a mounted container's writes, so `commit` reads its upper dir as one snapshot.

The daemon listens on an abstract unix socket named after the upper dir (no path length
limit, nothing left behind on disk; only root or the daemon's own user may connect). A
client sends `pause`: the daemon stops starting new changes, waits for those in flight,
and answers `paused`. Changes stay held until the client sends `resume` or goes away, so a
crashed commit never leaves the container frozen. Before pausing, the client syncs the
mount, so that data the kernel's writeback cache still holds reaches the upper dir first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from unionfs.errors import ImgfsError
from unionfs.safeio import syncfs

if TYPE_CHECKING:
    import trio

PAUSE_TIMEOUT = 60.0


def socket_name(upper_dir: Path) -> bytes:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(upper_dir))).hexdigest()[:32]
    return b"\0imgfs-control/" + digest.encode()


class WriteGate:
    """Counts changes in flight; `pause` waits for them to end and holds new ones."""

    def __init__(self) -> None:
        import trio  # the daemon's side only: clients (commit, diff) start faster without it

        self._trio = trio
        self._open = trio.Event()
        self._open.set()
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._pause_lock = trio.Lock()

    @asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._inflight += 1
        if self._inflight == 1:
            self._idle = self._trio.Event()
        try:
            yield
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        async with self._pause_lock:
            self._open = self._trio.Event()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()


async def serve_control(upper_dir: Path, gate: WriteGate) -> None:
    """Answer pause requests for this mount until cancelled."""
    import trio

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(socket_name(upper_dir))
    sock.listen(8)
    listener = trio.SocketListener(sock)
    await trio.serve_listeners(lambda stream: _handle(stream, gate), [listener])


async def _handle(stream: trio.SocketStream, gate: WriteGate) -> None:
    import trio

    async with stream:
        uid = _peer_uid(stream.socket)
        if uid not in (0, os.geteuid()):
            return
        buffer = b""
        while b"\n" not in buffer:
            data = await stream.receive_some(64)
            if not data:
                return
            buffer += data
        if buffer.split(b"\n", 1)[0].strip() != b"pause":
            await stream.send_all(b"error unknown command\n")
            return
        async with gate.paused():
            await stream.send_all(b"paused\n")
            with trio.move_on_after(PAUSE_TIMEOUT * 10):
                while True:  # held until `resume` or the client goes away
                    data = await stream.receive_some(64)
                    if not data or b"resume" in data:
                        break
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"resumed\n")


def _peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@contextmanager
def writes_paused(upper_dir: Path, mountpoint: Path | None) -> Iterator[bool]:
    """Hold a mounted container's writes while the block runs (yields whether a daemon
    answered; an unmounted container needs no pause)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_name(upper_dir))
    except OSError:
        conn.close()
        yield False
        return
    with conn:
        if mountpoint is not None:
            fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
            try:
                syncfs(fd)  # the kernel's dirty pages become writes the daemon applies
            finally:
                os.close(fd)
        conn.settimeout(PAUSE_TIMEOUT)
        conn.sendall(b"pause\n")
        if not _read_line(conn).startswith(b"paused"):
            raise ImgfsError("the mount daemon did not pause writes")
        try:
            yield True
        finally:
            try:
                conn.sendall(b"resume\n")
                _read_line(conn)
            except OSError:
                pass  # closing the connection resumes writes too


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        try:
            chunk = conn.recv(64)
        except TimeoutError:
            raise ImgfsError("the mount daemon did not answer (timed out)") from None
        if not chunk:
            break
        data += chunk
    return data
