"""Tests for the segfm pipeline (inference/segfm) and the class task it shares: regions, AutoZoom's border
test, per-class segmentation and fallback."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import inference.segfm.segment as segment
import inference.segfm.tiles as tiles
from inference.autozoom import SEGFM_BORDER, SESSION_FACE
from inference.case_io import Box, Case, ClassPrompt
from inference.class_task import Effort, PreparedCase, fallback, label_regions, prepare
from inference.field_of_view import FieldOfView
from inference.fusion import BlockProbability, MaskProbability, PatchProbability, fuse_classes
from inference.model import Model, create_random_model, resenc_architecture
from inference.pipelines import load_model
from inference.prompts import box_channel, click_channel
from inference.geometry import region_of
from inference.pipelines import segment_class
from inference.segfm.inputs import network_input, previous_channel, prompt_region

border_changed = SEGFM_BORDER.changed

PATCH = 16
CHANNELS = ["image", "box", "fg_clicks", "bg_clicks", "prev_seg"]


# ----------------------------------------------------------------------------- helpers


def tiny_spec(channels=CHANNELS, max_zoom=4, patch=PATCH, normalisation="zscore"):
    return {
        "name": "tiny test model",
        "architecture": resenc_architecture([4, 8, 16], [1, 1, 1]),
        "channels": list(channels),
        "patch_size": patch,
        "normalisation": normalisation,
        "prompts": {"box": "slab", "points": "binary", "point_radius": 3},
        "output": "sigmoid",
        "weights": "weights.pt",
        "max_zoom": max_zoom,
    }


def tiny_model(folder, **kwargs) -> Model:
    create_random_model(folder, tiny_spec(**kwargs))
    return load_model(folder, torch.device("cpu"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def make_case(shape=(30, 32, 34), prompts=(), prev=None, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, shape).astype(np.uint8)
    return Case("case.npz", image, (1.0, 1.0, 1.0), list(prompts), prev)


def nonzero_bounds(mask):
    idx = np.nonzero(mask)
    return tuple(int(i.min()) for i in idx), tuple(int(i.max()) for i in idx)


def nonzero_region(mask):
    return region_of(*nonzero_bounds(mask))


def fov_contains(fov: FieldOfView, lo, hi) -> bool:
    return all(s <= a and b <= s + fov.side - 1 for s, a, b in zip(fov.start, lo, hi))


def forbid_network(monkeypatch):
    def boom(self, x, offset=0.0):
        raise AssertionError("the network must not be called")

    monkeypatch.setattr(Model, "probability", boom)


def record_fovs(monkeypatch):
    """The fields of view the segfm pipeline feeds the network, in order (its passes and its tiles)."""
    fovs = []
    original = segment.network_input

    def wrapper(model, prepared, prompt, fov, previous=None):
        fovs.append(fov)
        return original(model, prepared, prompt, fov, previous=previous)

    monkeypatch.setattr(segment, "network_input", wrapper)
    monkeypatch.setattr(tiles, "network_input", wrapper)
    return fovs


def with_settings(model, **changes):
    """The model's spec with some segfm settings changed."""
    return replace(model.spec, settings=replace(model.spec.settings, **changes))


# ----------------------------------------------------------------------------- label_regions


def test_label_regions_match_nonzero_min_max():
    rng = np.random.default_rng(0)
    labels = np.zeros((17, 19, 23), dtype=np.uint8)
    labels[2:6, 3:9, 1:4] = 1
    labels[10, 0, 22] = 1  # a far single voxel stretches label 1
    labels[8:17, 12:19, 5:20] = 3
    labels[rng.random(labels.shape) < 0.01] = 5  # scattered label, labels 2 and 4 absent
    regions = label_regions(labels)
    present = sorted(int(v) for v in np.unique(labels) if v)
    assert sorted(regions) == present
    for lab in present:
        assert regions[lab] == nonzero_region(labels == lab), lab


def test_label_regions_single_voxel_and_corner():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[3, 4, 5] = 2
    labels[0, 0, 0] = 7
    assert label_regions(labels) == {2: [[3, 4], [4, 5], [5, 6]], 7: [[0, 1], [0, 1], [0, 1]]}


