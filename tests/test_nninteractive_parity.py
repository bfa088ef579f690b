"""Parity with the reference: the `nninteractive` package's own inference session (pinned 2.6.0) and our
pipeline load the same random-weight folder in the official v1.0 layout and see the same image and prompts.

Asserted per case, from forward hooks on both networks, for every forward pass: the same network input
(atol 1e-3, the float16 step at 1; in practice bit for bit) and the same logits (atol 1e-4); then the same
mask (exactly). (a) one positive point, (b) one 2D box (alone, and with clicks over a previous mask), both
at zoom 1; (c) a box that needs zoom > 1: its coarse pass at patch 48, and at patch 64 the coarse pass, the
full-resolution refinement passes and the mask (the session's refinement needs patches above 48);
(d) AutoZoom from a point up to zoom 4, then refinement. Needs the package (`.ci/run` installs it into a
separate folder): skipped without it, unless SEGFM_PARITY_REQUIRED is set (then a failing import fails).
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch

if os.environ.get("SEGFM_PARITY_REQUIRED"):
    from nnInteractive.inference.inference_session import nnInteractiveInferenceSession
else:
    nnInteractiveInferenceSession = pytest.importorskip(
        "nnInteractive.inference.inference_session").nnInteractiveInferenceSession

from inference.case_io import Box, Case, ClassPrompt
from inference.fusion import fuse_classes
from inference.pipelines import load_model
from inference.predict import predict_case
from inference.class_task import Effort, prepare
from inference.pipelines import segment_class
from nninteractive_fixtures import (
    RESENC_L_SMALL_PATCH,
    SMALL_REFINE_CONFIGURATION,
    sample_image,
    small_layout,
)

INPUT_ATOL = 1e-3
LOGIT_ATOL = 1e-4


class Recorder:
    """(input, logits) of every forward pass of a network."""

    def __init__(self, network: torch.nn.Module):
        self.passes: list[tuple[torch.Tensor, torch.Tensor]] = []
        network.register_forward_hook(lambda _m, args, out: self.passes.append((args[0][0].clone(), out[0].clone())))


class Pair:
    """The package's session and our model on one folder and one image."""

    def __init__(self, folder, image: np.ndarray, autozoom: bool):
        with contextlib.redirect_stdout(io.StringIO()):  # the session prints a lot
            self.session = nnInteractiveInferenceSession(
                device=torch.device("cpu"), use_torch_compile=False, verbose=False,
                torch_n_threads=torch.get_num_threads(), do_autozoom=autozoom, enable_undo=False)
            self.session.initialize_from_trained_model_folder(str(folder))
            self.session.set_image(image[None].astype(np.float32))
        self.target = torch.zeros(image.shape, dtype=torch.uint8)
        self.session.set_target_buffer(self.target)
        self.model = load_model(folder, torch.device("cpu"))
        self.image, self.autozoom = image, autozoom
        self.theirs, self.ours = Recorder(self.session.network), Recorder(self.model.network)

    def run(self, prompt: ClassPrompt, add_to_session, prev: np.ndarray | None = None):
        """Both sides on one class (`prev`: the previous call's labels); returns our class outcome."""
        self.theirs.passes.clear()
        self.ours.passes.clear()
        np.random.seed(0)  # the refinement planner's fallback draws from numpy's global generator
        with contextlib.redirect_stdout(io.StringIO()):
            self.session.reset_interactions()
            add_to_session(self.session)
            self.session._predict()
        case = Case("parity", self.image, (1.0, 1.0, 1.0), [prompt], prev_pred=prev)
        effort = Effort(self.model.spec.patch_size, max_passes=5 if self.autozoom else 1)
        np.random.seed(0)
        return segment_class(self.model, prepare(case, self.model), prompt, effort)

    def assert_pass_equal(self, index: int) -> None:
        (x_ref, logits_ref), (x, logits) = self.theirs.passes[index], self.ours.passes[index]
        assert x.shape == x_ref.shape == (8, *(x.shape[1:]))
        torch.testing.assert_close(x, x_ref, rtol=0, atol=INPUT_ATOL)
        torch.testing.assert_close(logits, logits_ref, rtol=LOGIT_ATOL, atol=LOGIT_ATOL)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    folder = small_layout(tmp_path_factory.mktemp("nninteractive_small"))
    return Pair(folder, sample_image(), autozoom=False)


