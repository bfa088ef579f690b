"""One class of one case: choose the field of view, build the network input, run, zoom out if needed."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import cc3d
import numpy as np
import torch

from .boundary import refine_boundary
from .case_io import Case, ClassPrompt
from .field_of_view import (Bounds, FieldOfView, fit, nonzero_block, points_bounds, sample_area, sample_linear, tiles,
                            union)
from .fusion import BlockProbability, ClassProbability, MaskProbability, PatchProbability, PatchWithinMask
from .model import Model
from .nninteractive_view import BORDER_ABSOLUTE, BORDER_MINIMUM, BORDER_RELATIVE, ZOOM_OUT_STEP
from .normalisation import intensity_stats
from .prompts import box_bounds, prompt_channels, stack_channels

# nnInteractive's AutoZoom thresholds (voxels on a 192^2 face) as fractions of a face.
BORDER_CHANGED_FRACTION = BORDER_ABSOLUTE / 192**2
BORDER_MIN_FRACTION = BORDER_MINIMUM / 192**2
BORDER_RELATIVE_CHANGE = BORDER_RELATIVE
FIND_OBJECTS_VOXELS = 1 << 25


@dataclass(frozen=True)
class Effort:
    """How much work a class gets: patch side, AutoZoom passes, and when no new zoom-out may start."""

    patch: int
    max_passes: int = 5
    stop_zooming_at: float = math.inf  # monotonic time
    refine_boundary: bool = True  # when the model's spec asks for it (boundary.py)

    @classmethod
    def one_pass(cls, patch: int) -> "Effort":
        """Short of time: a single pass (no AutoZoom) and no boundary refinement."""
        return cls(patch, max_passes=1, refine_boundary=False)


@dataclass
class PreparedCase:
    """What every class of a case shares: the case, intensity statistics, previous-label bounds."""

    case: Case
    mean: float
    std: float
    prev_bounds: dict[int, Bounds]


@dataclass
class ClassOutcome:
    probability: ClassProbability | None
    how: str  # one line for the progress log
    passes: int = 0  # network forward passes it took


def prepare(case: Case, model: Model) -> PreparedCase:
    mean, std = intensity_stats(case.image, model.spec.normalisation)
    return PreparedCase(case, mean, std, label_bounds(case.prev_pred))


def label_bounds(labels: np.ndarray | None) -> dict[int, Bounds]:
    """Closed bounds of every nonzero label: the labelled block from projections, then one pass over it."""
    block = nonzero_block(labels) if labels is not None else None
    if block is None:
        return {}
    start = np.array([b.start for b in block])
    return {label: (tuple(int(v) for v in lo + start), tuple(int(v) for v in hi + start))
            for label, (lo, hi) in _block_bounds(labels[block]).items()}


def _block_bounds(labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    # scipy's find_objects is 3x faster than cc3d's statistics but costs 0.2 s to import: used on large blocks
    if labels.size <= FIND_OBJECTS_VOXELS:
        try:
            stats = cc3d.statistics(labels, no_slice_conversion=True)
            return {label: (np.array(bb[0::2]), np.array(bb[1::2]))
                    for label, (count, bb) in enumerate(zip(stats["voxel_counts"], stats["bounding_boxes"]))
                    if label > 0 and count > 0}
        except ValueError:  # cc3d refuses label values above the voxel count (tiny volumes)
            pass
    from scipy import ndimage

    return {label: (np.array([w.start for w in where]), np.array([w.stop - 1 for w in where]))
            for label, where in enumerate(ndimage.find_objects(labels), start=1) if where is not None}


def prompt_bounds(prepared: PreparedCase, prompt: ClassPrompt) -> Bounds | None:
    """Union of everything the user gave for this class: box, every click, the previous prediction."""
    box = box_bounds(prompt.box, "slab") if prompt.box is not None else None
    return union(box, points_bounds(prompt.clicks), prepared.prev_bounds.get(prompt.label))


def network_input(model: Model, prepared: PreparedCase, prompt: ClassPrompt, fov: FieldOfView,
                  previous: torch.Tensor | None = None) -> torch.Tensor:
    """The network's channels for one class on `fov`; `previous` stands in for the previous prediction's channel."""
    case = prepared.case
    image = (sample_linear(case.image, fov, pad_value=prepared.mean) - prepared.mean) / prepared.std
    if previous is None:
        previous = previous_channel(prepared, prompt.label, fov)
    named = {"image": image, "prev_seg": previous}
    named.update(prompt_channels(prompt, fov, model.spec.prompts))
    return stack_channels(named, model.spec.channels)


def previous_channel(prepared: PreparedCase, label: int, fov: FieldOfView) -> torch.Tensor:
    bounds = prepared.prev_bounds.get(label)
    if bounds is None:
        return torch.zeros((fov.patch,) * 3)
    (z0, y0, x0), (z1, y1, x1) = bounds
    mask = prepared.case.prev_pred[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] == label
    return sample_area(mask, (z0, y0, x0), fov)


def border_changed(pred: torch.Tensor, prev: torch.Tensor) -> bool:
    """AutoZoom's test: did the prediction change on a face of the patch (so the object goes on)?"""
    face = pred.shape[0] * pred.shape[1]
    for axis in range(3):
        for end in (0, -1):
            new, old = pred.select(axis, end), prev.select(axis, end)
            changed = int((new != old).sum())
            if changed > BORDER_CHANGED_FRACTION * face:
                return True
            if changed > BORDER_MIN_FRACTION * face and changed > BORDER_RELATIVE_CHANGE * int(old.sum()):
                return True
    return False


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt,
                  effort: Effort | None = None) -> ClassOutcome:
    """Probability for one class; keeps the previous prediction when the user had nothing to fix."""
    if prompt.done and prompt.label in prepared.prev_bounds:
        return ClassOutcome(keep_previous(prepared, prompt.label), "kept (no error left)")
    if model.spec.pipeline == "nninteractive":
        from .segment_nninteractive import segment_class_nninteractive  # it builds on this module

        return segment_class_nninteractive(model, prepared, prompt, effort or Effort(model.spec.patch_size))
    bounds = prompt_bounds(prepared, prompt)
    if bounds is None:
        return ClassOutcome(None, "no prompt: empty")
    effort = effort or Effort(model.spec.patch_size)
    fov = fit(bounds, effort.patch)
    t0 = time.monotonic()
    offset = model.spec.offset(prompt.box is not None, len(prompt.order), zoomed=fov.zoom > 1)
    x = network_input(model, prepared, prompt, fov)
    probs = model.probability(x, offset)
    passes, pass_seconds = 1, time.monotonic() - t0
    if prompt.box is None:  # without a box the extent is unknown: zoom out while the object runs off the patch
        prev = x[model.spec.channels.index("prev_seg")] > 0.5 if "prev_seg" in model.spec.channels else None
        prev = torch.zeros_like(probs, dtype=torch.bool) if prev is None else prev
        while (fov.zoom < model.spec.max_zoom and passes < effort.max_passes
               and time.monotonic() + pass_seconds < effort.stop_zooming_at
               and border_changed(probs > 0.5, prev)):
            fov = fov.zoomed_out(ZOOM_OUT_STEP, model.spec.max_zoom)
            x = network_input(model, prepared, prompt, fov)
            probs = model.probability(x, offset)
            passes += 1
            if "prev_seg" in model.spec.channels:
                prev = x[model.spec.channels.index("prev_seg")] > 0.5
    source = "box" if prompt.box is not None else "clicks"
    how = (f"{source}, {len(prompt.order)} rounds, patch {effort.patch}, zoom {fov.zoom:.2f}, "
           f"{passes} pass{'es' * (passes > 1)}")
    # the organisers' box spans exactly the object's slices: nothing of it lies outside them
    z_range = (prompt.box.lo[0], prompt.box.hi[0]) if prompt.box is not None else None
    patch = PatchProbability.from_network(prompt.label, fov, probs, z_range)
    tiled = None
    if model.spec.full_resolution_tiles and prompt.box is not None and fov.zoom > 1 and effort.max_passes > 1:
        tiled = predict_in_tiles(model, prepared, prompt, patch, offset, effort.stop_zooming_at, pass_seconds)
    if tiled is not None:
        patch, count = tiled
        how += f", {count} full-resolution tile{'s' * (count > 1)}"
        passes += count
    elif model.spec.boundary is not None and effort.refine_boundary:
        refined = refine_boundary(patch, prepared.case.image, model.spec.boundary, with_box=prompt.box is not None)
        how += ", boundary refined" if refined is not patch else ""
        patch = refined
    if removes_only(prepared, prompt):
        return ClassOutcome(PatchWithinMask(patch, keep_previous(prepared, prompt.label)),
                            how + ", within the previous mask", passes)
    return ClassOutcome(patch, how, passes)


