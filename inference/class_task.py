"""What both pipelines share about one class of one case: how much work it gets, what the case
gives every class (`PreparedCase`), what a class answers (`ClassOutcome`), and its fallbacks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np

from .case_io import Case, ClassPrompt
from .fusion import ClassProbability, MaskProbability
from .geometry import Region, nonzero_block, region_of
from .model import Model
from .normalisation import intensity_stats

FIND_OBJECTS_VOXELS = 1 << 25


@dataclass(frozen=True)
class Effort:
    """How much work a class gets: patch side, AutoZoom passes, and when no new zoom-out may start."""

    patch: int
    max_passes: int = 5
    stop_zooming_at: float = math.inf  # monotonic time
    refine_boundary: bool = True  # when the model's spec asks for it (segfm/boundary.py)

    @classmethod
    def one_pass(cls, patch: int) -> "Effort":
        """Short of time: a single pass (no AutoZoom) and no boundary refinement."""
        return cls(patch, max_passes=1, refine_boundary=False)


@dataclass
class PreparedCase:
    """What every class of a case shares: the case, intensity statistics, where each previous label lies."""

    case: Case
    mean: float
    std: float
    prev_regions: dict[int, Region]


@dataclass
class ClassOutcome:
    probability: ClassProbability | None
    how: str  # one line for the progress log
    passes: int = 0  # network forward passes it took


def prepare(case: Case, model: Model) -> PreparedCase:
    mean, std = intensity_stats(case.image, model.spec.normalisation)
    return PreparedCase(case, mean, std, label_regions(case.prev_pred))


def label_regions(labels: np.ndarray | None) -> dict[int, Region]:
    """The region of every nonzero label: the labelled block from projections, then one pass over it."""
    block = nonzero_block(labels) if labels is not None else None
    if block is None:
        return {}
    start = np.array([b.start for b in block])
    return {label: region_of(lo + start, hi + start) for label, (lo, hi) in _block_bounds(labels[block]).items()}


def _block_bounds(labels: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Closed (lo, hi) of every nonzero label of a block."""
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


def keep_previous(prepared: PreparedCase, label: int) -> MaskProbability:
    return MaskProbability(label, prepared.prev_regions[label], prepared.case.prev_pred)


def fallback(prepared: PreparedCase | None, prompt: ClassPrompt) -> MaskProbability | None:
    """When a class fails: its previous prediction (if the case got prepared), else its box, else nothing."""
    if prepared is not None and prompt.label in prepared.prev_regions:
        return keep_previous(prepared, prompt.label)
    if prompt.box is not None:
        return MaskProbability(prompt.label, region_of(prompt.box.lo, prompt.box.hi))
    return None