POINT = (20, 30, 31)
# challenge box: closed ranges, drawn on slice z_mid; the session gets [[z_mid, z_mid+1), [y0, y1+1), [x0, x1+1)]
SMALL_BOX = Box(lo=(15, 20, 22), hi=(25, 40, 41), z_mid=19)  # odd z_mid: the session's centre rounds to even
LARGE_BOX = Box(lo=(12, 5, 6), hi=(28, 62, 58), z_mid=20)  # 58 + 16 > 48: zoom (58 + 16) / 48 > 1


def add_point(point, positive=True):
    return lambda s: s.add_point_interaction(point, include_interaction=positive, run_prediction=False)


def add_box(box: Box):
    bounds = [[box.z_mid, box.z_mid + 1], [box.lo[1], box.hi[1] + 1], [box.lo[2], box.hi[2] + 1]]
    return lambda s: s.add_bbox_interaction(bounds, include_interaction=True, run_prediction=False)


def assert_same_mask(pair: Pair, outcome) -> np.ndarray:
    ours = fuse_classes(pair.image.shape, [outcome.probability])
    reference = pair.target.numpy()
    assert reference.any() and (reference == 0).any(), "a degenerate reference mask proves nothing"
    np.testing.assert_array_equal(ours, reference)
    return ours


def test_a_one_point_at_zoom_1(pair):
    prompt = ClassPrompt(1, fg=np.array([POINT]), order=("fg",))
    outcome = pair.run(prompt, add_point(POINT))
    assert len(pair.theirs.passes) == len(pair.ours.passes) == 1
    pair.assert_pass_equal(0)
    x = pair.ours.passes[0][0]
    assert x[4].max() == 1 and x[4].min() == 0 and (x[[1, 2, 3, 5, 6, 7]] == 0).all()  # only the point channel
    assert_same_mask(pair, outcome)


def test_a_predict_case_differs_only_at_the_clicked_voxel(pair):
    """The full call also forces clicked voxels to the clicked answer: that is the only difference allowed."""
    prompt = ClassPrompt(1, fg=np.array([POINT]), order=("fg",))
    outcome = pair.run(prompt, add_point(POINT))
    fused = fuse_classes(pair.image.shape, [outcome.probability])
    answer = predict_case(pair.model, Case("parity", pair.image, (1.0, 1.0, 1.0), [prompt]))
    differs = np.argwhere(answer != fused)
    assert all(tuple(v) == POINT for v in differs)
    assert answer[POINT] == 1


def test_b_one_2d_box_at_zoom_1(pair):
    outcome = pair.run(ClassPrompt(1, box=SMALL_BOX), add_box(SMALL_BOX))
    assert len(pair.theirs.passes) == len(pair.ours.passes) == 1
    pair.assert_pass_equal(0)
    box = pair.ours.passes[0][0][2]
    assert box.max() == 1 and int((box > 0).sum()) == 21 * 20  # one slice, 21 x 20 voxels
    assert_same_mask(pair, outcome)


def test_b_box_with_clicks_and_previous_mask(pair):
    """Box, then a negative and a positive click (decayed intensities), over a previous mask: same input and mask."""
    prev = np.zeros(pair.image.shape, np.uint8)
    prev[16:24, 22:38, 24:40] = 1
    clicks_fg, clicks_bg = np.array([[20, 26, 29]]), np.array([[18, 35, 37]])
    prompt = ClassPrompt(1, box=SMALL_BOX, fg=clicks_fg, bg=clicks_bg, order=("bg", "fg"))

    def add(s):
        s.add_initial_seg_interaction(prev, run_prediction=False)
        add_box(SMALL_BOX)(s)
        add_point(tuple(clicks_bg[0]), positive=False)(s)
        add_point(tuple(clicks_fg[0]))(s)

    outcome = pair.run(prompt, add, prev)
    pair.assert_pass_equal(0)
    x = pair.ours.passes[0][0]
    assert 0.9 < float(x[2].max()) < 0.97  # the box is two prompts old: about 0.98^2
    assert x[1].max() == 1 and x[5].max() > 0.97  # previous mask and the newer negative click
    assert_same_mask(pair, outcome)


