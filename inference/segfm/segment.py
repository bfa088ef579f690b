"""One class of one case, our way: the field of view around all its prompts, the network, AutoZoom
without a box (the border rule, and the scale search), then tiles or boundary refinement for an answer
seen zoomed out."""
from __future__ import annotations

import torch

from ..autozoom import SEGFM_BORDER, ZOOM_OUT_STEP, Look, auto_zoom
from ..case_io import ClassPrompt
from ..class_task import ClassOutcome, Effort, PreparedCase, keep_previous
from ..field_of_view import FieldOfView, fit
from ..fusion import PatchOverMask, PatchProbability, PatchWithinMask
from ..geometry import points_region
from ..model import Model
from .boundary import refine_boundary
from .inputs import network_input, prompt_region
from .tiles import predict_in_tiles


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort) -> ClassOutcome:
    """Probability for one class on the field of view of everything the user gave for it."""
    spec = model.spec
    settings = spec.settings
    has_box, rounds = prompt.box is not None, len(prompt.order)
    if settings.local_negative_click and not has_box and prompt.order[-1:] == ("bg",) \
            and prompt.label in prepared.prev_regions:
        return remove_around_click(model, prepared, prompt, effort)
    region = prompt_region(prepared, prompt)
    if region is None:
        return ClassOutcome(None, "no prompt: empty")
    first = fit(region, effort.patch)
    offset = settings.offset(has_box, rounds, zoomed=has_box and first.zoom > 1)
    search = settings.scale_search if not has_box and settings.scale_search is not None \
        and settings.scale_search.applies(rounds) else None

    def look(view: FieldOfView) -> Look:
        x = network_input(model, prepared, prompt, view)
        probs = model.probability(x, offset)
        previous = x[spec.channels.index("prev_seg")] > 0.5 if "prev_seg" in spec.channels \
            else torch.zeros_like(probs, dtype=torch.bool)
        return Look(view, probs, probs > 0.5, previous)

    def goes_on(seen: Look) -> bool:
        return SEGFM_BORDER.goes_on(seen) or (search is not None and search.goes_on(seen.answer, offset))

    # without a box the extent is unknown: zoom out while the object runs off the patch
    zoomed = auto_zoom(first, look, lambda view: view.zoomed_out(ZOOM_OUT_STEP, spec.max_zoom), goes_on,
                       spec.max_zoom, effort, zoom=not has_box)
    fov, probs, passes = zoomed.last.view, zoomed.last.answer, zoomed.passes
    how = f"{'box' if has_box else 'clicks'}, {rounds} rounds, patch {effort.patch}"
    if search is not None and fov.zoom > first.zoom:
        wide = moved(probs, settings.offset(has_box, rounds, zoomed=True) - offset)
        if len(prompt.fg) == 0 or search.holds_click(wide > 0.5, fov.to_patch(prompt.fg[-1:])[0]):
            probs, how = wide, how + ", scale search widened"
        else:  # the wider answer spread past the object: the view the prompts asked for stands
            fov, probs, how = first, zoomed.first.answer, how + f", scale search kept zoom {first.zoom:.2f} (click off centre)"
    how += f", zoom {fov.zoom:.2f}, {passes} pass{'es' * (passes > 1)}"
    # the organisers' box spans exactly the object's slices: nothing of it lies outside them
    z_range = (prompt.box.lo[0], prompt.box.hi[0]) if has_box and prompt.box.z_known else None
    answer = PatchProbability.from_network(prompt.label, fov, probs, z_range)
    tiled = None
    if settings.full_resolution_tiles and has_box and fov.zoom > 1 and effort.max_passes > 1:
        tiled = predict_in_tiles(model, prepared, prompt, answer, offset, effort.stop_zooming_at, zoomed.pass_seconds)
    if tiled is not None:
        answer, count = tiled
        how += f", {count} full-resolution tile{'s' * (count > 1)}"
        passes += count
    elif settings.boundary is not None and effort.refine_boundary:
        refined = refine_boundary(answer, prepared.case.image, settings.boundary, with_box=has_box)
        how += ", boundary refined" if refined is not answer else ""
        answer = refined
    if removes_only(prepared, prompt):
        return ClassOutcome(PatchWithinMask(answer, keep_previous(prepared, prompt.label)),
                            how + ", within the previous mask", passes)
    return ClassOutcome(answer, how, passes)


def remove_around_click(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort) -> ClassOutcome:
    """A negative click without a box, answered as nnInteractive's session would: on the zoom-1 view around it,
    pasted over the previous mask, which it may only shrink (`removes_only`).

    Seen with the whole object at zoom 2, the click is a ball of 2 patch voxels beside a mask that fills much
    of the patch, and the network answered the previous mask back. Around the click, over-grown answers of small
    parcels shrank (tuning targets: amygdala DSC_AUC 0.43 -> 0.92, hippocampus 0.81 -> 1.45); inside a large
    correct answer the zoom-1 view cuts a hole (docs/scale_search.md)."""
    view = fit(points_region(prompt.bg[-1:]), effort.patch)
    probs = model.probability(network_input(model, prepared, prompt, view), model.spec.settings.offset(False, len(prompt.order)))
    previous = keep_previous(prepared, prompt.label)
    answer = PatchOverMask(PatchProbability.from_network(prompt.label, view, probs), previous)
    return ClassOutcome(PatchWithinMask(answer, previous), f"clicks, {len(prompt.order)} rounds, negative click: "
                        f"patch {effort.patch} around it, zoom 1.00, 1 pass, within the previous mask", 1)


def moved(probs: torch.Tensor, logits: float) -> torch.Tensor:
    """Probabilities whose logit is moved by `logits` (another prompt setting's offset)."""
    return probs if logits == 0 else torch.sigmoid(torch.logit(probs.double()) + logits).float()


def removes_only(prepared: PreparedCase, prompt: ClassPrompt) -> bool:
    """A negative click without a box may only take voxels away from the previous prediction.

    Without a box nothing bounds the object, and the network fed its own over-grown answer
    grew it further after each negative click (a brain parcel went from 4x to 17x its volume in
    three rounds). With a box the rule measured neutral, so it is left to the network there.
    """
    return prompt.box is None and prompt.order[-1:] == ("bg",) and prompt.label in prepared.prev_regions
