"""Blocks of a volume: the one box type every step uses, and its clip / overlap / union / slices.

A `Region` is half-open per axis in array order: [[z0, z1], [y0, y1], [x0, x1]] covers
z0 <= z < z1 and so on. (The challenge's own box, `case_io.Box`, is closed: `region_of` turns
closed bounds into a Region.) Functions that can end up with nothing return None.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Region = list[list[int]]


def region_of(lo: Sequence[int], hi: Sequence[int]) -> Region:
    """The region from closed bounds: `lo` and `hi` both inside."""
    return [[int(a), int(b) + 1] for a, b in zip(lo, hi)]


def clip(region: Region, limits: Region | Sequence[int]) -> Region | None:
    """`region` cut to other bounds, or to a volume of shape `limits`; None if nothing is left."""
    limits = [lim if isinstance(lim, (list, tuple)) else (0, lim) for lim in limits]
    box = [[max(a, lo), min(b, hi)] for (a, b), (lo, hi) in zip(region, limits)]
    return box if all(a < b for a, b in box) else None


def placed(start: Sequence[int], size: Sequence[int]) -> Region:
    """The region of a block of `size` voxels whose first voxel is at `start`."""
    return [[int(s), int(s) + int(n)] for s, n in zip(start, size)]


def union(*regions: Region | None) -> Region | None:
    """The smallest region holding every given one (None ones are skipped); None if none is given."""
    present = [r for r in regions if r is not None]
    if not present:
        return None
    return [[min(r[d][0] for r in present), max(r[d][1] for r in present)] for d in range(len(present[0]))]


def slices(region: Region, origin: Sequence[int] = (0, 0, 0)) -> tuple[slice, ...]:
    """`region` as slices into an array whose first voxel sits at `origin` (volume coordinates)."""
    return tuple(slice(a - o, b - o) for (a, b), o in zip(region, origin))


def start_of(region: Region) -> tuple[int, ...]:
    return tuple(a for a, _ in region)


def size_of(region: Region) -> list[int]:
    return [b - a for a, b in region]


def points_region(points: np.ndarray) -> Region | None:
    """The region holding every point (N, 3); None for no points."""
    if len(points) == 0:
        return None
    return region_of(points.min(axis=0), points.max(axis=0))


def nonzero_block(image: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the nonzero voxels as slices, or None if there are none.

    From max (and, for signed values, min) projections: two fast passes, no full-size temporary.
    """
    may_be_negative = image.dtype.kind in "if"
    flat = image.max(axis=0) != 0  # (y, x)
    if may_be_negative:
        flat |= image.min(axis=0) != 0
    if not flat.any():
        return None
    z = image.max(axis=(1, 2)) != 0
    if may_be_negative:
        z |= image.min(axis=(1, 2)) != 0
    found = []
    for profile in (z, flat.any(axis=1), flat.any(axis=0)):
        where = np.flatnonzero(profile)
        found.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(found)