def test_label_regions_empty():
    assert label_regions(None) == {}
    assert label_regions(np.zeros((3, 4, 5), dtype=np.uint8)) == {}


# ----------------------------------------------------------------------------- prompt_region


def prepared_for(case, mean=0.0, std=1.0):
    return PreparedCase(case, mean, std, label_regions(case.prev_pred))


def test_prompt_region_union_of_box_clicks_and_own_previous():
    shape = (30, 32, 34)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[6:9, 4:7, 20:25] = 1  # own previous prediction: stretches x up to 24
    prev[25:30, 28:32, 0:2] = 2  # another label: must not count
    box = Box((5, 8, 10), (12, 15, 18), 8)
    prompt = ClassPrompt(
        1,
        box=box,
        fg=np.array([[7, 9, 11], [2, 10, 12]]),  # (2, .., ..) lies outside the box in z
        bg=np.array([[10, 20, 15]]),  # outside the box in y
        order=("fg", "bg"),
    )
    case = make_case(shape, [prompt], prev)
    assert prompt_region(prepared_for(case), prompt) == [[2, 13], [4, 21], [10, 25]]


def test_prompt_region_box_only_and_click_only():
    box = Box((5, 8, 10), (12, 15, 18), 8)
    case = make_case()
    assert prompt_region(prepared_for(case), ClassPrompt(1, box=box)) == [[5, 13], [8, 16], [10, 19]]
    click = ClassPrompt(1, bg=np.array([[3, 4, 5]]))
    assert prompt_region(prepared_for(case), click) == [[3, 4], [4, 5], [5, 6]]
    assert prompt_region(prepared_for(case), ClassPrompt(1)) is None


def test_prompt_region_click_outside_box_enlarges_every_side():
    box = Box((10, 10, 10), (15, 15, 15), 12)
    prompt = ClassPrompt(1, box=box, fg=np.array([[20, 3, 12]]), bg=np.array([[1, 25, 29]]))
    case = make_case()
    assert prompt_region(prepared_for(case), prompt) == [[1, 21], [3, 26], [10, 30]]


def test_prompt_region_previous_prediction_only_of_this_label():
    prev = np.zeros((30, 32, 34), dtype=np.uint8)
    prev[2:5, 3:6, 4:7] = 2
    prev[20:22, 20:22, 20:22] = 1
    case = make_case(prev=prev)
    assert prompt_region(prepared_for(case), ClassPrompt(2)) == [[2, 5], [3, 6], [4, 7]]
    assert prompt_region(prepared_for(case), ClassPrompt(3)) is None


# ----------------------------------------------------------------------------- border_changed


FACES = [(axis, end) for axis in range(3) for end in (0, -1)]


@pytest.mark.parametrize("axis,end", FACES)
def test_border_changed_when_prediction_newly_fills_a_face(axis, end):
    prev = torch.zeros((PATCH,) * 3, dtype=torch.bool)
    pred = prev.clone()
    pred[4:12, 4:12, 4:12] = True  # interior object
    prev[4:12, 4:12, 4:12] = True
    assert not border_changed(pred, prev)
    index = [slice(5, 10)] * 3  # a 5 x 5 = 25 voxel patch on one face (> 1500/192^2 of 256)
    index[axis] = end
    pred[tuple(index)] = True
    assert border_changed(pred, prev)


def test_border_unchanged_face_is_false_even_if_interior_changes_a_lot():
    rng = np.random.default_rng(0)
    prev = torch.from_numpy(rng.random((PATCH,) * 3) < 0.5)
    pred = prev.clone()
    pred[1:-1, 1:-1, 1:-1] = ~pred[1:-1, 1:-1, 1:-1]
    assert not border_changed(pred, prev)
    # faces full in both: no change either
    full = torch.ones((PATCH,) * 3, dtype=torch.bool)
    assert not border_changed(full, full.clone())


