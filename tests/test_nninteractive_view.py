"""The nnInteractive-compatible pipeline without the package: geometry, prompt values, AutoZoom rule, pasting.

tests/test_nninteractive_parity.py compares it with the package itself; these pin the rules down on their own.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.autozoom import SESSION_BORDER
from inference.case_io import Box, Case, ClassPrompt
from inference.fusion import BlockMask, MaskProbability, PatchOverMask, PatchProbability, fuse_classes
from inference.nninteractive.layout import CHANNELS
from inference.nninteractive.filters import dilate, window_extreme
from inference.nninteractive.refine import changed_region, cover, plan
from inference.nninteractive.view import View, class_stamps, network_input, odd_kernel, ordered_clicks, stored_box
from inference.pipelines import load_model
from inference.prompts import ball_template
from inference.class_task import Effort, prepare
from inference.nninteractive.segment import decisive_probability
from inference.pipelines import segment_class
from scripts.synthetic_cases import case_arrays, make_volume, write_case
from nninteractive_fixtures import SMALL_PATCH, sample_image, small_layout

border_changed = SESSION_BORDER.changed

BOX = Box(lo=(10, 20, 30), hi=(14, 29, 45), z_mid=13)


# ----------------------------------------------------------------------------- geometry


def test_view_crop_rounds_like_the_session():
    assert View((10, 20, 30), 1, 48).fov.start == (-14, -4, 6)
    fov = View((10, 20, 30), 1.5, 48).fov
    assert fov.side == 72 and fov.start == (-26, -16, -6) and fov.patch == 48
    assert View((0, 0, 0), 48.5 / 48, 48).fov.side == 48  # round half to even: 48.5 -> 48
    assert View((0, 0, 0), 49.5 / 48, 48).fov.side == 50
    assert View((5, 5, 5), 3, 48).zoomed_out(4).zoom == 4 and View((5, 5, 5), 1, 48).zoomed_out(4).zoom == 1.5


def test_stored_box_mid_slice_slab_and_clipping():
    assert stored_box(BOX, "mid_slice", (50, 50, 50)) == [[13, 14], [20, 30], [30, 46]]
    assert stored_box(BOX, "slab", (50, 50, 50)) == [[10, 15], [20, 30], [30, 46]]
    assert stored_box(BOX, "slab", (12, 25, 40)) == [[10, 12], [20, 25], [30, 40]]
    assert stored_box(Box((0, 0, 0), (3, 3, 3), 40), "mid_slice", (20, 20, 20)) == [[19, 20], [0, 4], [0, 4]]


def test_clicks_in_time_order():
    fg, bg = np.array([[1, 1, 1], [2, 2, 2]]), np.array([[3, 3, 3]])
    prompt = ClassPrompt(1, fg=fg, bg=bg, order=("bg", "fg", None, "fg"))
    assert ordered_clicks(prompt) == [((3, 3, 3), False), ((1, 1, 1), True), ((2, 2, 2), True)]
    # inconsistent order: the leftovers still count, positives first
    assert ordered_clicks(ClassPrompt(1, fg=fg, bg=bg, order=("fg",)))[1:] == [((2, 2, 2), True), ((3, 3, 3), False)]


def test_stamps_intensity_grows_per_prompt_and_the_view_follows_the_newest():
    d = 0.98
    prompt = ClassPrompt(1, box=BOX, fg=np.array([[12, 25, 40]]), bg=np.array([[11, 22, 33]]), order=("bg", "fg"))
    stamps = class_stamps(prompt, (50, 60, 70), 48, "mid_slice", d)
    assert stamps.box_intensity == 1 / d
    assert [c[2] for c in stamps.clicks] == [1 / d * (1 / d), 1 / d * (1 / d) * (1 / d)]
    assert stamps.intensity == stamps.clicks[-1][2]
    assert stamps.view == View((12, 25, 40), 1, 48)
    box_only = class_stamps(ClassPrompt(1, box=BOX), (50, 60, 70), 48, "mid_slice", d)
    # centre round((13 + 14) / 2) = 14 (half to even); zoom max(1, (16 + 48 // 3) / 48) = 1
    assert box_only.view == View((14, 25, 38), 1, 48)
    wide = Box(lo=(10, 0, 0), hi=(14, 9, 59), z_mid=12)
    assert class_stamps(ClassPrompt(1, box=wide), (50, 60, 70), 48, "mid_slice", d).view.zoom == (60 + 16) / 48
    assert class_stamps(ClassPrompt(1, box=BOX), (50, 60, 70), 48, "slab", 1.0).intensity == 1.0
    assert class_stamps(ClassPrompt(1), (50, 60, 70), 48, "slab", d).view is None


@pytest.mark.parametrize("factor, k", [(1.0, 1), (1.49, 1), (1.5, 3), (2.25, 3), (2.5, 5), (3.375, 5), (3.5, 7), (4, 7)])
def test_dilation_kernel(factor, k):
    assert odd_kernel(2 * factor - 1) == k


def test_dilation_on_the_nonzero_block_equals_the_full_filter():
    rng = np.random.default_rng(0)
    channel = torch.zeros((30, 31, 32), dtype=torch.float16)
    for z, y, x in [(0, 0, 0), (29, 15, 31), (12, 13, 14)]:
        channel[z, y, x] = float(rng.uniform(0.2, 1))
    for k in (3, 5, 7):
        full = F.max_pool3d(channel[None, None].float(), k, stride=1, padding=k // 2)[0, 0].half()
        assert torch.equal(dilate(channel, k), full)
    assert torch.equal(dilate(torch.zeros((4, 4, 4), dtype=torch.float16), 5), torch.zeros((4, 4, 4)).half())


# ----------------------------------------------------------------------------- network input


def test_point_channel_holds_the_float16_round_trip_of_the_ball():
    image = sample_image()
    d = 0.98
    prompt = ClassPrompt(1, fg=np.array([[20, 30, 31]]), order=("fg",))
    stamps = class_stamps(prompt, image.shape, SMALL_PATCH, "mid_slice", d)
    x, prev = network_input(image, 100.0, 50.0, None, 1, stamps, stamps.view, tuple(CHANNELS), 4.0,
                            torch.device("cpu"))
    assert x.shape == (8, 48, 48, 48) and x.dtype == torch.float32
    start = stamps.view.fov.start
    ball = torch.from_numpy(ball_template(4, "distance", np.float64))
    expected = ((ball * (1 / d)).half() / (1 / d)).float()
    c = [20 - start[0], 30 - start[1], 31 - start[2]]
    got = x[4, c[0] - 4:c[0] + 5, c[1] - 4:c[1] + 5, c[2] - 4:c[2] + 5]
    assert torch.equal(got, expected) and not torch.equal(got, ball.float())
    assert int((x[4] > 0).sum()) == 257 and (x[[1, 2, 3, 5, 6, 7]] == 0).all() and not prev.any()
    # image: z-scored inside, 0 where the crop leaves the image (z < 0 here)
    assert start[0] < 0
    assert (x[0, :-start[0]] == 0).all()
    inside = torch.from_numpy(image[0:5, start[1]:start[1] + 48, start[2]:start[2] + 48].astype(np.float32))
    torch.testing.assert_close(x[0, -start[0]:-start[0] + 5], (inside - 100) / 50)


def test_zoomed_out_box_is_area_averaged_and_points_dilated():
    image = sample_image()
    wide = Box(lo=(20, 2, 2), hi=(22, 67, 60), z_mid=21)
    prompt = ClassPrompt(1, box=wide, fg=np.array([[21, 30, 31]]), order=("fg",))
    stamps = class_stamps(prompt, image.shape, SMALL_PATCH, "mid_slice", 0.98)
    view = View((21, 35, 31), 2, SMALL_PATCH)  # side 96: every patch voxel averages 2^3 voxels
    x, _ = network_input(image, 100.0, 50.0, None, 1, stamps, view, tuple(CHANNELS), 4.0, torch.device("cpu"))
    box = x[2][x[2] > 0]
    assert 0.45 < float(box.max()) < 0.5  # one slice of two, times decay: about 0.98 / 2
    # the point was dilated by k = 3 before averaging, so it covers more than a radius-2 ball would
    assert int((x[4] > 0).sum()) > 33


def test_border_rule_thresholds():
    prev = torch.zeros((48, 48, 48), dtype=torch.float16)
    pred = torch.zeros((48, 48, 48), dtype=torch.bool)
    pred[0, :10, :10] = True  # 100 changed voxels on a face: not more than 100
    assert not border_changed(pred, prev)
    pred[0, 10, 0] = True  # 101 with an empty previous mask: relative change is huge
    assert border_changed(pred, prev)
    prev[0] = 1  # the whole face was foreground; 47 * 48 - 1 + ... voxels now differ: more than 1500
    assert border_changed(pred, prev)
    pred2 = prev.bool().clone()
    pred2[0, :11, :11] = False  # 121 differ but 2304 vs 2183: relative 5.5 % < 20 %
    assert not border_changed(pred2, prev)


def test_decisive_probability_keeps_the_sign_through_float16_and_fusion():
    margin = torch.tensor([[[1e-6, -1e-6, 0.0, 3.0, -3.0]]])
    p = decisive_probability(margin)
    fov = View((0, 0, 0), 1, 1).fov
    labels = []
    for i in range(5):
        patch = PatchProbability.from_network(1, fov, p[..., i:i + 1])
        labels.append(int(fuse_classes((1, 1, 1), [PatchOverMask(patch)])[0, 0, 0]))
    assert labels == [1, 0, 0, 1, 0]


def test_patch_over_mask_keeps_the_previous_mask_outside_the_crop():
    prev = np.zeros((20, 20, 40), np.uint8)
    prev[5:15, 5:15, 2:38] = 1
    fov = View((10, 10, 30), 1, 8).fov  # x 26..34
    patch = PatchProbability.from_network(1, fov, torch.zeros((8, 8, 8)))  # background everywhere in the crop
    labels = fuse_classes(prev.shape, [PatchOverMask(patch, MaskProbability(1, [[5, 15], [5, 15], [2, 38]], prev))])
    expected = prev.copy()
    expected[6:14, 6:14, 26:34] = 0
    np.testing.assert_array_equal(labels, expected)


# ----------------------------------------------------------------------------- one class, end to end


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(small_layout(tmp_path_factory.mktemp("view_layout")), torch.device("cpu"))


def test_segment_class_crops_around_the_last_click_and_keeps_the_rest(model):
    image = sample_image(shape=(40, 120, 64))
    prev = np.zeros(image.shape, np.uint8)
    prev[18:22, 100:110, 20:30] = 1  # far from the click: outside the 48^3 crop
    prompt = ClassPrompt(1, box=Box((15, 20, 22), (25, 40, 41), 20), fg=np.array([[20, 30, 31]]), order=("fg",))
    case = Case("t", image, (1.0, 1.0, 1.0), [prompt], prev_pred=prev)
    outcome = segment_class(model, prepare(case, model), prompt, Effort(SMALL_PATCH, max_passes=1))
    assert isinstance(outcome.probability, PatchOverMask) and "last click" in outcome.how
    assert outcome.probability.patch.fov == View((20, 30, 31), 1, SMALL_PATCH).fov
    labels = fuse_classes(image.shape, [outcome.probability])
    np.testing.assert_array_equal(labels[18:22, 100:110, 20:30], 1)


def test_segment_class_without_prompts_keeps_the_previous_mask(model):
    image = sample_image()
    prev = np.zeros(image.shape, np.uint8)
    prev[1:3, 1:3, 1:3] = 2
    prompt = ClassPrompt(2)
    case = Case("t", image, (1.0, 1.0, 1.0), [prompt], prev_pred=prev)
    outcome = segment_class(model, prepare(case, model), prompt)
    assert isinstance(outcome.probability, MaskProbability) and outcome.passes == 0


def test_predict_sh_with_the_layout_patch_and_box_mode(tmp_path, run_predict_sh, model):
    image, labels = make_volume((24, 56, 60), n_objects=2, seed=2)
    write_case(tmp_path / "in" / "CT_box.npz", case_arrays(image, labels, boxes=True))
    result = run_predict_sh(tmp_path / "in", tmp_path / "out",
                            env={"SEGFM_MODEL": str(model.spec.folder), "SEGFM_PATCH": "32", "SEGFM_BOX_MODE": "slab"})
    assert result.returncode == 0, result.stderr
    assert "patch 32, box slab, nninteractive pipeline" in result.stderr
    assert result.stderr.count("nnInteractive view around the last box, patch 32") == 2
    with np.load(tmp_path / "out" / "CT_box.npz") as npz:
        assert npz["segs"].shape == image.shape
    result = run_predict_sh(tmp_path / "in", tmp_path / "out2", "--model", model.spec.folder, "--box-mode", "mid_slice")
    assert result.returncode == 0 and f"patch {SMALL_PATCH}, box mid_slice" in result.stderr
    result = run_predict_sh(tmp_path / "in", tmp_path / "out3", env={"SEGFM_BOX_MODE": "cube"})
    assert result.returncode != 0 and "cube" in result.stderr


# ----------------------------------------------------------------------------- refinement (nninteractive/refine.py)


def test_opening_on_the_block_equals_the_opening_of_the_whole_crop():
    rng = np.random.default_rng(1)
    coarse = torch.zeros((40, 41, 42), dtype=torch.uint8)
    coarse[3:20, 5:30, 0:12] = torch.from_numpy(rng.random((17, 25, 12)) > 0.01).to(torch.uint8)
    previous = torch.zeros((40, 41, 42), dtype=torch.float16)
    full = (coarse != previous).half()
    full = window_extreme(window_extreme(full, 5, minimum=True), 5, minimum=False).to(torch.uint8)
    assert full.any() and torch.equal(changed_region(coarse, previous), full)


def test_cover_puts_every_changed_voxel_inside_a_box_margin():
    mask = torch.zeros((120, 100, 90), dtype=torch.uint8)
    mask[10:110, 20:80, 5:85] = 1
    boxes = cover(mask, 64)
    inner = torch.zeros_like(mask)
    for box in boxes:
        assert all(b - a == 64 for a, b in box)
        inner[tuple(slice(max(a + 24, 0), b - 24) for a, b in box)] = 1
    assert bool((inner >= mask).all()) and len(boxes) >= 100 * 60 * 80 // 16**3  # inner parts are 16^3


def test_plan_falls_back_to_one_box_on_the_last_prompt():
    fov = View((30, 30, 30), 1.5, 64).fov
    same = torch.zeros((fov.side,) * 3, dtype=torch.uint8)
    assert plan(same, same.half(), fov, (60, 60, 60), (30, 30, 30)) == [[[-2, 62], [-2, 62], [-2, 62]]]


def test_refined_answer_replaces_the_previous_mask_only_in_its_boxes(model):
    image = sample_image(shape=(40, 140, 64))
    prev = np.zeros(image.shape, np.uint8)
    prev[18:22, 120:130, 20:30] = 1  # far outside the zoomed crop: kept
    wide = Box(lo=(15, 2, 2), hi=(25, 70, 60), z_mid=20)
    prompt = ClassPrompt(1, box=wide)
    case = Case("t", image, (1.0, 1.0, 1.0), [prompt], prev_pred=prev)
    outcome = segment_class(model, prepare(case, model), prompt, Effort(SMALL_PATCH))
    assert isinstance(outcome.probability, BlockMask) and "refining" in outcome.how
    labels = fuse_classes(image.shape, [outcome.probability])
    np.testing.assert_array_equal(labels[18:22, 120:130, 20:30], 1)
    one_pass = segment_class(model, prepare(case, model), prompt, Effort(SMALL_PATCH, max_passes=1))
    assert isinstance(one_pass.probability, PatchOverMask) and one_pass.passes == 1
