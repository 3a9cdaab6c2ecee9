"""OCI ChainIDs: the name of a persisted index is the chain id of the image's layers."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def chain_id(diff_ids: Sequence[str]) -> str:
    """ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln)).

    `diff_ids` are in the image config's order (bottom layer first), each "sha256:<hex>".
    The same layers in the same order give the same id whichever image they belong to,
    so images sharing a stack share its index.
    """
    if not diff_ids:
        raise ValueError("a chain id needs at least one layer")
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
    return chain
