"""One class the way nnInteractive's session predicts it: crop around the newest prompt, AutoZoom,
refinement at full resolution after a zoomed-out pass, pasted over the previous mask.

When the time left cannot pay for the refinement passes, the zoomed-out answer is upsampled instead.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..autozoom import SESSION_BORDER, Look, auto_zoom
from ..case_io import ClassPrompt
from ..class_task import ClassOutcome, Effort, PreparedCase, keep_previous
from ..fusion import BlockMask, PatchOverMask, PatchProbability
from ..geometry import Region, clip, size_of, slices, start_of, union
from ..model import Model
from .refine import plan, upsampled
from .view import View, class_stamps, network_input, previous_crop

FG_MIN = 0.5 + 2**-11  # the float16 just above 1/2
BG_MAX = 0.5 - 2**-12  # the float16 just below 1/2


def decisive_probability(logit: torch.Tensor) -> torch.Tensor:
    """sigmoid(logit), nudged off 1/2 so that float16 storage and fusion keep `logit > 0` as the single-class decision."""
    p = torch.sigmoid(logit)
    return torch.where(logit > 0, p.clamp(min=FG_MIN), p.clamp(max=BG_MAX))


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort) -> ClassOutcome:
    """Probability for one class; outside the crop the class keeps its previous mask."""
    case, spec = prepared.case, model.spec
    previous = keep_previous(prepared, prompt.label) if prompt.label in prepared.prev_regions else None
    stamps = class_stamps(prompt, case.shape, effort.patch, spec.prompts.box, spec.settings.interaction_decay)
    if stamps.view is None:
        return ClassOutcome(previous, "no prompt: previous kept" if previous else "no prompt: empty")

    def predict(view: View, prev_crop: torch.Tensor | None = None) -> Look:
        x, prev = network_input(case.image, prepared.mean, prepared.std, case.prev_pred, prompt.label, stamps,
                                view, spec.channels, spec.prompts.point_radius, model.device, prev_crop)
        logit = model.foreground_logit(x)
        return Look(view, logit, logit > 0, prev)

    zoomed = auto_zoom(stamps.view, predict, lambda view: view.zoomed_out(spec.max_zoom), SESSION_BORDER.goes_on,
                       spec.max_zoom, effort)
    view, logit, passes = zoomed.last.view, zoomed.last.answer, zoomed.passes
    source = "box" if prompt.box is not None and not stamps.clicks else "click"
    how = f"nnInteractive view around the last {source}, patch {effort.patch}, zoom {view.zoom:.2f}"
    if view.zoom != 1 and effort.max_passes > 1:  # the session refines after any pass at f > 1
        coarse = upsampled(logit > 0, view.fov.side)
        boxes = plan(coarse, previous_crop(case.prev_pred, prompt.label, view.fov), view.fov, case.shape, view.centre)
        if time.monotonic() + len(boxes) * zoomed.pass_seconds < effort.stop_zooming_at:
            mask = refine(predict, prepared, prompt.label, coarse, view, boxes)
            passes += len(boxes)
            return ClassOutcome(mask, f"{how}, {passes} passes ({len(boxes)} refining)", passes)
    answer = PatchProbability.from_network(prompt.label, view.fov, decisive_probability(logit))
    return ClassOutcome(PatchOverMask(answer, previous), f"{how}, {passes} pass{'es' * (passes > 1)}", passes)


def refine(predict, prepared: PreparedCase, label: int, coarse: torch.Tensor, view: View,
           boxes: list[Region]) -> BlockMask:
    """Predict each box at zoom 1 in order, each seeing the coarse answer and the boxes before it as its
    previous mask; the boxes' answers replace the previous mask there (the session's section 3.6)."""
    case, fov = prepared.case, view.fov
    hull = union(*boxes)
    origin = start_of(hull)
    # the previous mask over the hull, the coarse answer over the crop, both only inside the image
    cache = torch.zeros(size_of(hull), dtype=torch.float16)
    inside = clip(hull, case.shape)
    if inside is not None and case.prev_pred is not None:
        cache[slices(inside, origin)] = torch.from_numpy(case.prev_pred[slices(inside)] == label).half()
    seen = clip(fov.region, case.shape)
    seen = clip(seen, hull) if seen is not None else None
    if seen is not None:
        cache[slices(seen, origin)] = coarse[slices(seen, fov.start)].half()
    for box in boxes:
        here = slices(box, origin)
        look = predict(View(tuple(a + view.patch // 2 for a, _ in box), 1, view.patch), cache[here])
        cache[here] = look.foreground.half()
    # only the boxes change the mask: the rest of the hull and the previous mask elsewhere stay
    previous = prepared.prev_regions.get(label)
    region = union(inside, previous)
    start = start_of(region)
    block = np.zeros(size_of(region), dtype=np.uint8)
    if previous:
        block[...] = case.prev_pred[slices(region)] == label
    for box in boxes:
        part = clip(box, case.shape)
        if part is not None:
            block[slices(part, start)] = cache[slices(part, origin)].numpy() > 0
    return BlockMask(label, start, block)
