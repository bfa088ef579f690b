"""One class the way nnInteractive's session predicts it: crop around the newest prompt, AutoZoom,
refinement at full resolution after a zoomed-out pass, pasted over the previous mask.

When the time left cannot pay for the refinement passes, the zoomed-out answer is upsampled instead.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .fusion import BlockMask, PatchOverMask, PatchProbability
from .model import Model
from .nninteractive_refine import plan, upsampled
from .nninteractive_view import View, border_changed, class_stamps, network_input, previous_crop
from .segment import ClassOutcome, Effort, PreparedCase, keep_previous

FG_MIN = 0.5 + 2**-11  # the float16 just above 1/2
BG_MAX = 0.5 - 2**-12  # the float16 just below 1/2


def decisive_probability(margin: torch.Tensor) -> torch.Tensor:
    """sigmoid(margin), nudged off 1/2 so that float16 storage and fusion keep `margin > 0` as the single-class decision."""
    p = torch.sigmoid(margin)
    return torch.where(margin > 0, p.clamp(min=FG_MIN), p.clamp(max=BG_MAX))


def segment_class_nninteractive(model: Model, prepared: PreparedCase, prompt, effort: Effort) -> ClassOutcome:
    """Probability for one class; outside the crop the class keeps its previous mask."""
    case, spec = prepared.case, model.spec
    previous = keep_previous(prepared, prompt.label) if prompt.label in prepared.prev_bounds else None
    stamps = class_stamps(prompt, case.shape, effort.patch, spec.prompts.box, spec.interaction_decay)
    if stamps.view is None:
        return ClassOutcome(previous, "no prompt: previous kept" if previous else "no prompt: empty")

    def predict(view, prev_crop=None):
        x, prev = network_input(case.image, prepared.mean, prepared.std, case.prev_pred, prompt.label, stamps,
                                view, spec.channels, spec.prompts.point_radius, model.device, prev_crop)
        return model.margin(x), prev

    view = stamps.view
    t0 = time.monotonic()
    margin, prev = predict(view)
    passes, pass_seconds = 1, time.monotonic() - t0
    while (view.factor < spec.max_zoom and passes < effort.max_passes
           and time.monotonic() + pass_seconds < effort.stop_zooming_at and border_changed(margin > 0, prev)):
        view = view.zoomed_out(spec.max_zoom)
        margin, prev = predict(view)
        passes += 1
    source = "box" if prompt.box is not None and not stamps.clicks else "click"
    how = f"nnInteractive view around the last {source}, patch {effort.patch}, zoom {view.factor:.2f}"
    if view.factor != 1 and effort.max_passes > 1:  # the session refines after any pass at f > 1
        coarse = upsampled(margin > 0, view.fov.side)
        boxes = plan(coarse, previous_crop(case.prev_pred, prompt.label, view.fov), view.fov, case.shape, view.centre)
        if time.monotonic() + len(boxes) * pass_seconds < effort.stop_zooming_at:
            mask = refine(predict, prepared, prompt.label, coarse, view, boxes)
            passes += len(boxes)
            return ClassOutcome(mask, f"{how}, {passes} passes ({len(boxes)} refining)", passes)
    patch = PatchProbability.from_network(prompt.label, view.fov, decisive_probability(margin))
    return ClassOutcome(PatchOverMask(patch, previous), f"{how}, {passes} pass{'es' * (passes > 1)}", passes)


def _slices(bounds, origin) -> tuple[slice, ...]:
    return tuple(slice(a - o, b - o) for (a, b), o in zip(bounds, origin))


def _union(boxes):
    return [[min(b[d][0] for b in boxes), max(b[d][1] for b in boxes)] for d in range(3)]


def _clip(bounds, limits):
    """`bounds` cut to a volume shape, or to other bounds; None if nothing is left."""
    limits = [lim if isinstance(lim, (list, tuple)) else (0, lim) for lim in limits]
    box = [[max(a, lo), min(b, hi)] for (a, b), (lo, hi) in zip(bounds, limits)]
    return box if all(a < b for a, b in box) else None


def refine(predict, prepared: PreparedCase, label: int, coarse: torch.Tensor, view: View, boxes) -> BlockMask:
    """Predict each box at zoom 1 in order, each seeing the coarse answer and the boxes before it as its
    previous mask; the boxes' answers replace the previous mask there (the session's section 3.6)."""
    case, fov = prepared.case, view.fov
    hull = _union(boxes)
    origin = [a for a, _ in hull]
    # the previous mask over the hull, the coarse answer over the crop, both only inside the image
    cache = torch.zeros([b - a for a, b in hull], dtype=torch.float16)
    inside = _clip(hull, case.shape)
    if inside is not None and case.prev_pred is not None:
        cache[_slices(inside, origin)] = torch.from_numpy(case.prev_pred[_slices(inside, (0, 0, 0))] == label).half()
    seen = _clip(fov.bbox, case.shape)
    seen = _clip(seen, hull) if seen is not None else None
    if seen is not None:
        cache[_slices(seen, origin)] = coarse[_slices(seen, fov.start)].half()
    for box in boxes:
        here = _slices(box, origin)
        margin, _ = predict(View(tuple(a + view.patch // 2 for a, _ in box), 1, view.patch), cache[here])
        cache[here] = (margin > 0).half()
    # only the boxes change the mask: the rest of the hull and the previous mask elsewhere stay
    bounds = prepared.prev_bounds.get(label)
    region = _union([b for b in (inside, [[lo, hi + 1] for lo, hi in zip(*bounds)] if bounds else None) if b])
    start = tuple(a for a, _ in region)
    block = np.zeros([b - a for a, b in region], dtype=np.uint8)
    if bounds:
        block[...] = case.prev_pred[_slices(region, (0, 0, 0))] == label
    for box in boxes:
        part = _clip(box, case.shape)
        if part is not None:
            block[_slices(part, start)] = cache[_slices(part, origin)].numpy() > 0
    return BlockMask(label, start, block)