def test_border_changed_thresholds():
    face = PATCH * PATCH  # 256: absolute threshold 1500/192^2*256 = 10.4 voxels
    assert SEGFM_BORDER.absolute / SESSION_FACE * face < 11
    empty = torch.zeros((PATCH,) * 3, dtype=torch.bool)
    pred = empty.clone()
    pred[0, 0, 0:11] = True  # 11 new voxels on a face that was empty
    assert border_changed(pred, empty)
    # few changes relative to a large existing face object: not enough
    prev = empty.clone()
    prev[0, 0:8, 0:8] = True  # 64 voxels on the face
    pred = prev.clone()
    pred[0, 8, 0:5] = True  # 5 new: > 100/192^2*256 but not > 0.2 * 64
    assert not border_changed(pred, prev)
    pred[0, 8, 0:10] = True  # 10 new: <= 10.4 and not > 0.2 * 64 = 12.8: still no
    assert not border_changed(pred, prev)
    prev2 = empty.clone()
    prev2[0, 0:5, 0:5] = True  # 25 voxels; 0.2 * 25 = 5
    pred2 = prev2.clone()
    pred2[0, 6, 0:6] = True  # 6 new voxels: < 10.4 absolute but > 20 % of the old face
    assert border_changed(pred2, prev2)


# ----------------------------------------------------------------------------- network_input


