"""Tests for inference.harness.metrics: the official evaluator's DSC, NSD, AUC and time budget."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, ndimage

from inference.harness.metrics import (
    array_spacing,
    auc,
    budget_seconds,
    case_classes,
    case_dsc,
    case_nsd,
    dice,
    final_score,
    over_budget,
    round_scores,
    surface_dice,
)

# surface_distance 0.1 imports scipy.ndimage.filters / .morphology, deprecated namespaces (SciPy 2.0 removes them).
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

ISO = (1.0, 1.0, 1.0)
EDGE_AREA = math.sqrt(2) / 2  # surfel area (mm^2 at 1 mm) of a corner point on a box edge: 2 of 8 voxels
CORNER_AREA = math.sqrt(3) / 8  # on a box corner: 1 of 8 voxels


# ----------------------------------------------------------------------------- helpers


def box(shape, lo, hi, label: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """`out` (or a new uint8 zero volume) with `label` written in the box [lo, hi)."""
    vol = np.zeros(shape, np.uint8) if out is None else out
    vol[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return vol


def shifted_cubes(side: int, shift: int, axis: int = 0, margin: int = 4):
    """Two cubes of `side` voxels, the second moved by `shift` voxels along `axis`."""
    shape = (side + shift + 2 * margin,) * 3
    lo = [margin] * 3
    hi = [margin + side] * 3
    gt = box(shape, lo, hi)
    lo[axis] += shift
    hi[axis] += shift
    return gt, box(shape, lo, hi)


def ball(shape, centre, radius: float) -> np.ndarray:
    """Voxels whose centre lies within `radius` of `centre`."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return (r2 <= radius**2).astype(np.uint8)


def reference_dsc(gts: np.ndarray, segs: np.ndarray) -> float:
    """Brute force: 2|G∩S| / (|G| + |S|) per class of sorted(set(gts)) without its smallest value."""
    values = []
    for c in sorted(set(gts.ravel().tolist()))[1:]:
        g, s = gts == c, segs == c
        values.append(2 * np.count_nonzero(g & s) / (np.count_nonzero(g) + np.count_nonzero(s)))
    return float(np.mean(values))


def slab_nsd_expected(lateral: int, thick: int, shift: int, tol: int) -> float:
    """NSD of an L x L x t box against itself moved by `shift` voxels along its thickness (1 mm).

    Counted on the corner-point grid of the surfel algorithm: face points weigh 1, edge points
    sqrt(2)/2, corner points sqrt(3)/8. Needs tol < shift < thick - tol, so that the bottom face
    is out of tolerance (>= shift), the top face is in only within tol of the side faces (the other
    box's bottom is thick - shift away), and a side point at height z is in when z >= shift - tol.
    By symmetry the moved box scores the same as the original.
    """
    L, t, d = lateral, thick, shift
    assert tol < d < t - tol and d - tol >= 1
    side_rows = t - (d - tol)  # side points at z = d - tol .. t - 1
    inside = ((L - 1) ** 2 - (L - 1 - 2 * tol) ** 2  # top face: band along the perimeter
              + 4 * (L - 1) * EDGE_AREA + 4 * CORNER_AREA  # top edges and corners: on the other side faces
              + 4 * (L - 1) * side_rows + 4 * side_rows * EDGE_AREA)  # side faces and vertical edges
    total = (2 * (L - 1) ** 2 + 4 * (L - 1) * (t - 1)
             + (8 * (L - 1) + 4 * (t - 1)) * EDGE_AREA + 8 * CORNER_AREA)
    return inside / total


