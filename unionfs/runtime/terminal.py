"""The parent side of `imgfs run -t`: relay between the user's terminal and the pty
master, with raw mode (for -i on a terminal), window size copied and SIGWINCH passed on."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import tty

EOF_CHAR = b"\x04"
"""Sent to the pty when our (non-terminal) stdin ends, so a reading command sees EOF."""


def copy_size(master: int) -> None:
    """The user's terminal size (of stdin, else stdout) onto the pty; no-op without one."""
    for fd in (0, 1):
        if os.isatty(fd):
            with contextlib.suppress(OSError):
                size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
                return


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def relay(master: int, *, interactive: bool) -> None:
    """Copy the pty's output to stdout (and stdin to it with `interactive`) until the
    command side closes it. Restores the user's terminal and SIGWINCH handler."""
    saved = None
    if interactive and os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    copy_size(master)
    previous = signal.signal(signal.SIGWINCH, lambda *_: copy_size(master))
    out_ok = True
    try:
        fds = [master, 0] if interactive else [master]
        while True:
            ready, _, _ = select.select(fds, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:  # every slave fd closed: the command is gone
                        break
                    raise
                if not data:
                    break
                if out_ok:
                    try:
                        _write_all(1, data)
                    except OSError:
                        out_ok = False  # keep draining so the command is not blocked
            if 0 in ready:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if data:
                    with contextlib.suppress(OSError):
                        _write_all(master, data)
                else:
                    fds.remove(0)
                    with contextlib.suppress(OSError):
                        _write_all(master, EOF_CHAR)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSAFLUSH, saved)