def test_network_input_channel_order_and_previous_channel(tmp_path):
    layout = ["prev_seg", "zero", "bg_clicks", "image", "box", "fg_clicks"]
    from inference.pipelines import read_spec

    (tmp_path / "model.json").write_text(__import__("json").dumps(tiny_spec(channels=layout)))
    spec = read_spec(tmp_path)
    model = Model(spec, None, torch.device("cpu"))
    shape = (20, 22, 26)
    rng = np.random.default_rng(1)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[0:7, 5:14, 6:15] = 2
    prev[3, 9, 10] = 0
    prev[10:20, 0:5, 0:5] = 1  # another label: not in this class's channel
    prev[1:4, 9:12, 8:11] = 3  # another label inside this label's bounding box: not in the channel either
    prompt = ClassPrompt(
        2,
        box=Box((2, 6, 7), (9, 15, 18), 5),
        fg=np.array([[4, 10, 12]]),
        bg=np.array([[8, 12, 9]]),
        order=("fg", "bg"),
    )
    case = Case("c.npz", rng.normal(50, 10, shape).astype(np.float32), (1, 1, 1), [prompt], prev)
    mean, std = 48.0, 9.0
    prepared = PreparedCase(case, mean, std, label_regions(prev))
    fov = FieldOfView((-4, 2, 3), 24, PATCH)  # zoom 1.5, reaching outside the volume in z
    x = network_input(model, prepared, prompt, fov)
    assert x.shape == (len(layout), PATCH, PATCH, PATCH)
    assert x.dtype == torch.float32

    def crop(volume, pad):
        out = np.full((fov.side,) * 3, pad, dtype=np.float64)
        src, dst = [], []
        for s, n in zip(fov.start, shape):
            lo, hi = max(s, 0), min(s + fov.side, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        out[tuple(dst)] = volume[tuple(src)]
        return torch.from_numpy(out)[None, None]

    image_ref = F.interpolate(crop(case.image, mean), size=(PATCH,) * 3, mode="trilinear", align_corners=False)[0, 0]
    prev_ref = F.adaptive_avg_pool3d(crop((prev == 2).astype(np.float64), 0.0), PATCH)[0, 0]
    expected = {
        "image": ((image_ref - mean) / std).float(),
        "prev_seg": prev_ref.float(),
        "zero": torch.zeros((PATCH,) * 3),
        "box": box_channel(prompt.box, fov, "slab"),
        "fg_clicks": click_channel(prompt.fg, fov, spec.prompts),
        "bg_clicks": click_channel(prompt.bg, fov, spec.prompts),
    }
    for i, name in enumerate(layout):
        torch.testing.assert_close(x[i], expected[name], atol=1e-4, rtol=1e-4, msg=f"channel {i} ({name})")
    # the channels really are distinguishable, so the order check means something
    for name in ("prev_seg", "box", "fg_clicks", "bg_clicks"):
        assert expected[name].abs().sum() > 0, name
    assert ((prev_ref > 0) & (prev_ref < 1)).any()  # area sampling gives fractional values at the rim


def test_previous_channel_is_zero_without_previous_label():
    case = make_case(shape=(10, 10, 10))
    prepared = PreparedCase(case, 0.0, 1.0, {})
    ch = previous_channel(prepared, 1, FieldOfView((0, 0, 0), 16, 8))
    assert ch.shape == (8, 8, 8)
    assert ch.abs().sum() == 0


# ----------------------------------------------------------------------------- segment_class


def test_done_class_with_previous_prediction_is_kept(model, monkeypatch):
    shape = (20, 22, 24)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[3:9, 4:12, 5:10] = 1
    prev[12:15, 2:4, 2:4] = 2
    prompt = ClassPrompt(1, box=Box((3, 4, 5), (8, 11, 9), 5), fg=np.array([[4, 5, 6]]), order=("fg", None))
    case = make_case(shape, [prompt], prev)
    forbid_network(monkeypatch)
    outcome = segment_class(model, prepare(case, model), prompt)
    assert isinstance(outcome.probability, MaskProbability)
    assert outcome.probability.label == 1
    assert [list(b) for b in outcome.probability.bounds] == [[3, 9], [4, 12], [5, 10]]
    assert outcome.probability.labels is prev
    assert "kept" in outcome.how
    np.testing.assert_array_equal(fuse_classes(shape, [outcome.probability]), np.where(prev == 1, 1, 0))


def test_done_class_without_previous_prediction_runs_the_network(model, monkeypatch):
    calls = []
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: calls.append(x) or torch.zeros((PATCH,) * 3))
    prompt = ClassPrompt(1, fg=np.array([[10, 10, 10]]), order=("fg", None))
    case = make_case(prompts=[prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    assert isinstance(outcome.probability, PatchProbability)
    assert len(calls) == 1


def test_the_lone_first_click_gets_the_first_click_offset_and_later_rounds_the_clicks_one(model, monkeypatch):
    offsets = []
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: offsets.append(offset) or torch.zeros((PATCH,) * 3))
    monkeypatch.setattr(model, "spec", with_settings(model, logit_offset={"box": 2.0, "zoomed_box": 0.25, "clicks": 0.5,
                                                                             "first_click": -1.0}))
    first = ClassPrompt(1, fg=np.array([[10, 10, 10]]), order=("fg",))
    second = ClassPrompt(1, fg=np.array([[10, 10, 10]]), bg=np.array([[12, 12, 12]]), order=("fg", "bg"))
    boxed = ClassPrompt(1, box=Box((9, 9, 9), (15, 15, 15), 12), fg=np.array([[10, 10, 10]]), order=("fg",))
    big_box = ClassPrompt(1, box=Box((2, 3, 5), (22, 20, 16), 12))  # extent 21 > patch 16: seen zoomed out
    for prompt in (first, second, boxed, big_box):
        segment_class(model, prepare(make_case(prompts=[prompt]), model), prompt, Effort(PATCH, max_passes=1))
    assert offsets == [-1.0, 0.5, 2.0, 0.25]


def test_class_with_new_clicks_and_previous_prediction_runs_the_network(model, monkeypatch):
    prev = np.zeros((30, 32, 34), dtype=np.uint8)
    prev[10:14, 10:14, 10:14] = 1
    calls = []
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: calls.append(x) or torch.zeros((PATCH,) * 3))
    prompt = ClassPrompt(1, box=Box((9, 9, 9), (15, 15, 15), 12), fg=np.array([[16, 12, 12]]), order=("fg",))
    case = make_case(prompts=[prompt], prev=prev)
    outcome = segment_class(model, prepare(case, model), prompt)
    assert isinstance(outcome.probability, PatchProbability)
    assert len(calls) == 1
    # the previous prediction reaches the network through its channel
    assert calls[0][CHANNELS.index("prev_seg")].max() > 0.5