@dataclass(frozen=True)
class CoarseAnswer:
    """A zoomed-out answer at full resolution on its region, and the zoom-1 tiles that cover its foreground."""

    values: torch.Tensor  # probability on `region`
    mask: np.ndarray  # values > 0.5
    region: list[list[int]]  # half-open volume bounds
    tiles: list[FieldOfView]

    @property
    def start(self) -> tuple[int, int, int]:
        return tuple(a for a, _ in self.region)

    def previous(self, fov: FieldOfView) -> torch.Tensor:
        """What a tile's previous-mask channel shows: the coarse foreground."""
        return sample_area(self.mask, self.start, fov)


def coarse_answer(coarse: PatchProbability, shape: tuple[int, ...]) -> CoarseAnswer | None:
    """The tiles of a zoomed-out answer (`field_of_view.tiles` over its foreground); None when it is empty."""
    region = coarse.region(shape)
    if region is None:
        return None
    values = coarse.values(region)
    mask = (values > 0.5).numpy()
    block = nonzero_block(mask)
    if block is None:
        return None
    lo = tuple(b.start + r for b, (r, _) in zip(block, region))
    hi = tuple(b.stop - 1 + r for b, (r, _) in zip(block, region))
    return CoarseAnswer(values, mask, region, tiles((lo, hi), coarse.fov.patch))


