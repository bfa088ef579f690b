"""The one Python API over the pipelines, as segment-anything's `SamPredictor`: set an image once, then ask
for a class's answer to its `ClassPrompt` over a previous mask. predict.py answers a challenge file through it,
the server (inference/server/) a viewer's session.

    segmenter = Segmenter(load_model("model_weights/default", backend="auto"))
    segmenter.set_image(image)                       # (z, y, x); intensity statistics computed once here
    mask = segmenter.mask(ClassPrompt(1, box=Box((10, 20, 20), (30, 60, 60), 20)))
    mask = segmenter.mask(ClassPrompt(1, box=..., fg=np.array([[18, 40, 41]]), order=("fg",)), previous=mask)
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .case_io import Case, ClassPrompt
from .class_task import ClassOutcome, Effort, PreparedCase, label_regions, prepare
from .fusion import apply_clicks, fuse_classes
from .model import Model
from .pipelines import segment_class


class Segmenter:
    """A model and the image it segments now; every class is answered by the model folder's pipeline."""

    def __init__(self, model: Model):
        self.model = model
        self.prepared: PreparedCase | None = None

    def set_image(self, image: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  name: str = "image") -> None:
        """A new 3D image in array order (z, y, x), `spacing` in the same order (mm)."""
        self.set_case(Case(name, image, tuple(float(s) for s in spacing), prompts=[]))

    def set_case(self, case: Case) -> PreparedCase:
        """A challenge case: its image, and its previous prediction as every class's previous mask."""
        self.prepared = prepare(case, self.model)
        return self.prepared

    def segment(self, prompt: ClassPrompt, effort: Effort | None = None,
                previous: np.ndarray | None = None) -> ClassOutcome:
        """One class's answer (a probability over part of the volume). `previous`: a label map in which
        `prompt.label` marks the class's previous mask; None keeps the case's previous prediction."""
        if self.prepared is None:
            raise RuntimeError("Segmenter.segment: set_image or set_case first")
        prepared = self.prepared
        if previous is not None:
            prepared = replace(prepared, case=replace(prepared.case, prev_pred=previous),
                               prev_regions=label_regions(previous))
        return segment_class(self.model, prepared, prompt, effort)

    def mask(self, prompt: ClassPrompt, previous: np.ndarray | None = None, effort: Effort | None = None) -> np.ndarray:
        """The class's mask over the whole volume (bool), as the batch predictor answers a case of this one class:
        the answer fused (foreground where p > 1/2), the clicked voxels as clicked."""
        outcome = self.segment(prompt, effort, previous)
        shape = self.prepared.case.shape
        labels = fuse_classes(shape, [outcome.probability] if outcome.probability is not None else [])
        return apply_clicks(labels, [prompt]) == prompt.label
