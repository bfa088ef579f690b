"""Scores of the official SegFM3D evaluator (CVPR25_iter_eval.py), reproduced exactly.

- DSC of a case: mean over the ground-truth classes (sorted unique values of `gts` without
  the smallest one, which is the background 0) of the Dice coefficient of `gts == c` and
  `segs == c`. A label predicted but absent from the ground truth does not count.
- NSD of a case: mean over the same classes of the surface Dice at 2 mm tolerance
  (`surface_distance`, DeepMind's surfel-area algorithm, which the evaluator's SurfaceDice.py
  copies). It is only computed when the case DSC > 0.2, else it is 0.0.
- Spacing: the evaluator passes `spacing` as stored in the npz, (x, y, z), against arrays
  ordered (z, y, x); that quirk is the default here. `physical_spacing=True` reverses it.
- AUC over the 5 click rounds (the box call is not scored): trapezoid rule on unit steps,
  0.5*s1 + s2 + s3 + s4 + 0.5*s5 (at most 4.0). Final: the last round's score.
- Budget: all calls of a case together may take 90 s per class; over it, DSC and NSD are 0.

Empty masks. `surface_distance` 0.1 writes `np.NaN` / `np.Inf`, removed in NumPy 2, so it
raises AttributeError when both Dice masks are empty or when one surface mask is empty. The
cases are handled here before the library is called, with the values the evaluator gets on
NumPy 1: an empty prediction of a ground-truth class scores DSC 0 and NSD 0 (its surface is
at infinite distance); two empty masks give NaN (Dice and NSD alike); a case whose ground
truth has no class gives DSC NaN (the mean of nothing) and therefore NSD 0.0.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import integrate
from surface_distance import (
    compute_dice_coefficient,
    compute_surface_dice_at_tolerance,
    compute_surface_distances,
)

NSD_TOLERANCE_MM = 2.0
NSD_MIN_DSC = 0.2  # NSD is computed only when the case DSC is strictly above this
N_CLICK_ROUNDS = 5  # rounds scored by the AUC: the last 5 calls, not the box call
SECONDS_PER_CLASS = 90.0


def case_classes(gts: np.ndarray) -> list[int]:
    """The scored classes: sorted unique values of `gts` except the smallest (the background 0)."""
    try:
        values = np.unique(gts, sorted=False)  # hash-based, about twice as fast (NumPy >= 2.3)
    except TypeError:
        values = np.unique(gts)
    return [int(v) for v in np.sort(values)[1:]]


def dice(gt_mask: np.ndarray, seg_mask: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; NaN when both are empty, as surface_distance intends."""
    gt_mask = np.asarray(gt_mask, dtype=bool)
    seg_mask = np.asarray(seg_mask, dtype=bool)
    if not gt_mask.any() and not seg_mask.any():
        return float("nan")  # the library's np.NaN fails on NumPy 2
    return float(compute_dice_coefficient(gt_mask, seg_mask))


