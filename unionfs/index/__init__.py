"""The merged lower index: an image's layer stack merged once, persisted, mmapped by mounts.

Lookups of (parent id, name) cost one hash probe whatever the number of layers; see
`format` for the file, `merge` for the overlayfs semantics, `lookup` for the C hot path.
"""

from unionfs.index.build import build_index
from unionfs.index.chain import chain_id
from unionfs.index.merged import ROOT_ID, LowerEntry, MergedIndex

__all__ = ["ROOT_ID", "LowerEntry", "MergedIndex", "build_index", "chain_id"]
