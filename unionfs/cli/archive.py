"""imgfs archive command(s): argument parsing and output only."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add this module's subcommands to the imgfs parser."""
