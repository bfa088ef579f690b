"""Full-resolution tiles: a box answer seen zoomed out, predicted again in zoom-1 tiles over its foreground.

At zoom z a patch voxel is z voxels wide, too coarse for thin parts and surfaces. Zoom-1 tiles
(`field_of_view.tiles`) cover the coarse foreground, each fed the coarse answer as its previous mask,
and are averaged where they overlap. Only for weights trained on such tiles (`model.json`
"full_resolution_tiles"; training's `samples.tile_pair` makes them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..case_io import ClassPrompt
from ..class_task import PreparedCase
from ..field_of_view import FieldOfView, sample_area, tiles
from ..fusion import BlockProbability, PatchProbability
from ..geometry import Region, clip, nonzero_block, slices, start_of
from ..model import Model
from .inputs import network_input


@dataclass(frozen=True)
class CoarseAnswer:
    """A zoomed-out answer at full resolution on its region, and the zoom-1 tiles that cover its foreground."""

    values: torch.Tensor  # probability on `region`
    mask: np.ndarray  # values > 0.5
    region: Region
    tiles: list[FieldOfView]

    @property
    def start(self) -> tuple[int, int, int]:
        return start_of(self.region)

    def previous(self, fov: FieldOfView) -> torch.Tensor:
        """What a tile's previous-mask channel shows: the coarse foreground."""
        return sample_area(self.mask, self.start, fov)


def coarse_answer(coarse: PatchProbability, shape: tuple[int, ...]) -> CoarseAnswer | None:
    """The tiles of a zoomed-out answer over its foreground; None when it is empty."""
    region = coarse.region(shape)
    if region is None:
        return None
    values = coarse.values(region)
    mask = (values > 0.5).numpy()
    block = nonzero_block(mask)
    if block is None:
        return None
    foreground = [[b.start + r, b.stop + r] for b, (r, _) in zip(block, region)]
    return CoarseAnswer(values, mask, region, tiles(foreground, coarse.fov.patch))


def predict_in_tiles(model: Model, prepared: PreparedCase, prompt: ClassPrompt, coarse: PatchProbability,
                     offset: float, stop_at: float, pass_seconds: float) -> tuple[BlockProbability, int] | None:
    """A zoomed-out answer predicted again at full resolution, and the number of tiles it took.

    None when the coarse answer is empty or the tiles would not end before `stop_at`.
    """
    answer = coarse_answer(coarse, prepared.case.shape)
    if answer is None or time.monotonic() + len(answer.tiles) * pass_seconds >= stop_at:
        return None
    start = answer.start
    total, count = torch.zeros_like(answer.values), torch.zeros(answer.values.shape, dtype=torch.uint8)
    for fov in answer.tiles:
        probs = model.probability(network_input(model, prepared, prompt, fov, previous=answer.previous(fov)), offset)
        part = clip(fov.region, answer.region)  # the tile's part inside the coarse answer's region
        total[slices(part, start)] += probs[slices(part, fov.start)].float()
        count[slices(part, start)] += 1
    averaged = torch.where(count > 0, total / count.clamp(min=1), answer.values)
    return BlockProbability.from_values(prompt.label, start, averaged), len(answer.tiles)
