"""One class of one case, our way: the field of view around all its prompts, the network, AutoZoom
without a box, then tiles or boundary refinement for an answer seen zoomed out."""
from __future__ import annotations

import torch

from ..autozoom import SEGFM_BORDER, ZOOM_OUT_STEP, Look, auto_zoom
from ..case_io import ClassPrompt
from ..class_task import ClassOutcome, Effort, PreparedCase, keep_previous
from ..field_of_view import FieldOfView, fit
from ..fusion import PatchProbability, PatchWithinMask
from ..model import Model
from .boundary import refine_boundary
from .inputs import network_input, prompt_region
from .tiles import predict_in_tiles


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort) -> ClassOutcome:
    """Probability for one class on the field of view of everything the user gave for it."""
    region = prompt_region(prepared, prompt)
    if region is None:
        return ClassOutcome(None, "no prompt: empty")
    spec = model.spec
    settings = spec.settings
    fov = fit(region, effort.patch)
    offset = settings.offset(prompt.box is not None, len(prompt.order), zoomed=fov.zoom > 1)

    def look(view: FieldOfView) -> Look:
        x = network_input(model, prepared, prompt, view)
        probs = model.probability(x, offset)
        previous = x[spec.channels.index("prev_seg")] > 0.5 if "prev_seg" in spec.channels \
            else torch.zeros_like(probs, dtype=torch.bool)
        return Look(view, probs, probs > 0.5, previous)

    # without a box the extent is unknown: zoom out while the object runs off the patch
    zoomed = auto_zoom(fov, look, lambda view: view.zoomed_out(ZOOM_OUT_STEP, spec.max_zoom), SEGFM_BORDER,
                       spec.max_zoom, effort, zoom=prompt.box is None)
    fov, passes = zoomed.last.view, zoomed.passes
    source = "box" if prompt.box is not None else "clicks"
    how = (f"{source}, {len(prompt.order)} rounds, patch {effort.patch}, zoom {fov.zoom:.2f}, "
           f"{passes} pass{'es' * (passes > 1)}")
    # the organisers' box spans exactly the object's slices: nothing of it lies outside them
    z_range = (prompt.box.lo[0], prompt.box.hi[0]) if prompt.box is not None and prompt.box.z_known else None
    answer = PatchProbability.from_network(prompt.label, fov, zoomed.last.answer, z_range)
    tiled = None
    if settings.full_resolution_tiles and prompt.box is not None and fov.zoom > 1 and effort.max_passes > 1:
        tiled = predict_in_tiles(model, prepared, prompt, answer, offset, effort.stop_zooming_at, zoomed.pass_seconds)
    if tiled is not None:
        answer, count = tiled
        how += f", {count} full-resolution tile{'s' * (count > 1)}"
        passes += count
    elif settings.boundary is not None and effort.refine_boundary:
        refined = refine_boundary(answer, prepared.case.image, settings.boundary, with_box=prompt.box is not None)
        how += ", boundary refined" if refined is not answer else ""
        answer = refined
    if removes_only(prepared, prompt):
        return ClassOutcome(PatchWithinMask(answer, keep_previous(prepared, prompt.label)),
                            how + ", within the previous mask", passes)
    return ClassOutcome(answer, how, passes)


def removes_only(prepared: PreparedCase, prompt: ClassPrompt) -> bool:
    """A negative click without a box may only take voxels away from the previous prediction.

    Without a box nothing bounds the object, and the network fed its own over-grown answer
    grew it further after each negative click (a brain parcel went from 4x to 17x its volume in
    three rounds). With a box the rule measured neutral, so it is left to the network there.
    """
    return prompt.box is None and prompt.order[-1:] == ("bg",) and prompt.label in prepared.prev_regions
