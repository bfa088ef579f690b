"""One class the way nnInteractive's session predicts it: crop around the newest prompt, AutoZoom, paste over the previous mask.

Differs from the session in one place: after a zoomed-out pass (f > 1) the session re-predicts the
changed region at full resolution in patch-sized boxes; here the coarse pass is upsampled instead.
"""
from __future__ import annotations

import time

import torch

from .fusion import PatchOverMask, PatchProbability
from .model import Model
from .nninteractive_view import border_changed, class_stamps, network_input
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

    def predict(view):
        x, prev = network_input(case.image, prepared.mean, prepared.std, case.prev_pred, prompt.label, stamps,
                                view, spec.channels, spec.prompts.point_radius, model.device)
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
    patch = PatchProbability.from_network(prompt.label, view.fov, decisive_probability(margin))
    source = "box" if prompt.box is not None and not stamps.clicks else "click"
    how = (f"nnInteractive view around the last {source}, patch {effort.patch}, zoom {view.factor:.2f}, "
           f"{passes} pass{'es' * (passes > 1)}")
    return ClassOutcome(PatchOverMask(patch, previous), how, passes)
