"""Merging per-class probabilities into one label map.

Product of complements: p_bg = prod_c (1 - p_c), label = argmax over {p_bg, p_1..p_K};
ties go to the background, then to the lower label. The volume is processed in z-slabs and
each class only where it can be nonzero, so no full-volume float map is ever held per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .case_io import ClassPrompt
from .field_of_view import FieldOfView, upsample_region
from .geometry import Region, clip, placed, slices, start_of, union

SLAB_VOXELS = 1 << 24  # ~16 M voxels per slab: a few float32 slab buffers stay well under 1 GB
# Network probabilities are stored as float16 and kept strictly below 1 (the largest float16
# under 1), so that a certain mask (p = 1: a kept previous prediction) always wins a tie.
NETWORK_P_MAX = 1 - 2**-11


@dataclass(frozen=True)
class PatchProbability:
    """Network output: foreground probability on the patch grid of a field of view."""

    label: int
    fov: FieldOfView
    probs: torch.Tensor
    z_range: tuple[int, int] | None = None  # closed; a box's slices: the object has no voxel outside them

    @classmethod
    def from_network(cls, label: int, fov: FieldOfView, probs: torch.Tensor,
                     z_range: tuple[int, int] | None = None) -> "PatchProbability":
        return cls(label, fov, probs.half().clamp(max=NETWORK_P_MAX), z_range)

    def region(self, shape) -> Region | None:
        box = self.fov.inside(shape)
        if box is None or self.z_range is None:
            return box
        return clip(box, [[self.z_range[0], self.z_range[1] + 1], *box[1:]])

    def values(self, region: Region) -> torch.Tensor:
        return upsample_region(self.probs.float(), self.fov, region)


@dataclass(frozen=True)
class BlockProbability:
    """Foreground probability given voxel by voxel on a block of the volume that starts at `start` (float16)."""

    label: int
    start: tuple[int, int, int]
    probs: torch.Tensor

    @classmethod
    def from_values(cls, label: int, start: tuple[int, int, int], probs: torch.Tensor) -> "BlockProbability":
        return cls(label, start, probs.half().clamp(max=NETWORK_P_MAX))

    def region(self, shape) -> Region | None:
        return clip(placed(self.start, self.probs.shape), shape)

    def values(self, region: Region) -> torch.Tensor:
        return self.probs[slices(region, self.start)].float()


@dataclass(frozen=True)
class MaskProbability:
    """A hard mask with probability 1 inside: a kept previous prediction or a fallback box.

    `labels` is a label map of the whole volume (the mask is `labels == label`), or None
    when the mask is the whole `bounds` region.
    """

    label: int
    bounds: Region
    labels: np.ndarray | None = None

    def region(self, shape) -> Region | None:
        return clip(self.bounds, shape)

    def values(self, region: Region) -> torch.Tensor:
        if self.labels is None:
            return torch.ones([b - a for a, b in region])
        sub = self.labels[slices(region)]
        return torch.from_numpy(sub == self.label).float()


@dataclass(frozen=True)
class BlockMask:
    """A hard mask given on a block of the volume: 0/1 `block` placed at `start` (a refined nnInteractive answer)."""

    label: int
    start: tuple[int, int, int]
    block: np.ndarray

    def region(self, shape) -> Region | None:
        return clip(placed(self.start, self.block.shape), shape)

    def values(self, region: Region) -> torch.Tensor:
        return torch.from_numpy(self.block[slices(region, self.start)] != 0).float()


@dataclass(frozen=True)
class PatchOverMask:
    """A network patch pasted over the class's previous mask: outside the crop the previous answer stays (nnInteractive)."""

    patch: PatchProbability
    mask: MaskProbability | None = None

    @property
    def label(self) -> int:
        return self.patch.label

    def region(self, shape) -> Region | None:
        return union(self.patch.region(shape), self.mask.region(shape) if self.mask else None)

    def values(self, region: Region) -> torch.Tensor:
        out = torch.zeros([hi - lo for lo, hi in region])
        # the crop overwrites the previous mask, background included, as the session pastes it
        for part, bounds in ((self.mask, self.mask and self.mask.bounds), (self.patch, self.patch.fov.region)):
            where = clip(region, bounds) if part is not None else None
            if where is not None:
                out[slices(where, start_of(region))] = part.values(where)
        return out


