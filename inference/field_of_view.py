"""The field of view: which cube of the volume the network sees, and resampling between the two.

Zoom rule (one place): z = max((extent + P/3) / P, 1) over the axes, one zoom for all axes;
the crop is a cube of side ceil(P z) around the prompt centre, zero outside the volume.
Tile rule (full-resolution tiles): zoom-1 cubes of side P, neighbours at most 2P/3 apart.
Resampling never materialises the full-resolution crop: linear resampling gathers only the
two source rows each output row needs, area pooling works on the object's bounding box.
Both match torch's `interpolate(mode="trilinear", align_corners=False)` and
`adaptive_avg_pool3d` on the zero-padded crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import Region, clip

TILE_STEP = 2 / 3  # of a patch: the largest stride between neighbouring full-resolution tiles


@dataclass(frozen=True)
class FieldOfView:
    """A cubic crop of `side` voxels starting at `start` (may reach outside the volume), seen as a `patch`^3 grid."""

    start: tuple[int, int, int]
    side: int
    patch: int

    @property
    def zoom(self) -> float:
        return self.side / self.patch

    @property
    def region(self) -> Region:
        """The crop's voxels (half-open, as acvl-utils expects crop bounds); may reach outside the volume."""
        return [[s, s + self.side] for s in self.start]

    def inside(self, shape: tuple[int, ...]) -> Region | None:
        """The part of the crop inside a volume of `shape`, or None if they do not meet."""
        return clip(self.region, shape)

    def to_patch(self, points: np.ndarray) -> np.ndarray:
        """Voxel coordinates (N, 3) -> continuous patch coordinates (voxel centres map to centres)."""
        return (np.asarray(points, dtype=np.float64) + 0.5 - np.asarray(self.start)) / self.zoom - 0.5

    def zoomed_out(self, factor: float, max_zoom: float) -> "FieldOfView":
        """The same centre seen `factor` times wider, capped at `max_zoom`."""
        centre = np.asarray(self.start) + (self.side - 1) / 2
        return around(centre, self.patch, min(self.zoom * factor, max(max_zoom, self.zoom)))


def zoom_for_extent(extent: np.ndarray, patch: int) -> float:
    """z = max((extent + P/3) / P, 1): the prompts fill at most 3/4 of the patch."""
    return max(float(np.max((np.asarray(extent, dtype=np.float64) + patch / 3) / patch)), 1.0)


def around(centre: np.ndarray, patch: int, zoom: float) -> FieldOfView:
    """The cubic crop of side ceil(P z) centred on `centre` (voxel coordinates)."""
    side = max(math.ceil(patch * zoom - 1e-9), patch)
    start = tuple(int(math.floor(c - (side - 1) / 2)) for c in np.asarray(centre, dtype=np.float64))
    return FieldOfView(start, side, patch)


def fit(region: Region, patch: int, zoom: float | None = None) -> FieldOfView:
    """The field of view for prompts spanning `region`: centred on them, zoomed so they fit."""
    lo, end = np.asarray(region).T
    if zoom is None:
        zoom = zoom_for_extent(end - lo, patch)
    return around((lo + end - 1) / 2, patch, zoom)


def tiles(region: Region, patch: int) -> list[FieldOfView]:
    """Zoom-1 fields of view covering `region`, spread evenly, neighbours overlapping by at least a third.

    A side no longer than the patch gets one tile centred on it.
    """
    per_axis = []
    for lo, end in region:
        extent = end - lo
        if extent <= patch:
            per_axis.append([lo - (patch - extent) // 2])
            continue
        count = math.ceil((extent - patch) / (patch * TILE_STEP)) + 1
        per_axis.append([lo + round(i * (extent - patch) / (count - 1)) for i in range(count)])
    return [FieldOfView((z, y, x), patch, patch) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def _linear_taps(n_in: int, n_out: int, out_idx: np.ndarray):
    """torch's linear (align_corners=False) source rows and weights for output rows `out_idx`."""
    src = np.maximum((out_idx + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _lerp_axis(t: torch.Tensor, axis: int, i0, i1, w) -> torch.Tensor:
    shape = [1] * t.ndim
    shape[axis] = -1
    w = torch.as_tensor(w, device=t.device, dtype=t.dtype).reshape(shape)
    a = t.index_select(axis, torch.as_tensor(i0, device=t.device))
    b = t.index_select(axis, torch.as_tensor(i1, device=t.device))
    return torch.lerp(a, b, w)


def sample_linear(volume: np.ndarray, fov: FieldOfView, pad_value: float = 0.0) -> torch.Tensor:
    """The crop resized to patch^3 with trilinear interpolation (float32); outside the volume = pad_value."""
    rows, weights = [], []
    for _ in range(volume.ndim):
        i0, i1, w = _linear_taps(fov.side, fov.patch, np.arange(fov.patch))
        needed = np.unique(np.concatenate([i0, i1]))
        rows.append((needed, np.searchsorted(needed, i0), np.searchsorted(needed, i1)))
        weights.append(w)
    absolute = [needed + s for (needed, _, _), s in zip(rows, fov.start)]
    clipped = [np.clip(a, 0, n - 1) for a, n in zip(absolute, volume.shape)]
    sub = torch.from_numpy(np.ascontiguousarray(volume[np.ix_(*clipped)], dtype=np.float32))
    for axis, (a, n) in enumerate(zip(absolute, volume.shape)):
        outside = torch.from_numpy((a < 0) | (a >= n))
        if outside.any():
            index = [slice(None)] * 3
            index[axis] = outside
            sub[tuple(index)] = pad_value
    for axis, ((_, p0, p1), w) in enumerate(zip(rows, weights)):
        sub = _lerp_axis(sub, axis, p0, p1, w)
    return sub


def sample_area(mask: np.ndarray, mask_start: tuple[int, int, int], fov: FieldOfView) -> torch.Tensor:
    """Area-average a binary mask (placed at `mask_start`, zero elsewhere) onto the patch grid.

    Thin structures survive as fractional values instead of vanishing as with nearest sampling.
    """
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    k = np.arange(fov.patch)
    a = np.floor(k * fov.side / fov.patch).astype(np.int64)
    b = np.ceil((k + 1) * fov.side / fov.patch).astype(np.int64)
    for axis in range(3):
        offset = mask_start[axis] - fov.start[axis]
        n = t.shape[axis]
        shape = [1] * 3
        shape[axis] = -1
        zero = torch.zeros([1 if d == axis else t.shape[d] for d in range(3)], dtype=t.dtype)
        cs = torch.cat([zero, torch.cumsum(t, dim=axis)], dim=axis)
        ia = torch.from_numpy(np.clip(a - offset, 0, n))
        ib = torch.from_numpy(np.clip(b - offset, 0, n))
        width = torch.from_numpy((b - a).astype(np.float32)).reshape(shape)
        t = (cs.index_select(axis, ib) - cs.index_select(axis, ia)) / width
    return t


def upsample_region(probs: torch.Tensor, fov: FieldOfView, region: Region) -> torch.Tensor:
    """Trilinear upsampling of patch^3 values back to crop resolution, only for `region` (volume coords)."""
    t = probs
    for axis, (lo, hi) in enumerate(region):
        out_idx = np.arange(lo, hi) - fov.start[axis]
        i0, i1, w = _linear_taps(fov.patch, fov.side, out_idx)
        t = _lerp_axis(t, axis, i0, i1, w)
    return t
