"""The pipelines a model folder can ask for (`model.json` "pipeline"), and one class segmented by its own.

"segfm": our field of view around all prompts, AutoZoom without a box, boundary refinement (segfm/);
"nninteractive": the reference session, for its public weights (nninteractive/). model.py parses each
one's settings (`PIPELINE_SETTINGS`); this table says what runs it.
"""
from __future__ import annotations

from collections.abc import Callable

from .case_io import ClassPrompt
from .class_task import ClassOutcome, Effort, PreparedCase, keep_previous
from .model import Model
from .nninteractive import segment as nninteractive
from .segfm import segment as segfm

SegmentClass = Callable[[Model, PreparedCase, ClassPrompt, Effort], ClassOutcome]
PIPELINES: dict[str, SegmentClass] = {"segfm": segfm.segment_class, "nninteractive": nninteractive.segment_class}


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort | None = None) -> ClassOutcome:
    """Probability for one class by the model's pipeline; keeps the previous prediction when the user had nothing to fix."""
    if prompt.done and prompt.label in prepared.prev_regions:
        return ClassOutcome(keep_previous(prepared, prompt.label), "kept (no error left)")
    return PIPELINES[model.spec.pipeline](model, prepared, prompt, effort or Effort(model.spec.patch_size))