def test_c_box_needing_zoom_coarse_pass(pair):
    """Zoom > 1 at patch 48: the coarse pass matches (refinement is compared at patch 64, below)."""
    outcome = pair.run(ClassPrompt(1, box=LARGE_BOX), add_box(LARGE_BOX))
    assert len(pair.theirs.passes) >= 2  # coarse pass, then refinement passes
    pair.assert_pass_equal(0)
    assert "zoom 1.54" in outcome.how  # (57 + 1 + 16) / 48
    box = pair.ours.passes[0][0][2]
    assert 0 < float(box.max()) < 1  # a one-slice box area-averaged onto a coarser grid


def test_c_box_needing_zoom_refined_mask(tmp_path_factory):
    """Zoom > 1 with AutoZoom and refinement on both sides (patch 64: the refinement needs more than 48):
    every pass, coarse and refining, and the final mask are the same."""
    folder = small_layout(tmp_path_factory.mktemp("nninteractive_refine"), SMALL_REFINE_CONFIGURATION)
    pair = Pair(folder, sample_image(shape=(48, 90, 84)), autozoom=True)
    box = Box(lo=(14, 5, 6), hi=(30, 80, 70), z_mid=22)
    outcome = pair.run(ClassPrompt(1, box=box), add_box(box))
    assert "refining" in outcome.how, outcome.how
    assert len(pair.theirs.passes) == len(pair.ours.passes) == outcome.passes
    for i in range(outcome.passes):
        pair.assert_pass_equal(i)
    assert_same_mask(pair, outcome)


def test_d_autozoom_passes_match(tmp_path_factory):
    """AutoZoom from a point: every pass (zooming out, then refining) and the mask are the session's."""
    folder = small_layout(tmp_path_factory.mktemp("nninteractive_autozoom"), SMALL_REFINE_CONFIGURATION, seed=3)
    pair = Pair(folder, sample_image(seed=1), autozoom=True)
    prompt = ClassPrompt(1, fg=np.array([POINT]), order=("fg",))
    outcome = pair.run(prompt, add_point(POINT))
    assert "zoom 1.00" not in outcome.how, "the test needs a case that zooms out"
    assert len(pair.theirs.passes) == len(pair.ours.passes) == outcome.passes
    for i in range(outcome.passes):
        pair.assert_pass_equal(i)
    assert_same_mask(pair, outcome)


def test_resenc_l_one_point(tmp_path_factory):
    """The v1.0 network itself (ResEnc-L from the plans, 102 M parameters), at a 64^3 patch to stay fast."""
    folder = small_layout(tmp_path_factory.mktemp("nninteractive_resenc_l"), RESENC_L_SMALL_PATCH)
    pair = Pair(folder, sample_image(shape=(48, 80, 72)), autozoom=False)
    assert sum(p.numel() for p in pair.model.network.parameters()) == 102_355_818
    prompt = ClassPrompt(1, fg=np.array([POINT]), order=("fg",))
    outcome = pair.run(prompt, add_point(POINT))
    pair.assert_pass_equal(0)
    assert_same_mask(pair, outcome)


def test_the_package_refuses_3d_boxes_which_is_why_mid_slice_is_the_default(pair):
    slab = [[SMALL_BOX.lo[0], SMALL_BOX.hi[0] + 1], [20, 41], [22, 42]]
    with pytest.raises(ValueError, match="3D"):
        pair.session.add_bbox_interaction(slab, include_interaction=True, run_prediction=False)
    assert load_model(pair.model.spec.folder, torch.device("cpu")).spec.prompts.box == "mid_slice"