def test_class_without_any_prompt_is_empty(model, monkeypatch):
    prev = np.zeros((30, 32, 34), dtype=np.uint8)
    prev[1:3, 1:3, 1:3] = 1
    prompt = ClassPrompt(2, order=())
    case = make_case(prompts=[ClassPrompt(1), prompt], prev=prev)
    forbid_network(monkeypatch)
    outcome = segment_class(model, prepare(case, model), prompt)
    assert outcome.probability is None
    # done, but nothing to keep: still nothing
    done = ClassPrompt(2, order=(None,))
    assert segment_class(model, prepare(case, model), done).probability is None


def test_box_class_gives_patch_probability_covering_the_box(model):
    shape = (30, 32, 34)
    box = Box((2, 3, 5), (22, 20, 16), 12)  # extent 21 > patch 16: needs zoom > 1
    prompt = ClassPrompt(1, box=box)
    case = make_case(shape, [prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    prob = outcome.probability
    assert isinstance(prob, PatchProbability)
    assert prob.label == 1
    assert prob.probs.shape == (PATCH,) * 3
    assert float(prob.probs.min()) >= 0 and float(prob.probs.max()) <= 1
    assert prob.fov.zoom > 1
    assert fov_contains(prob.fov, box.lo, box.hi)
    assert outcome.how.startswith("box")
    assert "1 pass" in outcome.how and "passes" not in outcome.how


def test_box_class_never_zooms_out(model, monkeypatch):
    calls = []
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: calls.append(1) or torch.ones((PATCH,) * 3))
    prompt = ClassPrompt(1, box=Box((10, 10, 10), (14, 14, 14), 12))
    case = make_case(prompts=[prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    assert len(calls) == 1
    assert outcome.probability.fov.zoom == 1.0


def test_a_box_class_answers_nothing_outside_the_boxs_slices_clicks_do_not(model, monkeypatch):
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: torch.ones((PATCH,) * 3) * 0.9)  # all foreground
    box_prompt = ClassPrompt(1, box=Box((10, 10, 10), (14, 14, 14), 12))
    click_prompt = ClassPrompt(2, fg=np.array([[20, 16, 16]]), order=("fg",))
    case = make_case(prompts=[box_prompt, click_prompt])
    prepared = prepare(case, model)
    boxed = segment_class(model, prepared, box_prompt).probability
    clicked = segment_class(model, prepared, click_prompt).probability
    labels = fuse_classes(case.shape, [boxed])
    z = np.nonzero(labels == 1)[0]
    assert z.min() == 10 and z.max() == 14  # the patch reaches further, the box's slices do not
    assert labels[:, 10:15].sum() > 0 and (labels == 1).sum() > 5 * 5 * 5
    z = np.nonzero(fuse_classes(case.shape, [clicked]) == 2)[0]
    assert z.min() < 20 - 5 and z.max() > 20 + 5


def test_a_negative_click_without_a_box_only_removes_from_the_previous_prediction(model, monkeypatch):
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: torch.ones((PATCH,) * 3) * 0.9)  # all foreground
    shape = (30, 32, 34)
    prev = np.zeros(shape, dtype=np.uint8)
    prev[10:16, 10:16, 10:16] = 1
    prev[12, 12, 12] = 2  # another class's voxel stays out of class 1's mask
    negative = ClassPrompt(1, fg=np.array([[12, 13, 13]]), bg=np.array([[15, 15, 15]]), order=("fg", "bg"))
    labels = fuse_classes(shape, [segment_class(model, prepare(make_case(shape, [negative], prev), model), negative).probability])
    np.testing.assert_array_equal(labels == 1, prev == 1)
    # a positive click, or a negative one with a box, lets the network add (here: the whole patch)
    positive = replace(negative, order=("bg", "fg"))
    boxed = replace(negative, box=Box((10, 10, 10), (15, 15, 15), 12))
    for prompt in (positive, boxed):
        outcome = segment_class(model, prepare(make_case(shape, [prompt], prev), model), prompt)
        assert isinstance(outcome.probability, PatchProbability)
        assert (fuse_classes(shape, [outcome.probability]) == 1).sum() > 2 * (prev == 1).sum()


def test_a_negative_click_without_a_previous_mask_is_left_to_the_network(model, monkeypatch):
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: torch.ones((PATCH,) * 3) * 0.9)
    prompt = ClassPrompt(1, fg=np.array([[12, 13, 13]]), bg=np.array([[15, 15, 15]]), order=("fg", "bg"))
    outcome = segment_class(model, prepare(make_case(prompts=[prompt]), model), prompt)
    assert isinstance(outcome.probability, PatchProbability)


