"""Prompt encoding: a class's box and clicks drawn on the patch grid of a field of view.

The logical channels are named here once; a model's JSON lists them in the order its
network expects (`zero` pads unused inputs, e.g. nnInteractive's scribble channels).
Prompts are drawn directly at patch resolution so that thin ones survive zooming: a box
covers every patch voxel it touches, and a click keeps at least its centre voxel.
"""
from __future__ import annotations

from dataclasses import dataclass

import edt
import numpy as np
import torch

from .case_io import Box, ClassPrompt
from .field_of_view import FieldOfView
from .geometry import Region, region_of

LOGICAL_CHANNELS = ("image", "box", "fg_clicks", "bg_clicks", "prev_seg", "zero")
BOX_MODES = ("slab", "mid_slice")
POINT_STYLES = ("binary", "distance")


@dataclass(frozen=True)
class PromptEncoding:
    """How a model was trained to see prompts."""

    box: str = "slab"  # "slab": z_min..z_max x the mid-slice box; "mid_slice": the 2D box only
    points: str = "binary"  # "binary" balls, or "distance": 1 at the centre falling towards the rim
    point_radius: float = 4.0  # in voxels of the volume; shrinks with zoom down to 1 patch voxel

    def __post_init__(self):
        if self.box not in BOX_MODES:
            raise ValueError(f"box mode must be one of {BOX_MODES}, got {self.box!r}")
        if self.points not in POINT_STYLES:
            raise ValueError(f"point style must be one of {POINT_STYLES}, got {self.points!r}")
        if not self.point_radius > 0:
            raise ValueError(f"point_radius must be > 0, got {self.point_radius}")


def box_region(box: Box, mode: str) -> Region:
    """The voxels the box prompt covers: the full z-range (slab) or the mid slice."""
    if mode == "mid_slice":
        return region_of((box.z_mid, box.lo[1], box.lo[2]), (box.z_mid, box.hi[1], box.hi[2]))
    return region_of(box.lo, box.hi)


def box_channel(box: Box | None, fov: FieldOfView, mode: str) -> torch.Tensor:
    channel = torch.zeros((fov.patch,) * 3)
    if box is None:
        return channel
    lo, end = np.asarray(box_region(box, mode)).T
    # exact integers: v * P // side, since float division by the zoom can land a voxel off
    start = np.asarray(fov.start, dtype=np.int64)
    first = ((lo - start) * fov.patch) // fov.side
    last = -((-(end - start) * fov.patch) // fov.side)  # ceil; exclusive
    first, last = np.clip(first, 0, fov.patch), np.clip(last, 0, fov.patch)
    if np.all(last > first):
        channel[first[0]:last[0], first[1]:last[1], first[2]:last[2]] = 1.0
    return channel


def ball_template(radius: float, style: str, dtype: type = np.float32) -> np.ndarray:
    """A cube of side 2*floor(radius)+1 holding the ball: 0/1, or its distance transform scaled to 1 at the centre."""
    r = int(np.floor(radius))
    grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    ball = (grid ** 2).sum(axis=0) <= radius ** 2
    if style == "binary":
        return ball.astype(dtype)
    # squared distances are small integers, exact in float32: the root is then rounded once, in `dtype`
    squared = edt.edtsq(np.pad(ball, 1), black_border=True)[1:-1, 1:-1, 1:-1]
    dist = np.sqrt(squared.astype(dtype))
    return dist / dist.max()


def clipped_placement(lo: np.ndarray, size: int, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(template slices, volume slices) of a cube of side `size` whose first voxel is at `lo`, cut at the
    volume's border; None if nothing of it lies inside."""
    src = tuple(slice(max(-first, 0), size - max(first + size - n, 0)) for first, n in zip(lo, shape))
    dst = tuple(slice(max(first, 0), min(first + size, n)) for first, n in zip(lo, shape))
    return (src, dst) if all(s.stop > s.start for s in dst) else None


def click_channel(points: np.ndarray, fov: FieldOfView, encoding: PromptEncoding) -> torch.Tensor:
    """Balls at the clicks (merged with max), cut at the patch border like a full-resolution ball would be."""
    channel = np.zeros((fov.patch,) * 3, dtype=np.float32)
    if len(points) == 0:
        return torch.from_numpy(channel)
    template = ball_template(max(encoding.point_radius / fov.zoom, 1.0), encoding.points)
    r = template.shape[0] // 2
    for centre in np.rint(fov.to_patch(points)).astype(int):
        placed = clipped_placement(centre - r, template.shape[0], channel.shape)
        if placed is not None:
            src, dst = placed
            np.maximum(channel[dst], template[src], out=channel[dst])
    return torch.from_numpy(channel)


def prompt_channels(prompt: ClassPrompt, fov: FieldOfView, encoding: PromptEncoding) -> dict[str, torch.Tensor]:
    """The box and click channels of one class on the patch grid."""
    return {
        "box": box_channel(prompt.box, fov, encoding.box),
        "fg_clicks": click_channel(prompt.fg, fov, encoding),
        "bg_clicks": click_channel(prompt.bg, fov, encoding),
    }


def stack_channels(named: dict[str, torch.Tensor], layout: tuple[str, ...]) -> torch.Tensor:
    """Order the logical channels as the network expects them: (C, P, P, P)."""
    shape = next(iter(named.values())).shape
    zero = torch.zeros(shape)
    return torch.stack([zero if name == "zero" else named[name] for name in layout])