@dataclass(frozen=True)
class PatchWithinMask:
    """A network patch allowed to keep or remove the class's previous mask but not to add to it."""

    patch: PatchProbability | BlockProbability
    mask: MaskProbability

    @property
    def label(self) -> int:
        return self.patch.label

    def region(self, shape) -> Region | None:
        parts = [self.patch.region(shape), self.mask.region(shape)]
        return clip(*parts) if all(parts) else None

    def values(self, region: Region) -> torch.Tensor:
        return self.patch.values(region) * self.mask.values(region)


ClassProbability = PatchProbability | BlockProbability | MaskProbability | PatchOverMask | PatchWithinMask | BlockMask


def label_dtype(max_label: int) -> np.dtype:
    """uint8 as the challenge expects; uint16 only when a case has more than 255 classes."""
    return np.dtype(np.uint8 if max_label <= 255 else np.uint16)


def fuse_classes(shape: tuple[int, int, int], classes: list[ClassProbability]) -> np.ndarray:
    """The label map of the product-of-complements rule (uint8, or uint16 beyond 255 labels)."""
    out = np.zeros(shape, dtype=label_dtype(max((c.label for c in classes), default=0)))
    torch_labels = torch.uint8 if out.dtype == np.uint8 else torch.int32
    regions = [(c, c.region(shape)) for c in sorted(classes, key=lambda c: c.label)]
    regions = [(c, r) for c, r in regions if r is not None]
    slab = max(1, SLAB_VOXELS // (shape[1] * shape[2]))
    for z0 in range(0, shape[0], slab):
        z1 = min(z0 + slab, shape[0])
        here = [(c, r) for c, r in regions if r[0][0] < z1 and r[0][1] > z0]
        if not here:
            continue  # no class reaches this slab: background, already zero
        # work only on the block the classes cover; outside it every p_c = 0, so background
        y0, y1 = min(r[1][0] for _, r in here), max(r[1][1] for _, r in here)
        x0, x1 = min(r[2][0] for _, r in here), max(r[2][1] for _, r in here)
        block = (z1 - z0, y1 - y0, x1 - x0)
        log_bg = torch.zeros(block)
        best_p = torch.zeros(block)
        best_label = torch.zeros(block, dtype=torch_labels)
        for cls, (zr, yr, xr) in here:
            lo, hi = max(zr[0], z0), min(zr[1], z1)
            p = cls.values([[lo, hi], yr, xr])
            window = (slice(lo - z0, hi - z0), slice(yr[0] - y0, yr[1] - y0), slice(xr[0] - x0, xr[1] - x0))
            log_bg[window] += p.clamp(max=1.0).neg_().log1p_()
            best = best_p[window]  # views: updated in place, no slab-sized temporaries
            better = p > best
            torch.maximum(best, p, out=best)
            best_label[window].masked_fill_(better, cls.label)
        out[z0:z1, y0:y1, x0:x1] = best_label.masked_fill_(best_p <= log_bg.exp_(), 0).numpy()
    return out


def apply_clicks(labels: np.ndarray, prompts: list[ClassPrompt]) -> np.ndarray:
    """Clicked voxels keep what the user said: a bg click removes its class there, an fg click sets it."""
    for p in prompts:
        if len(p.bg):
            z, y, x = p.bg.T
            labels[z, y, x] = np.where(labels[z, y, x] == p.label, 0, labels[z, y, x])
    for p in prompts:
        if len(p.fg):
            z, y, x = p.fg.T
            labels[z, y, x] = p.label
    return labels
