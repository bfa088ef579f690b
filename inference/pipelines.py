"""The pipelines a model folder can ask for (`model.json` "pipeline"): each one's settings and what segments a
class its way. The one module that knows them all; the shared modules above the pipeline folders know none.

"segfm": our field of view around all prompts, AutoZoom without a box, boundary refinement (segfm/);
"nninteractive": the reference session, for its public weights (nninteractive/). A folder is read here
(its `model.json`, or the nnInteractive download's layout) so that its pipeline can parse its own keys.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .case_io import ClassPrompt
from .class_task import ClassOutcome, Effort, PreparedCase, keep_previous
from .model import SPEC_FILE, Model, ModelSpec, load_network, parse_spec
from .nninteractive import layout as nninteractive_layout
from .nninteractive import segment as nninteractive
from .nninteractive.layout import SessionSettings
from .segfm import segment as segfm
from .segfm.settings import SegFMSettings

SegmentClass = Callable[[Model, PreparedCase, ClassPrompt, Effort], ClassOutcome]


@dataclass(frozen=True)
class Pipeline:
    settings: type  # parses the pipeline's keys of a spec: `from_spec(raw, spec_file)`, and names its `autocast`
    segment_class: SegmentClass


PIPELINES: dict[str, Pipeline] = {
    "segfm": Pipeline(SegFMSettings, segfm.segment_class),
    "nninteractive": Pipeline(SessionSettings, nninteractive.segment_class),
}


def raw_spec(folder: Path) -> dict:
    """`model.json`, or what an nnInteractive-layout folder stands for."""
    if (folder / SPEC_FILE).is_file():
        return json.loads((folder / SPEC_FILE).read_text())
    if nninteractive_layout.is_layout(folder):
        return nninteractive_layout.derive_spec(folder)
    raise FileNotFoundError(f"{folder}: no {SPEC_FILE}, and not an nnInteractive folder "
                            f"({nninteractive_layout.SESSION_FILE}, {nninteractive_layout.PLANS_FILE}, "
                            f"one fold_*/{nninteractive_layout.CHECKPOINT_NAME})")


def read_spec(folder: str | os.PathLike, patch_size: int | None = None, box_mode: str | None = None) -> ModelSpec:
    """Parse and check a model folder's spec, its pipeline's settings included; `patch_size` and `box_mode`
    override it. Raises ValueError naming the bad field."""
    folder = Path(folder)
    raw = raw_spec(folder)
    name = raw.get("pipeline", "segfm")
    if name not in PIPELINES:
        raise ValueError(f"{SPEC_FILE}: pipeline must be one of {tuple(PIPELINES)}, got {name!r}")
    settings = PIPELINES[name].settings.from_spec(raw, SPEC_FILE)
    return replace(parse_spec(folder, raw, patch_size, box_mode, autocast=settings.autocast), settings=settings)


def load_model(folder: str | os.PathLike, device: torch.device | None = None,
               patch_size: int | None = None, box_mode: str | None = None, backend: str = "torch") -> Model:
    """Build and load a model folder; `patch_size` / `box_mode` override its spec (e.g. a smaller patch on the CPU).

    `backend` runs the forward pass on the CPU: "torch"; "openvino" (the folder's IR, an error if it has
    none or it is stale); "auto" (OpenVINO when the IR is current and the package installed, else torch).
    """
    return load_network(read_spec(folder, patch_size, box_mode), device, backend)


def segment_class(model: Model, prepared: PreparedCase, prompt: ClassPrompt, effort: Effort | None = None) -> ClassOutcome:
    """Probability for one class by the model's pipeline; keeps the previous prediction when the user had nothing to fix."""
    if prompt.done and prompt.label in prepared.prev_regions:
        return ClassOutcome(keep_previous(prepared, prompt.label), "kept (no error left)")
    return PIPELINES[model.spec.pipeline].segment_class(model, prepared, prompt, effort or Effort(model.spec.patch_size))
