"""Tests for inference.fusion: product-of-complements fusion and click application."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import inference.fusion as fusion
from inference.case_io import ClassPrompt
from inference.field_of_view import FieldOfView, upsample_region
from inference.fusion import MaskProbability, PatchProbability, PatchWithinMask, apply_clicks, fuse_classes


# ----------------------------------------------------------------------------- helpers


def place(shape, fov: FieldOfView, values: np.ndarray) -> np.ndarray:
    """A full-volume float64 map holding `values` (the crop of `fov`, side^3) where the crop meets the volume."""
    full = np.zeros(shape, dtype=np.float64)
    src, dst = [], []
    for s, n in zip(fov.start, shape):
        lo, hi = max(s, 0), min(s + fov.side, n)
        if lo >= hi:
            return full
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    full[tuple(dst)] = values[tuple(src)]
    return full


def reference_fusion(prob_maps: dict[int, np.ndarray], shape):
    """Brute force: p_bg = prod (1 - p_c); label = argmax over [p_bg, p_1..p_K] (first max wins).

    Returns the labels and the margin between the winner and the best other candidate, so that
    voxels whose decision is a floating-point near-tie can be excluded from the comparison.
    """
    labels = sorted(prob_maps)
    p_bg = np.ones(shape, dtype=np.float64)
    for lab in labels:
        p_bg *= 1.0 - prob_maps[lab]
    stack = np.stack([p_bg] + [prob_maps[lab] for lab in labels])
    idx = np.argmax(stack, axis=0)
    lut = np.array([0] + labels, dtype=np.uint8)
    srt = np.sort(stack, axis=0)
    margin = srt[-1] - srt[-2] if len(stack) > 1 else np.full(shape, np.inf)
    return lut[idx], margin


def assert_matches_reference(out, ref, margin, tol=1e-5, max_excluded=0.01):
    assert out.dtype == np.uint8
    assert out.shape == ref.shape
    clear = margin > tol
    assert clear.mean() >= 1 - max_excluded, "too many near-ties to make the comparison meaningful"
    mismatch = np.argwhere((out != ref) & clear)
    assert len(mismatch) == 0, f"{len(mismatch)} voxels differ, first at {mismatch[:5].tolist()}"


def unit_fov(start, patch):
    return FieldOfView(tuple(start), patch, patch)


# ----------------------------------------------------------------------------- fuse_classes


def test_single_class_label_iff_probability_above_half():
    rng = np.random.default_rng(0)
    shape = (6, 7, 8)
    fov = unit_fov((0, 0, 0), 8)
    probs = rng.random((8, 8, 8)).astype(np.float32)
    out = fuse_classes(shape, [PatchProbability(1, fov, torch.from_numpy(probs))])
    expected = (probs[:6, :7, :8] > 0.5).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, expected)
    assert 0 < out.sum() < out.size  # both outcomes occur


def test_single_class_exactly_half_goes_to_background():
    shape = (1, 1, 6)
    values = np.array([0.5, 0.5001, 0.4999, 0.0, 1.0, 0.5], dtype=np.float32)
    probs = np.zeros((6, 6, 6), dtype=np.float32)
    probs[0, 0, :] = values
    out = fuse_classes(shape, [PatchProbability(1, unit_fov((0, 0, 0), 6), torch.from_numpy(probs))])
    np.testing.assert_array_equal(out[0, 0], [0, 1, 0, 0, 1, 0])


def test_single_class_label_value_is_used():
    shape = (4, 4, 4)
    probs = torch.full((4, 4, 4), 0.9)
    out = fuse_classes(shape, [PatchProbability(7, unit_fov((0, 0, 0), 4), probs)])
    assert np.all(out == 7)


def test_three_classes_overlapping_fovs_match_reference():
    rng = np.random.default_rng(1)
    shape = (12, 14, 13)
    patch = 8
    starts = {1: (-2, 0, 1), 2: (3, 4, 2), 3: (5, 8, 7)}  # overlapping, one reaching outside
    classes, maps = [], {}
    for lab, start in starts.items():
        fov = unit_fov(start, patch)
        probs = rng.random((patch,) * 3).astype(np.float32)
        classes.append(PatchProbability(lab, fov, torch.from_numpy(probs)))
        maps[lab] = place(shape, fov, probs.astype(np.float64))
    # the fusion must not depend on the order the classes are given in
    out = fuse_classes(shape, classes[::-1])
    ref, margin = reference_fusion(maps, shape)
    assert_matches_reference(out, ref, margin)
    assert set(np.unique(out)) == {0, 1, 2, 3}
    # overlaps really exist and are decided by the product rule somewhere
    overlap = (maps[2] > 0) & (maps[3] > 0)
    assert overlap.any()


def test_two_classes_above_half_pick_larger_probability():
    shape = (1, 1, 4)
    p1 = np.zeros((4, 4, 4), dtype=np.float32)
    p2 = np.zeros((4, 4, 4), dtype=np.float32)
    # voxel 0: both > 0.5, class 2 larger; voxel 1: both > 0.5, class 1 larger
    # voxel 2: neither > 0.5 but bg = 0.6*0.6 = 0.36 < 0.4 -> tie between classes -> lower label
    # voxel 3: bg = 0.9*0.8 = 0.72 wins
    p1[0, 0, :] = [0.6, 0.8, 0.4, 0.1]
    p2[0, 0, :] = [0.7, 0.55, 0.4, 0.2]
    classes = [
        PatchProbability(2, unit_fov((0, 0, 0), 4), torch.from_numpy(p2)),
        PatchProbability(1, unit_fov((0, 0, 0), 4), torch.from_numpy(p1)),
    ]
    out = fuse_classes(shape, classes)
    np.testing.assert_array_equal(out[0, 0], [2, 1, 1, 0])


def test_product_of_complements_lets_a_class_below_half_win():
    shape = (1, 1, 1)
    # p_bg = 0.55 * 0.55 = 0.3025 < 0.45: class 2 wins although no class exceeds 0.5
    classes = [
        PatchProbability(1, unit_fov((0, 0, 0), 2), torch.full((2, 2, 2), 0.44)),
        PatchProbability(2, unit_fov((0, 0, 0), 2), torch.full((2, 2, 2), 0.45)),
    ]
    assert fuse_classes(shape, classes)[0, 0, 0] == 2


def test_zoomed_patch_matches_trilinear_reference():
    rng = np.random.default_rng(2)
    shape = (20, 18, 22)
    fov1 = FieldOfView((-3, 2, 1), 24, 16)  # zoom 1.5, partly outside the volume
    fov2 = FieldOfView((4, -5, 0), 16, 8)  # zoom 2
    probs1 = torch.from_numpy(rng.random((16,) * 3).astype(np.float32))
    probs2 = torch.from_numpy(rng.random((8,) * 3).astype(np.float32))
    classes = [PatchProbability(1, fov1, probs1), PatchProbability(2, fov2, probs2)]
    maps = {}
    for lab, fov, probs in [(1, fov1, probs1), (2, fov2, probs2)]:
        region = fov.inside(shape)
        full = np.zeros(shape)
        full[tuple(slice(a, b) for a, b in region)] = upsample_region(probs, fov, region).numpy()
        # independent check of the upsampled values: torch's trilinear on the whole crop
        whole = torch.nn.functional.interpolate(
            probs[None, None].double(), size=(fov.side,) * 3, mode="trilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(full, place(shape, fov, whole), atol=1e-5)
        maps[lab] = full
    out = fuse_classes(shape, classes)
    ref, margin = reference_fusion(maps, shape)
    assert_matches_reference(out, ref, margin)
    assert set(np.unique(out)) == {0, 1, 2}


def test_half_precision_patch_probabilities_are_accepted():
    rng = np.random.default_rng(3)
    probs = torch.from_numpy(rng.random((6, 6, 6)).astype(np.float32)).half()
    out = fuse_classes((6, 6, 6), [PatchProbability(1, unit_fov((0, 0, 0), 6), probs)])
    np.testing.assert_array_equal(out, (probs.float().numpy() > 0.5).astype(np.uint8))


def test_mask_probability_with_labels_keeps_previous_prediction():
    shape = (8, 9, 10)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[1:4, 2:6, 3:7] = 2
    prev[2, 3, 4] = 1  # another label inside the bounds is not part of the mask
    prev[6:8, 0:2, 0:2] = 2  # outside the bounds given below: ignored
    mask = MaskProbability(2, [[1, 4], [2, 6], [3, 7]], prev)
    out = fuse_classes(shape, [mask])
    expected = np.zeros(shape, dtype=np.uint8)
    expected[1:4, 2:6, 3:7] = 2
    expected[2, 3, 4] = 0
    np.testing.assert_array_equal(out, expected)


def test_mask_probability_without_labels_is_its_box():
    shape = (8, 9, 10)
    box = MaskProbability(3, [[2, 5], [0, 4], [6, 10]])
    out = fuse_classes(shape, [box])
    expected = np.zeros(shape, dtype=np.uint8)
    expected[2:5, 0:4, 6:10] = 3
    np.testing.assert_array_equal(out, expected)


def test_mask_probability_box_is_clipped_to_volume():
    shape = (5, 5, 5)
    out = fuse_classes(shape, [MaskProbability(1, [[-3, 2], [3, 9], [0, 5]])])
    expected = np.zeros(shape, dtype=np.uint8)
    expected[0:2, 3:5, :] = 1
    np.testing.assert_array_equal(out, expected)


def test_hard_mask_beats_network_probability_and_lower_label_wins_ties():
    shape = (6, 6, 6)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[0:3] = 3
    classes = [
        PatchProbability(1, unit_fov((0, 0, 0), 6), torch.full((6, 6, 6), 0.9)),
        MaskProbability(3, [[0, 3], [0, 6], [0, 6]], prev),
        MaskProbability(4, [[2, 4], [0, 6], [0, 6]]),  # overlaps the kept mask at z = 2
    ]
    out = fuse_classes(shape, classes)
    assert np.all(out[0:3] == 3)  # p=1 beats 0.9; at z=2 the tie 3 vs 4 goes to 3
    assert np.all(out[3] == 4)
    assert np.all(out[4:] == 1)


def test_classes_outside_the_volume_contribute_nothing():
    shape = (6, 7, 8)
    rng = np.random.default_rng(4)
    probs = rng.random((8, 8, 8)).astype(np.float32)
    inside = PatchProbability(1, unit_fov((0, 0, 0), 8), torch.from_numpy(probs))
    outside = [
        PatchProbability(2, unit_fov((6, 0, 0), 8), torch.ones(8, 8, 8)),  # starts just past z
        PatchProbability(3, unit_fov((-8, 0, 0), 8), torch.ones(8, 8, 8)),  # ends just before z = 0
        PatchProbability(4, FieldOfView((0, 0, 50), 16, 8), torch.ones(8, 8, 8)),
        MaskProbability(5, [[0, 6], [7, 12], [0, 8]]),
        MaskProbability(6, [[-5, 0], [0, 7], [0, 8]]),
    ]
    alone = fuse_classes(shape, [inside])
    together = fuse_classes(shape, [inside] + outside)
    np.testing.assert_array_equal(together, alone)
    assert fuse_classes(shape, outside).sum() == 0
    assert fuse_classes(shape, []).shape == shape


@pytest.mark.parametrize("slab_voxels", [1, 2 * 7 * 9, 3 * 7 * 9 + 5])
def test_slab_processing_gives_the_one_slab_result(monkeypatch, slab_voxels):
    rng = np.random.default_rng(5)
    shape = (11, 7, 9)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[2:9, 1:5, 2:8] = 4
    classes = [
        PatchProbability(1, FieldOfView((-2, -1, 0), 12, 8), torch.from_numpy(rng.random((8,) * 3).astype(np.float32))),
        PatchProbability(2, FieldOfView((3, 0, -3), 8, 8), torch.from_numpy(rng.random((8,) * 3).astype(np.float32))),
        PatchProbability(3, FieldOfView((6, 2, 2), 9, 6), torch.from_numpy(rng.random((6,) * 3).astype(np.float32))),
        MaskProbability(4, [[2, 9], [1, 5], [2, 8]], prev),
        MaskProbability(5, [[9, 11], [0, 3], [0, 3]]),
    ]
    one_slab = fuse_classes(shape, classes)
    assert len(np.unique(one_slab)) >= 4
    calls = []
    original = PatchProbability.values

    def counting(self, region):
        calls.append(tuple(region[0]))
        return original(self, region)

    monkeypatch.setattr(fusion, "SLAB_VOXELS", slab_voxels)
    monkeypatch.setattr(PatchProbability, "values", counting)
    sliced = fuse_classes(shape, classes)
    np.testing.assert_array_equal(sliced, one_slab)
    slab = max(1, slab_voxels // (7 * 9))
    # class values are requested per slab, never beyond one slab in z
    assert max(b - a for a, b in calls) <= slab
    assert len(calls) > 3


# ----------------------------------------------------------------------------- apply_clicks


def test_patch_within_mask_keeps_only_voxels_of_both():
    shape = (12, 12, 12)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[2:6, 3:9, 3:9] = 1
    probs = torch.full((6, 6, 6), 0.9)
    probs[:, :, :1] = 0.2  # the network drops the patch's first x column (volume x = 4)
    patch = PatchProbability(1, FieldOfView((4, 4, 4), 6, 6), probs)
    labels = fuse_classes(shape, [PatchWithinMask(patch, MaskProbability(1, [[2, 6], [3, 9], [3, 9]], prev))])
    expected = np.zeros(shape, dtype=bool)
    expected[4:6, 4:9, 5:9] = True
    np.testing.assert_array_equal(labels == 1, expected)


def test_patch_within_mask_disjoint_from_the_mask_answers_nothing():
    prev = np.zeros((12, 12, 12), dtype=np.uint8)
    prev[0:2, 0:2, 0:2] = 1
    patch = PatchProbability(1, FieldOfView((6, 6, 6), 6, 6), torch.full((6, 6, 6), 0.9))
    within = PatchWithinMask(patch, MaskProbability(1, [[0, 2], [0, 2], [0, 2]], prev))
    assert within.region(prev.shape) is None
    assert not fuse_classes(prev.shape, [within]).any()


def test_fg_click_sets_label():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = 2
    prompts = [ClassPrompt(1, fg=np.array([[1, 2, 3], [0, 0, 0]]))]
    out = apply_clicks(labels.copy(), prompts)
    assert out[1, 2, 3] == 1
    assert out[0, 0, 0] == 1  # a fg click overrides another class
    assert out.sum() == 2


def test_bg_click_removes_only_its_own_class():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1, 1, 1] = 1
    labels[2, 2, 2] = 2
    labels[3, 3, 3] = 1
    prompts = [
        ClassPrompt(1, bg=np.array([[1, 1, 1], [2, 2, 2]])),
        ClassPrompt(2),
    ]
    out = apply_clicks(labels.copy(), prompts)
    assert out[1, 1, 1] == 0  # own class removed
    assert out[2, 2, 2] == 2  # another class's label left alone
    assert out[3, 3, 3] == 1  # unclicked voxel untouched
    assert out.dtype == np.uint8


def test_fg_click_of_one_class_wins_over_bg_click_of_another():
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[1, 1, 1] = 1
    prompts = [
        ClassPrompt(1, bg=np.array([[1, 1, 1]])),
        ClassPrompt(2, fg=np.array([[1, 1, 1]])),
    ]
    assert apply_clicks(labels.copy(), prompts)[1, 1, 1] == 2


def test_no_clicks_leaves_labels_unchanged():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, (5, 5, 5)).astype(np.uint8)
    out = apply_clicks(labels.copy(), [ClassPrompt(1), ClassPrompt(2)])
    np.testing.assert_array_equal(out, labels)
