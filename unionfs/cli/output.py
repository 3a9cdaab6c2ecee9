"""Tables and JSON as docker prints them."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, separated by three spaces (docker's tabwriter)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        sys.stdout.write("   ".join(cells).rstrip() + "\n")


def print_json_lines(objects: Sequence[dict[str, Any]]) -> None:
    """docker's `--format json`: one JSON object per line."""
    for obj in objects:
        sys.stdout.write(json.dumps(obj) + "\n")


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=4) + "\n")
