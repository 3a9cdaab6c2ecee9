"""Sizes and ages printed the way docker prints them."""

from __future__ import annotations

from datetime import UTC, datetime


def human_size(n: float) -> str:
    """Decimal units with 3 significant digits, as docker's `images` SIZE column."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.3g}{units[i]}"


def time_ago(t: datetime | None, now: datetime | None = None) -> str:
    if t is None:
        return "N/A"
    now = now or datetime.now(UTC)
    s = (now - t).total_seconds()
    if s < 1:
        return "Less than a second ago"
    if s < 60:
        return f"{int(s)} seconds ago"
    m = s / 60
    if m < 2:
        return "About a minute ago"
    if m < 60:
        return f"{int(m)} minutes ago"
    h = m / 60
    if h < 1.5:
        return "About an hour ago"
    if h < 48:
        return f"{round(h)} hours ago"
    d = h / 24
    if d < 14:
        return f"{int(d)} days ago"
    if d < 60:
        return f"{int(d / 7)} weeks ago"
    if d < 730:
        return f"{int(d / 30)} months ago"
    return f"{int(d / 365)} years ago"