def predict_in_tiles(model: Model, prepared: PreparedCase, prompt: ClassPrompt, coarse: PatchProbability,
                     offset: float, stop_at: float, pass_seconds: float) -> tuple[BlockProbability, int] | None:
    """A zoomed-out answer predicted again at full resolution, and the number of tiles it took.

    Zoom-1 tiles cover the coarse foreground, each fed the coarse answer as its previous mask, and
    are averaged where they overlap: at zoom z a patch voxel is z voxels wide, too coarse for thin
    parts and surfaces. None when the coarse answer is empty or the tiles would not end before `stop_at`.
    """
    answer = coarse_answer(coarse, prepared.case.shape)
    if answer is None or time.monotonic() + len(answer.tiles) * pass_seconds >= stop_at:
        return None
    start = answer.start
    total, count = torch.zeros_like(answer.values), torch.zeros(answer.values.shape, dtype=torch.uint8)
    for fov in answer.tiles:
        probs = model.probability(network_input(model, prepared, prompt, fov, previous=answer.previous(fov)), offset)
        # the part of the tile inside the coarse answer's region, in tile and in region coordinates
        part = [[max(a, lo), min(a + fov.side, hi)] for a, (lo, hi) in zip(fov.start, answer.region)]
        in_tile = tuple(slice(a - t, b - t) for (a, b), t in zip(part, fov.start))
        in_region = tuple(slice(a - s, b - s) for (a, b), s in zip(part, start))
        total[in_region] += probs[in_tile].float()
        count[in_region] += 1
    averaged = torch.where(count > 0, total / count.clamp(min=1), answer.values)
    return BlockProbability.from_values(prompt.label, start, averaged), len(answer.tiles)


def removes_only(prepared: PreparedCase, prompt: ClassPrompt) -> bool:
    """A negative click without a box may only take voxels away from the previous prediction.

    Without a box nothing bounds the object, and the network fed its own over-grown answer
    grew it further after each negative click (a brain parcel went from 4x to 17x its volume in
    three rounds). With a box the rule measured neutral, so it is left to the network there.
    """
    return prompt.box is None and prompt.order[-1:] == ("bg",) and prompt.label in prepared.prev_bounds


def keep_previous(prepared: PreparedCase, label: int) -> MaskProbability:
    lo, hi = prepared.prev_bounds[label]
    return MaskProbability(label, [[a, b + 1] for a, b in zip(lo, hi)], prepared.case.prev_pred)


def fallback(prepared: PreparedCase | None, prompt: ClassPrompt) -> MaskProbability | None:
    """When a class fails: its previous prediction (if the case got prepared), else its box, else nothing."""
    if prepared is not None and prompt.label in prepared.prev_bounds:
        return keep_previous(prepared, prompt.label)
    if prompt.box is not None:
        return MaskProbability(prompt.label, [[a, b + 1] for a, b in zip(prompt.box.lo, prompt.box.hi)])
    return None