@pytest.mark.parametrize("max_zoom,zooms", [(4, [1.0, 1.5, 2.25, 3.375, 4.0]), (2, [1.0, 1.5, 2.0])])
def test_clicks_class_with_full_output_zooms_out_until_max_zoom(tmp_path, monkeypatch, max_zoom, zooms):
    model = tiny_model(tmp_path / "m", max_zoom=max_zoom)
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: torch.ones((PATCH,) * 3))
    fovs = record_fovs(monkeypatch)
    click = np.array([[20, 21, 22]])
    prompt = ClassPrompt(1, fg=click, order=("fg",))
    case = make_case((40, 42, 44), [prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    assert [f.zoom for f in fovs] == pytest.approx(zooms)
    assert outcome.probability.fov == fovs[-1]
    assert outcome.probability.fov.zoom == pytest.approx(max_zoom)
    assert f"{len(zooms)} passes" in outcome.how
    assert f"zoom {max_zoom:.2f}" in outcome.how
    assert outcome.how.startswith("clicks, 1 rounds")
    for f in fovs:  # zooming out keeps the click in view
        assert fov_contains(f, click[0], click[0])


def test_clicks_class_with_empty_output_does_a_single_pass(model, monkeypatch):
    calls = []
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: calls.append(1) or torch.zeros((PATCH,) * 3))
    prompt = ClassPrompt(1, fg=np.array([[15, 15, 15]]), bg=np.array([[17, 15, 15]]), order=("fg", "bg"))
    case = make_case(prompts=[prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    assert len(calls) == 1
    assert outcome.how.endswith("1 pass")
    assert "2 rounds" in outcome.how
    assert outcome.probability.fov.zoom == 1.0
    assert outcome.probability.probs.dtype == torch.float16


def test_segment_class_with_real_network_on_clicks(model):
    prompt = ClassPrompt(1, fg=np.array([[12, 13, 14]]), order=("fg",))
    case = make_case(prompts=[prompt])
    outcome = segment_class(model, prepare(case, model), prompt)
    prob = outcome.probability
    assert isinstance(prob, PatchProbability)
    assert prob.probs.shape == (PATCH,) * 3
    assert torch.isfinite(prob.probs.float()).all()
    assert fov_contains(prob.fov, (12, 13, 14), (12, 13, 14))


# ----------------------------------------------------------------------------- fallback


def test_fallback_prefers_previous_prediction():
    prev = np.zeros((10, 12, 14), dtype=np.uint8)
    prev[2:5, 3:7, 4:9] = 1
    prompt = ClassPrompt(1, box=Box((0, 0, 0), (9, 11, 13), 5))
    case = make_case((10, 12, 14), [prompt], prev)
    fb = fallback(prepared_for(case), prompt)
    assert isinstance(fb, MaskProbability)
    assert fb.label == 1
    assert fb.labels is prev
    assert [list(b) for b in fb.bounds] == [[2, 5], [3, 7], [4, 9]]


def test_fallback_uses_box_without_previous_prediction():
    prompt = ClassPrompt(2, box=Box((1, 2, 3), (4, 6, 8), 2))
    prev = np.zeros((10, 12, 14), dtype=np.uint8)
    prev[0, 0, 0] = 1  # another label only
    case = make_case((10, 12, 14), [prompt], prev)
    fb = fallback(prepared_for(case), prompt)
    assert isinstance(fb, MaskProbability)
    assert fb.labels is None
    assert [list(b) for b in fb.bounds] == [[1, 5], [2, 7], [3, 9]]
    out = fuse_classes((10, 12, 14), [fb])
    assert out.sum() == 2 * 4 * 5 * 6  # closed box filled with label 2


def test_fallback_without_previous_or_box_is_none():
    prompt = ClassPrompt(1, fg=np.array([[1, 1, 1]]), order=("fg",))
    case = make_case((10, 12, 14), [prompt])
    assert fallback(prepared_for(case), prompt) is None


def test_label_regions_of_labels_larger_than_the_volume():
    labels = np.zeros((1, 1, 2), np.uint8)
    labels[0, 0, 1] = 3  # cc3d.statistics refuses a label above the voxel count
    assert label_regions(labels) == {3: [[0, 1], [0, 1], [1, 2]]}


# ----------------------------------------------------------------------------- full-resolution tiles


def echo_previous_or_ball(self, x, offset=0.0):
    """A stand-in network: a tile echoes its previous-mask channel; a pass without one answers a ball."""
    previous = x[CHANNELS.index("prev_seg")]
    if previous.any():
        return previous.clone()
    grid = ((np.indices((PATCH,) * 3) - 7.5) ** 2).sum(axis=0)
    return torch.from_numpy((grid <= 5.5 ** 2).astype(np.float32))


def test_a_zoomed_out_box_is_predicted_again_in_zoom_one_tiles_fed_the_coarse_answer(model, monkeypatch):
    shape = (48, 48, 48)
    prompt = ClassPrompt(1, box=Box((4, 4, 4), (43, 43, 43), 24))  # extent 40 > patch 16: zoom 2.8
    case = make_case(shape=shape, prompts=[prompt])
    monkeypatch.setattr(Model, "probability", echo_previous_or_ball)
    coarse = segment_class(model, prepare(case, model), prompt, Effort(PATCH, refine_boundary=False))
    monkeypatch.setattr(model, "spec", with_settings(model, full_resolution_tiles=True))
    fovs = record_fovs(monkeypatch)
    tiled = segment_class(model, prepare(case, model), prompt)
    assert isinstance(coarse.probability, PatchProbability) and fovs[0].zoom > 2
    tile_fovs = fovs[1:]
    assert isinstance(tiled.probability, BlockProbability) and "full-resolution tiles" in tiled.how
    assert tiled.passes == 1 + len(tile_fovs) > 1 and all(f.zoom == 1 for f in tile_fovs)
    # tiles that echo the coarse answer put it back voxel for voxel: each lands where it was cut
    expected = fuse_classes(shape, [coarse.probability])
    assert expected.any() and np.array_equal(fuse_classes(shape, [tiled.probability]), expected)
    # the tiles cover the coarse foreground
    lo, hi = nonzero_bounds(expected)
    assert all(min(f.start[a] for f in tile_fovs) <= lo[a] and max(f.start[a] for f in tile_fovs) + PATCH > hi[a]
               for a in range(3))


def test_tiles_need_the_switch_a_box_a_zoomed_out_view_and_the_time(model, monkeypatch):
    monkeypatch.setattr(Model, "probability", echo_previous_or_ball)
    monkeypatch.setattr(model, "spec", with_settings(model, full_resolution_tiles=True))
    big = ClassPrompt(1, box=Box((4, 4, 4), (43, 43, 43), 24))
    small = ClassPrompt(1, box=Box((20, 20, 20), (27, 27, 27), 24))  # fits the patch: zoom 1
    clicks = ClassPrompt(1, fg=np.array([[24, 24, 24]]), order=("fg",))
    case = make_case(shape=(48, 48, 48))

    def how(prompt, effort=None):
        return segment_class(model, prepare(replace(case, prompts=[prompt]), model), prompt, effort).how

    assert "tiles" in how(big)
    assert "tiles" not in how(small) and "tiles" not in how(clicks)
    assert "tiles" not in how(big, Effort(PATCH, stop_zooming_at=0.0))  # no time left for them
    assert "tiles" not in how(big, Effort.one_pass(PATCH))
    monkeypatch.setattr(model, "spec", with_settings(model, full_resolution_tiles=False))
    assert "tiles" not in how(big)