def smooth_labels(seed: int, shape=(16, 18, 20), n_labels: int = 3) -> np.ndarray:
    """A random label volume made of smooth blobs (labels 0..n_labels)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 2.0)
    edges = np.quantile(field, np.linspace(0, 1, n_labels + 2)[1:-1])
    return np.digitize(field, edges).astype(np.uint8)


# ----------------------------------------------------------------------------- classes


def test_case_classes_are_sorted_ground_truth_labels_without_background():
    gts = np.zeros((4, 4, 4), np.uint16)
    gts[0, 0, 0], gts[1, 1, 1], gts[2, 2, 2] = 7, 3, 300
    assert case_classes(gts) == [3, 7, 300]
    assert all(type(c) is int for c in case_classes(gts))
    assert case_classes(np.zeros((3, 3, 3), np.uint8)) == []


def test_case_classes_drop_the_smallest_value_like_the_evaluator():
    # np.sort(unique)[1:]: with no background voxel the smallest label is dropped too.
    assert case_classes(np.array([[[2, 5], [5, 2]]], np.uint8)) == [5]


# ----------------------------------------------------------------------------- DSC


@pytest.mark.parametrize("side,shift", [(10, 0), (10, 1), (10, 3), (12, 5), (9, 8)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_dice_of_shifted_cubes_is_analytic(side, shift, axis):
    gt, seg = shifted_cubes(side, shift, axis)
    expected = 2 * side * side * (side - shift) / (2 * side**3)
    assert dice(gt == 1, seg == 1) == pytest.approx(expected, abs=1e-12)
    assert case_dsc(gt, seg) == pytest.approx(expected, abs=1e-12)


def test_dice_identical_disjoint_and_empty_masks():
    gt, _ = shifted_cubes(6, 0)
    assert dice(gt == 1, gt == 1) == 1.0
    far = np.roll(gt, 7, axis=0)
    assert not (far & gt).any()
    assert dice(gt == 1, far == 1) == 0.0
    empty = np.zeros_like(gt, bool)
    assert dice(gt == 1, empty) == 0.0  # empty prediction: plain 0, no exception
    assert dice(empty, gt == 1) == 0.0
    assert math.isnan(dice(empty, empty))  # surface_distance's NaN, without its NumPy-2 crash


def test_case_dsc_averages_over_ground_truth_classes_only():
    shape = (30, 30, 30)
    gts = box(shape, (2, 2, 2), (12, 12, 12), 1)
    box(shape, (15, 15, 15), (25, 25, 25), 2, out=gts)
    segs = box(shape, (4, 2, 2), (14, 12, 12), 1)  # class 1 moved by 2 voxels: DSC 0.8
    box(shape, (15, 2, 15), (25, 12, 25), 5, out=segs)  # label 5 is not in the ground truth
    # class 2 is not predicted at all: it counts 0; label 5 does not count.
    assert case_dsc(gts, segs) == pytest.approx((0.8 + 0.0) / 2, abs=1e-12)
    box(shape, (15, 15, 15), (25, 25, 25), 2, out=segs)
    assert case_dsc(gts, segs) == pytest.approx((0.8 + 1.0) / 2, abs=1e-12)
    assert case_dsc(gts, np.zeros_like(gts)) == 0.0


def test_case_dsc_of_a_case_without_classes_is_nan():
    gts = np.zeros((5, 5, 5), np.uint8)
    assert math.isnan(case_dsc(gts, gts))
    assert math.isnan(round_scores(gts, gts, ISO)[0])
    assert round_scores(gts, gts, ISO)[1] == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_gt=st.integers(1, 4), n_seg=st.integers(1, 5))
def test_case_dsc_matches_brute_force(seed, n_gt, n_seg):
    rng = np.random.default_rng(seed)
    gts = smooth_labels(int(rng.integers(2**31)), n_labels=n_gt)
    segs = smooth_labels(int(rng.integers(2**31)), n_labels=n_seg)
    assert case_dsc(gts, segs) == pytest.approx(reference_dsc(gts, segs), abs=1e-12)


# ----------------------------------------------------------------------------- NSD


def test_nsd_identical_masks_is_one():
    gts = smooth_labels(3)
    assert case_nsd(gts, gts, ISO) == 1.0
    assert case_nsd(gts, gts, (0.5, 0.8, 4.0)) == 1.0
    assert case_nsd(gts, gts, (0.5, 0.8, 4.0), physical_spacing=True) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nsd_of_cube_shifted_within_tolerance_is_one(axis):
    gt, seg = shifted_cubes(12, 1, axis)
    assert case_nsd(gt, seg, ISO) == 1.0
    gt, seg = shifted_cubes(12, 2, axis)  # exactly 2 mm: the tolerance is inclusive
    assert case_nsd(gt, seg, ISO) == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nsd_of_cube_shifted_by_five_voxels(axis):
    gt, seg = shifted_cubes(20, 5, axis)
    nsd = case_nsd(gt, seg, ISO)
    assert nsd < 0.8
    assert nsd == pytest.approx(slab_nsd_expected(20, 20, 5, 2), abs=1e-9)


@pytest.mark.parametrize("lateral,thick,shift,tol", [(60, 10, 5, 2), (40, 12, 4, 1), (50, 15, 6, 3)])
def test_nsd_of_shifted_slab_matches_surfel_count(lateral, thick, shift, tol):
    shape = (thick + shift + 6, lateral + 6, lateral + 6)
    gt = box(shape, (3, 3, 3), (3 + thick, 3 + lateral, 3 + lateral))
    seg = box(shape, (3 + shift, 3, 3), (3 + shift + thick, 3 + lateral, 3 + lateral))
    expected = slab_nsd_expected(lateral, thick, shift, tol)
    assert case_nsd(gt, seg, ISO, tolerance_mm=tol) == pytest.approx(expected, abs=1e-9)
    assert expected < 0.5  # the faces perpendicular to the shift are out of tolerance


def test_nsd_anisotropic_spacing_per_array_axis():
    # Spacing given per array axis via physical_spacing=True on a (z, y, x) = (3, 1, 1) mm grid.
    spacing_xyz = (1.0, 1.0, 3.0)
    gt, seg_z = shifted_cubes(10, 1, axis=0)
    _, seg_x = shifted_cubes(10, 1, axis=2)
    assert case_nsd(gt, seg_z, spacing_xyz, physical_spacing=True) < 0.95  # 3 mm > 2 mm
    assert case_nsd(gt, seg_x, spacing_xyz, physical_spacing=True) == 1.0  # 1 mm <= 2 mm


def test_nsd_stored_spacing_quirk_matters():
    spacing_xyz = (1.0, 1.0, 3.0)  # x, y at 1 mm, z at 3 mm, as stored in the npz
    gt, seg = shifted_cubes(10, 1, axis=0)  # moved by one slice along z (array axis 0)
    quirk = case_nsd(gt, seg, spacing_xyz)  # evaluator: axis 0 gets 1 mm
    physical = case_nsd(gt, seg, spacing_xyz, physical_spacing=True)  # axis 0 gets 3 mm
    assert quirk == 1.0
    assert physical < 0.95
    assert round_scores(gt, seg, spacing_xyz)[1] == quirk
    assert round_scores(gt, seg, spacing_xyz, physical_spacing=True)[1] == physical


def test_array_spacing_order():
    stored = np.array([0.8, 0.9, 2.5], np.float32)  # as np.load gives it
    assert array_spacing(stored) == pytest.approx((0.8, 0.9, 2.5))
    assert array_spacing(stored, physical_spacing=True) == pytest.approx((2.5, 0.9, 0.8))
    assert all(type(s) is float for s in array_spacing(stored))
    with pytest.raises(ValueError):
        array_spacing((1.0, 1.0))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       spacing=st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 1.5, 2.5, 4.0])] * 3))
def test_physical_spacing_equals_quirk_on_xyz_ordered_arrays(seed, spacing):
    # Reversing the spacing is the same as reversing the array axes to (x, y, z); NSD is symmetric.
    gts, segs = smooth_labels(seed, n_labels=2), smooth_labels(seed + 1, n_labels=2)
    physical = case_nsd(gts, segs, spacing, physical_spacing=True)
    xyz = case_nsd(gts.transpose(2, 1, 0), segs.transpose(2, 1, 0), spacing)
    assert physical == pytest.approx(xyz, abs=1e-12)
    assert case_nsd(segs, gts, spacing, physical_spacing=True) == pytest.approx(physical, abs=1e-12)
    assert 0.0 <= physical <= 1.0


@pytest.mark.parametrize("radius", [7, 11])
def test_nsd_of_concentric_spheres(radius):
    n = 2 * (radius + 4) + 5
    centre = ((n - 1) / 2,) * 3
    inner = ball((n,) * 3, centre, radius)
    assert case_nsd(inner, ball((n,) * 3, centre, radius + 1), ISO) == 1.0
    far = case_nsd(inner, ball((n,) * 3, centre, radius + 4), ISO)
    assert far < 0.02  # every surface point is about 4 mm from the other surface


def test_nsd_empty_prediction_of_a_class_counts_zero():
    shape = (30, 30, 30)
    gts = box(shape, (2, 2, 2), (12, 12, 12), 1)
    box(shape, (15, 15, 15), (25, 25, 25), 2, out=gts)
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)  # class 2 not predicted
    assert case_nsd(gts, segs, ISO) == 0.5  # no AttributeError from np.Inf under NumPy 2
    assert case_nsd(gts, np.zeros_like(gts), ISO) == 0.0
    empty = np.zeros(shape, bool)
    assert surface_dice(gts == 1, empty, ISO) == 0.0
    assert surface_dice(empty, gts == 1, ISO) == 0.0
    assert math.isnan(surface_dice(empty, empty, ISO))


# ----------------------------------------------------------------------------- DSC > 0.2 rule


def _one_layer_prediction(gt_layers: int, drop_one_voxel: bool):
    """GT: `gt_layers` 10x10 slices of class 1; prediction: its first slice (inside the GT)."""
    shape = (gt_layers + 4, 14, 14)
    gts = box(shape, (2, 2, 2), (2 + gt_layers, 12, 12))
    if drop_one_voxel:
        gts[2 + gt_layers - 1, 11, 11] = 0
    segs = box(shape, (2, 2, 2), (3, 12, 12))
    return gts, segs


def test_round_scores_nsd_is_zero_when_dsc_is_at_most_0_2():
    gts, segs = _one_layer_prediction(9, drop_one_voxel=False)  # DSC = 2*100 / (900 + 100)
    dsc, nsd = round_scores(gts, segs, ISO)
    assert dsc == 0.2
    assert case_nsd(gts, segs, ISO) > 0.1  # it would be far from zero
    assert nsd == 0.0
    gts, segs = _one_layer_prediction(12, drop_one_voxel=False)
    assert round_scores(gts, segs, ISO) == (pytest.approx(200 / 1300), 0.0)


def test_round_scores_nsd_is_computed_just_above_0_2():
    gts, segs = _one_layer_prediction(9, drop_one_voxel=True)  # DSC = 200 / 999
    dsc, nsd = round_scores(gts, segs, ISO)
    assert dsc == pytest.approx(200 / 999, abs=1e-15) and dsc > 0.2
    assert nsd == case_nsd(gts, segs, ISO) > 0.1


def test_round_scores_rule_uses_the_case_mean():
    # Class 1 perfect, class 2 missing: mean DSC 0.5 > 0.2, so NSD is the mean (1 + 0) / 2.
    shape = (30, 30, 30)
    gts = box(shape, (2, 2, 2), (12, 12, 12), 1)
    box(shape, (15, 15, 15), (25, 25, 25), 2, out=gts)
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)
    assert round_scores(gts, segs, ISO) == (0.5, 0.5)
    # Classes 1..3 present, only a sliver of class 1 right: the mean DSC is <= 0.2.
    box(shape, (2, 15, 2), (12, 25, 12), 3, out=gts)
    segs = box(shape, (2, 2, 2), (3, 12, 12))
    dsc, nsd = round_scores(gts, segs, ISO)
    assert dsc == pytest.approx(200 / 1100 / 3)
    assert nsd == 0.0


# ----------------------------------------------------------------------------- AUC and final


@pytest.mark.parametrize("scores,expected", [
    ([1, 1, 1, 1, 1], 4.0),
    ([0, 1, 1, 1, 0], 3.0),
    ([1, 0, 0, 0, 0], 0.5),
    ([0, 0, 0, 0, 1], 0.5),
    ([0.9, 0, 0, 0, 0, 1], 0.5),  # the box call (first of 6) is not scored
    ([0.0, 1, 1, 1, 1, 1], 4.0),
    ([0.2, 0.4, 0.6, 0.8, 1.0], 2.4),
])
def test_auc_values(scores, expected):
    assert auc(scores) == pytest.approx(expected, abs=1e-12)


@given(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=7))
def test_auc_matches_scipy_and_formula(scores):
    expected = integrate.cumulative_trapezoid(np.array(scores[-5:]), np.arange(5))[-1]
    assert auc(scores) == expected
    s1, s2, s3, s4, s5 = scores[-5:]
    assert auc(scores) == pytest.approx(0.5 * s1 + s2 + s3 + s4 + 0.5 * s5, abs=1e-12)
    assert 0.0 <= auc(scores) <= 4.0
    assert auc(np.array(scores)) == expected
    assert final_score(scores) == scores[-1]


def test_auc_needs_five_rounds():
    with pytest.raises(ValueError):
        auc([1.0, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- time budget


def test_budget():
    assert budget_seconds(1) == 90.0
    assert budget_seconds(3) == 270.0
    assert not over_budget(90.0, 1)
    assert over_budget(90.01, 1)
    assert not over_budget(270.0, 3)
    assert over_budget(270.001, 3)
    assert not over_budget(200.0, 3)
    assert over_budget(1e-3, 0)