def surface_dice(gt_mask: np.ndarray, seg_mask: np.ndarray, spacing_mm: Sequence[float],
                 tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Surface Dice of two boolean masks, `spacing_mm` given per array axis; 0 if one is empty."""
    gt_mask = np.asarray(gt_mask, dtype=bool)
    seg_mask = np.asarray(seg_mask, dtype=bool)
    gt_any, seg_any = bool(gt_mask.any()), bool(seg_mask.any())
    if not (gt_any and seg_any):
        # The library's np.Inf fails on NumPy 2; on NumPy 1 one empty mask scores 0, both NaN.
        return 0.0 if gt_any or seg_any else float("nan")
    distances = compute_surface_distances(gt_mask, seg_mask, spacing_mm=spacing_mm)
    return float(compute_surface_dice_at_tolerance(distances, tolerance_mm))


def array_spacing(spacing_xyz: Sequence[float], physical_spacing: bool = False) -> tuple[float, float, float]:
    """Spacing per array axis: as stored (the evaluator's quirk), or reversed to (z, y, x) if physical."""
    spacing = tuple(float(s) for s in np.asarray(spacing_xyz, dtype=np.float64).ravel())
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 values, got {spacing_xyz!r}")
    return spacing[::-1] if physical_spacing else spacing


def _mean(values: list[float]) -> float:
    """Mean as the evaluator takes it (np.mean), NaN without a warning for an empty list."""
    return float(np.mean(values)) if values else float("nan")


def _case_dsc(gts: np.ndarray, segs: np.ndarray, classes: list[int]) -> float:
    """Case DSC over the given classes."""
    return _mean([dice(gts == c, segs == c) for c in classes])


def _case_nsd(gts: np.ndarray, segs: np.ndarray, spacing: tuple[float, float, float], classes: list[int],
              tolerance_mm: float) -> float:
    """Case NSD over the given classes, spacing already per array axis."""
    return _mean([surface_dice(gts == c, segs == c, spacing, tolerance_mm) for c in classes])


def case_dsc(gts: np.ndarray, segs: np.ndarray) -> float:
    """Mean Dice over the ground-truth classes (a class missing from `segs` counts 0)."""
    return _case_dsc(gts, segs, case_classes(gts))


def case_nsd(gts: np.ndarray, segs: np.ndarray, spacing_xyz: Sequence[float], physical_spacing: bool = False,
             tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Mean surface Dice over the ground-truth classes (no DSC > 0.2 rule here)."""
    spacing = array_spacing(spacing_xyz, physical_spacing)
    return _case_nsd(gts, segs, spacing, case_classes(gts), tolerance_mm)


def class_scores(gts: np.ndarray, segs: np.ndarray, spacing_xyz: Sequence[float],
                 physical_spacing: bool = False) -> tuple[list[float], list[float]]:
    """Per ground-truth class, the DSC and NSD of one call whose means are the evaluator's case scores: NSD
    is 0.0 for every class unless the case DSC (their mean) is > 0.2."""
    classes = case_classes(gts)
    dsc = [dice(gts == c, segs == c) for c in classes]
    if not _mean(dsc) > NSD_MIN_DSC:  # also false for NaN, as in the evaluator
        return dsc, [0.0] * len(classes)
    spacing = array_spacing(spacing_xyz, physical_spacing)
    return dsc, [surface_dice(gts == c, segs == c, spacing, NSD_TOLERANCE_MM) for c in classes]


def case_means(dsc: list[float], nsd: list[float]) -> tuple[float, float]:
    """The case's (DSC, NSD) from `class_scores`: NaN DSC and NSD 0.0 for a case without classes."""
    return _mean(dsc), (_mean(nsd) if nsd else 0.0)


def round_scores(gts: np.ndarray, segs: np.ndarray, spacing_xyz: Sequence[float],
                 physical_spacing: bool = False) -> tuple[float, float]:
    """(DSC, NSD) of one call as the evaluator scores it: NSD is 0.0 unless DSC > 0.2."""
    return case_means(*class_scores(gts, segs, spacing_xyz, physical_spacing))


def auc(scores: Sequence[float]) -> float:
    """Trapezoid area under the last 5 scores on unit steps, exactly as the evaluator (max 4.0)."""
    if len(scores) < N_CLICK_ROUNDS:
        raise ValueError(f"need at least {N_CLICK_ROUNDS} scores, got {len(scores)}")
    last = np.array(list(scores)[-N_CLICK_ROUNDS:], dtype=np.float64)
    return float(integrate.cumulative_trapezoid(last, np.arange(N_CLICK_ROUNDS))[-1])


def final_score(scores: Sequence[float]) -> float:
    """The score of the last round."""
    return float(scores[-1])


def budget_seconds(n_classes: int) -> float:
    """Time allowed for all calls of a case together: 90 s per class."""
    return SECONDS_PER_CLASS * n_classes


def over_budget(total_seconds: float, n_classes: int) -> bool:
    """Whether a case's total running time exceeds its budget (equal to the budget is within)."""
    return total_seconds > budget_seconds(n_classes)
