"""The session's window filters (max / min over a k^3 window cut to the volume, like its replicate-border
filters), applied only around the nonzero voxels: beyond k//2 of their bounding box nothing can change,
and the CPU is spared filters over up to 768^3 voxels."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_extreme(t: torch.Tensor, k: int, minimum: bool) -> torch.Tensor:
    """k^3 min or max filter over the window cut to the volume."""
    # max is exact in any precision: float32 because the CPU has no fast float16 max pooling
    x = t.float()[None, None]
    x = -F.max_pool3d(-x, k, stride=1, padding=k // 2) if minimum else F.max_pool3d(x, k, stride=1, padding=k // 2)
    return x[0, 0].to(t.dtype)


def near_nonzero(t: torch.Tensor, reach: int, filtered: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`filtered` applied to the block of `t` that holds its nonzero voxels grown by `reach`; zero elsewhere.

    Equal to filtering the whole volume for filters that leave zero where every voxel within `reach` is zero.
    """
    nonzero = t.nonzero()
    if len(nonzero) == 0:
        return t
    lo = (nonzero.min(0).values - reach).clamp(min=0).tolist()
    hi = [min(int(v) + reach + 1, n) for v, n in zip(nonzero.max(0).values, t.shape)]
    block = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = torch.zeros_like(t)
    out[block] = filtered(t[block])
    return out


def dilate(channel: torch.Tensor, k: int) -> torch.Tensor:
    """k^3 max filter, for values >= 0."""
    if k <= 1:
        return channel
    return near_nonzero(channel, k // 2, lambda block: window_extreme(block, k, minimum=False))


def opening(mask: torch.Tensor, k: int) -> torch.Tensor:
    """k^3 min filter, then k^3 max filter, for values >= 0."""
    return near_nonzero(mask, k // 2, lambda block: window_extreme(window_extreme(block, k, minimum=True), k,
                                                                   minimum=False))
