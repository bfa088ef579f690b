"""Size strata: a target's bounding-box extent against the model's patch side.

`small`: the longest side of its bounding box is under P/3 (it fits a zoom-1 view with room to spare);
`large`: over P (no zoom-1 view holds it); `medium` between. The default P is the shipped model's 96.
The harness tags every scored class with its stratum, so a report shows where a model fails.
"""
from __future__ import annotations

import numpy as np

from ..geometry import nonzero_block

DEFAULT_PATCH = 96
STRATA = ("small", "medium", "large")


def stratum(extent: int, patch: int = DEFAULT_PATCH) -> str:
    """The size stratum of a target whose bounding box's longest side is `extent` voxels."""
    if extent < patch / 3:
        return "small"
    return "large" if extent > patch else "medium"


def target_extent(mask: np.ndarray) -> int:
    """Longest side, in voxels, of the bounding box of a binary mask (0 for an empty one)."""
    block = nonzero_block(mask)
    return 0 if block is None else max(s.stop - s.start for s in block)
