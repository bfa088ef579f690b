"""After a zoomed-out pass, nnInteractive's session re-predicts what changed at full resolution.

The coarse answer is upsampled to the crop (trilinear, >= 0.5); where it differs from the previous
mask (after a 5^3 opening), patch-sized boxes are chosen greedily to cover the difference, and each
is predicted in turn at zoom 1, every pass seeing the earlier ones as its previous mask. Only those
boxes change the class's mask (docs/nninteractive_session.md, section 3.6).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..field_of_view import FieldOfView
from ..geometry import Region, slices
from .filters import opening

OVERLAP = 24  # voxels of a box that must overlap the next one: the session's value, whatever the patch
STRIDE_DIVISOR = 4
MAX_DEPTH = 3
OPENING = 5


def upsampled(positive: torch.Tensor, side: int) -> torch.Tensor:
    """The coarse decision (P^3) on the crop's grid: trilinear, then >= 0.5, uint8."""
    if positive.shape[0] == side:
        return positive.to(torch.uint8)
    t = F.interpolate(positive.float()[None, None], (side,) * 3, mode="trilinear")[0, 0]
    return (t >= 0.5).to(torch.uint8)


def changed_region(coarse: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Where the upsampled coarse answer differs from the previous mask, opened by a 5^3 min then max filter."""
    diff = (coarse != previous).to(torch.float16)
    return opening(diff, OPENING).to(torch.uint8)


def _cover_bounds(centre, half, end, overlap, shape):
    return [(max(0, c - h + overlap), min(n, c + e - overlap)) for c, h, e, n in zip(centre, half, end, shape)]


def _box(centre, half, end) -> Region:
    return [[c - h, c + e] for c, h, e in zip(centre, half, end)]


def cover(mask: torch.Tensor, patch: int, depth: int = 0, stride=None) -> list[Region]:
    """Greedy patch-sized boxes whose inner part (24 voxels in from each side) covers `mask`, as the session's planner picks them."""
    if not mask.any():
        return []
    if depth > MAX_DEPTH:
        return random_cover(mask.clone(), patch, 25)
    half, end = [patch // 2] * 3, [patch - patch // 2] * 3
    nonzero = mask.nonzero()
    lo, hi = nonzero.min(0).values.tolist(), nonzero.max(0).values.tolist()
    if stride is None:
        stride = [max(1, round((b - a) / STRIDE_DIVISOR)) for a, b in zip(lo, hi)]
    axes = [torch.arange(max(0, a), min(n, b + 1), s) for a, b, n, s in zip(lo, hi, mask.shape, stride)]
    grid = torch.cartesian_prod(*axes).reshape(-1, 3)
    candidates = grid[mask[grid[:, 0], grid[:, 1], grid[:, 2]] != 0]
    if len(candidates) == 0:
        return cover(mask, patch, depth + 1, [max(1, s // 2) for s in stride])
    uncovered = mask.clone().to(torch.uint8)
    boxes = []
    while len(candidates) > 0 and uncovered.any():
        centres = candidates.tolist()
        bounds = [_cover_bounds(c, half, end, OVERLAP, mask.shape) for c in centres]
        counts = [int(uncovered[slices(bd)].sum()) for bd in bounds]
        best = max(range(len(counts)), key=lambda i: (counts[i], -i))  # the first of the largest
        if counts[best] == 0:
            break
        boxes.append(_box(centres[best], half, end))
        uncovered[slices(bounds[best])] = 0
        candidates = candidates[uncovered[tuple(candidates.T)] > 0]
    if uncovered.any():
        boxes += random_cover(uncovered, patch, 10)
    return boxes


def random_cover(mask: torch.Tensor, patch: int, samples: int) -> list[Region]:
    """The session's fallback: the best of `samples` random voxels (numpy's global generator), until all are covered."""
    half, end = [patch // 2] * 3, [patch - patch // 2] * 3
    boxes = []
    while mask.any():
        voxels = mask.nonzero()
        best, best_count, best_bounds = None, 0, None
        for _ in range(samples):
            centre = voxels[np.random.choice(len(voxels))].tolist()
            bounds = _cover_bounds(centre, half, end, OVERLAP, mask.shape)
            count = int(mask[slices(bounds)].sum())
            if count > best_count:
                best, best_count, best_bounds = centre, count, bounds
        if best is None:  # a patch no wider than twice the overlap covers nothing (the session fails here)
            break
        boxes.append(_box(best, half, end))
        mask[slices(best_bounds)] = 0
    return boxes


def plan(coarse: torch.Tensor, previous: torch.Tensor, fov: FieldOfView, shape: tuple[int, ...],
         last_centre: tuple[int, int, int]) -> list[Region]:
    """Refinement boxes in volume coordinates for a coarse answer on the crop (`previous`: the old mask there)."""
    inside = fov.inside(shape)
    if inside is not None:
        local = slices(inside, fov.start)
        boxes = cover(changed_region(coarse[local], previous[local]), fov.patch)
        if boxes:
            return [[[a + lo, b + lo] for (a, b), (lo, _) in zip(box, inside)] for box in boxes]
    return [[[c - fov.patch // 2, c - fov.patch // 2 + fov.patch] for c in last_centre]]
