"""A container's changes: its upper dir read against the image's merged lower tree.

`diff` lists them the way `docker diff` does (A/C/D per path); commit turns an upper dir
into a layer.
"""

from unionfs.changes.diff import Change, changes, container_changes

__all__ = ["Change", "changes", "container_changes"]
