"""The segfm network input: one field of view around everything the user gave for a class, every channel
resampled onto its patch grid by the shared steps (field_of_view, prompts, normalisation)."""
from __future__ import annotations

import torch

from ..case_io import ClassPrompt
from ..class_task import PreparedCase
from ..field_of_view import FieldOfView, sample_area, sample_linear
from ..geometry import Region, points_region, slices, start_of, union
from ..model import Model
from ..prompts import box_region, prompt_channels, stack_channels


def prompt_region(prepared: PreparedCase, prompt: ClassPrompt) -> Region | None:
    """Union of everything the user gave for this class: box, every click, the previous prediction."""
    box = box_region(prompt.box, "slab") if prompt.box is not None else None
    return union(box, points_region(prompt.clicks), prepared.prev_regions.get(prompt.label))


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
    region = prepared.prev_regions.get(label)
    if region is None:
        return torch.zeros((fov.patch,) * 3)
    mask = prepared.case.prev_pred[slices(region)] == label
    return sample_area(mask, start_of(region), fov)
