"""Tests for training/: synthetic data, prompts as the evaluator gives them, the loop, resume, floors."""
from __future__ import annotations

import copy
import csv
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.case_io import Case, ClassPrompt
from inference.harness.boxes import organiser_box
from inference.harness.simulated_user import Click, simulate_click
from inference.model import Model
from inference.pipelines import load_model, read_spec
from inference.predict import DEFAULT_MODEL, predict_case
from scripts.synthetic_cases import make_volume
from training import floors
from training.calibrate import calibrate, write_offsets
from training.feed import SINGLE_THREAD_ENV, InProcessFeed, WorkerFeed, environment
from training.label_maps import (SHAPE_KINDS, LabelSources, blob, label_values, nuclei, random_shapes, shell,
                                 smooth_noise, tube)
import training.samples as samples
from training.samples import (FIRST_TARGET_LABEL_ABOVE, LABEL, MIN_TARGET_VOXELS, Recipe, TrainingVolume, add_click,
                              corrupted_previous, draw_samples, draw_volume, first_prompt, other_target, patch_target,
                              prompted_sample, tile_pair, training_pair, volume_groups)
from training.synthesis import render_image, rotate_and_scale, thick_slices
from training.train import DEFAULT_CONFIG, build_model, learning_rate, loss_terms, model_spec, train

SHAPES_ONLY = LabelSources()
REPO = Path(__file__).resolve().parent.parent


def tiny_config(tmp_seed: int = 0) -> dict:
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["seed"] = tmp_seed
    config["model"].update(features=[4, 8, 16], blocks=[1, 1, 1], patch_size=16)
    config["data"].update(max_side=40, min_side=24)
    config["batch_size"] = 2
    config["threads"] = 1
    config["optimiser"].update(total_steps=6, warmup_steps=2)
    return config


# ----------------------------------------------------------------------------- label maps and images


@pytest.mark.parametrize("make", [blob, tube, shell, nuclei])
def test_every_shape_kind_draws_a_nonempty_mask_inside_the_volume(make):
    mask = make(np.random.default_rng(3), (32, 40, 36))
    assert mask.shape == (32, 40, 36) and mask.dtype == bool
    assert 0 < mask.sum() < mask.size


def test_random_shapes_are_deterministic_per_seed_and_keep_targets_below_the_texture_labels():
    a = random_shapes(np.random.default_rng(7), (32, 48, 48))
    b = random_shapes(np.random.default_rng(7), (32, 48, 48))
    c = random_shapes(np.random.default_rng(8), (32, 48, 48))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    targets = np.unique(a[(a > 0) & (a <= 100)])
    assert len(targets) >= 1 and len(SHAPE_KINDS) == 5
    assert np.all(a[a > 100] > 100)  # background texture regions


def test_shape_weights_choose_which_kinds_random_shapes_draw(monkeypatch):
    import training.label_maps as label_maps

    drawn = []
    for kind in ("blob", "tube", "shell", "nuclei"):
        original = getattr(label_maps, kind)
        monkeypatch.setattr(label_maps, kind, lambda rng, shape, k=kind, f=original: drawn.append(k) or f(rng, shape))
    for seed in range(4):
        random_shapes(np.random.default_rng(seed), (24, 32, 32), (0, 1, 3, 0, 0))
    assert set(drawn) == {"tube", "shell"} and drawn.count("shell") > drawn.count("tube")
    with pytest.raises(ValueError, match="shape_weights"):
        Recipe(shape_weights=(1, 1, 1))
    with pytest.raises(ValueError, match="shape_weights"):
        Recipe(shape_weights=(0, 0, 0, 0, 0))
    assert Recipe.from_config({"shape_weights": [1, 2, 2, 1, 1]}).shape_weights == (1, 2, 2, 1, 1)


def test_render_image_is_uint8_full_range_and_separates_differently_coloured_labels():
    labels = np.zeros((20, 30, 30), dtype=np.uint16)
    labels[5:15, 10:20, 10:20] = 1
    image = render_image(labels, np.random.default_rng(0))
    assert image.dtype == np.uint8 and image.shape == labels.shape
    assert image.max() > 200 and image.min() < 50  # stretched to [0, 255]
    same = render_image(labels, np.random.default_rng(0))
    assert np.array_equal(image, same)


def test_label_values_are_the_sorted_labels_present():
    labels = np.random.default_rng(1).choice(np.array([0, 3, 7, 250, 1000], dtype=np.uint16), size=(9, 11, 13))
    labels[labels == 7] = 3  # 7 absent
    assert np.array_equal(label_values(labels), np.unique(labels))


def test_render_image_gives_each_label_its_own_mean_whatever_the_label_numbers():
    labels = np.zeros((24, 24, 24), dtype=np.uint16)
    labels[:, :, 12:] = 900  # a high label number next to 0: intensities are looked up by label, not by rank
    means = [[render_image(labels, np.random.default_rng(seed))[labels == v].mean() for v in (0, 900)] for seed in range(8)]
    assert max(abs(a - b) for a, b in means) > 60  # the two halves are drawn different contrasts


def test_smooth_noise_is_smooth_up_to_the_last_plane():
    # sigma 20 -> coarse grid 10x smaller: ndimage.zoom left the last planes at 0 here
    field_ = smooth_noise(np.random.default_rng(0), (150, 160, 140), sigma=20.0)
    assert abs(field_.mean()) < 1e-3 and abs(field_.std() - 1) < 1e-3
    for axis in range(3):
        last, before = np.take(field_, -1, axis), np.take(field_, -2, axis)
        assert np.abs(last - before).max() < 0.5  # neighbouring planes of a smooth field


def test_thick_slices_keep_every_kth_slice_and_report_k():
    labels = np.arange(40)[:, None, None] * np.ones((1, 4, 4), dtype=np.int64)
    for seed in range(20):
        out, k = thick_slices(labels, np.random.default_rng(seed), 4)
        assert 1 <= k <= 4
        assert np.all(np.diff(out[:, 0, 0]) == k)


def test_rotate_and_scale_keeps_shape_and_only_existing_labels():
    labels = np.zeros((24, 24, 24), dtype=np.uint16)
    labels[6:18, 8:16, 4:20] = 5
    out = rotate_and_scale(labels, np.random.default_rng(1), 0.5, (0.8, 1.2))
    assert out.shape == labels.shape
    assert set(np.unique(out)) <= {0, 5} and (out == 5).sum() > 0.5 * (labels == 5).sum()


def test_draw_volume_gives_a_usable_target_and_is_deterministic():
    recipe = Recipe(max_side=48, min_side=24)
    a = draw_volume(np.random.default_rng([1, 2]), SHAPES_ONLY, recipe)
    b = draw_volume(np.random.default_rng([1, 2]), SHAPES_ONLY, recipe)
    assert a.truth.sum() >= MIN_TARGET_VOXELS and a.image.dtype == np.uint8
    assert a.image.shape == a.truth.shape and a.spacing[1:] == (1.0, 1.0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)


def test_another_target_of_the_same_volume_is_a_different_usable_structure():
    labels = np.zeros((20, 20, 20), dtype=np.int32)
    labels[2:6, 2:6, 2:6] = 1
    labels[10:14, 10:14, 10:14] = 2
    labels[15, 15, 15:18] = 3  # below MIN_TARGET_VOXELS: never a target
    labels[8:12, 2:6, 2:6] = FIRST_TARGET_LABEL_ABOVE + 1  # texture in a shapes volume
    labels[0:4, 14:20, 14:20] = 4  # cut by the volume's border: only when no whole structure is left
    volume = TrainingVolume(np.zeros(labels.shape, np.uint8), labels == 1, (1.0, 1.0, 1.0), "shapes", labels)
    rng = np.random.default_rng(0)
    for _ in range(10):
        np.testing.assert_array_equal(other_target(volume, rng).truth, labels == 2)
    atlas = TrainingVolume(volume.image, labels == 1, volume.spacing, "atlas", labels)
    chosen = {int(labels[other_target(atlas, rng).truth][0]) for _ in range(30)}
    assert chosen == {2, FIRST_TARGET_LABEL_ABOVE + 1}
    cut = TrainingVolume(volume.image, labels == 2, volume.spacing, "shapes", np.where(labels % 2 == 0, labels, 0))
    np.testing.assert_array_equal(other_target(cut, rng).truth, labels == 4)
    alone = TrainingVolume(volume.image, labels == 2, volume.spacing, "shapes", np.where(labels == 2, 2, 0))
    assert other_target(alone, rng) is alone


def test_merged_regions_are_unions_of_whole_neighbouring_regions():
    from training.validate import merged_regions

    labels = np.zeros((8, 40, 40), dtype=np.uint16)
    for i in range(4):
        for j in range(4):
            labels[:, 10 * i:10 * i + 10, 10 * j:10 * j + 10] = 1 + 4 * i + j  # a 4x4 grid of regions
    merged = merged_regions(labels, np.random.default_rng(0), groups=4, k=2)
    assert sorted(np.unique(merged).tolist()) == [0, 1, 2]
    for value in range(1, 17):  # never splits a region
        assert len(np.unique(merged[labels == value])) == 1
    for label in (1, 2):
        regions = np.unique(labels[merged == label])
        assert 2 <= len(regions) <= 12  # several regions, not all
        rows, cols = (regions - 1) // 4, (regions - 1) % 4
        assert np.ptp(rows) + np.ptp(cols) <= 4  # neighbours, not scattered over the grid


def test_volume_groups_split_a_batch_into_volumes():
    assert volume_groups(8, 1) == [(i, 1) for i in range(8)]
    assert volume_groups(8, 3) == [(0, 3), (3, 3), (6, 2)]
    assert volume_groups(2, 4) == [(0, 2)]
    with pytest.raises(ValueError, match="targets_per_volume"):
        Recipe(targets_per_volume=0)


def test_one_volume_gives_several_samples_with_their_own_targets(tmp_path, monkeypatch):
    config = tiny_config()
    model = build_model(config, tmp_path / "model")
    recipe = Recipe.from_config(config["data"])
    prompting = dict(config["prompting"], p_single_pass=1.0, p_corrupt_prev=0.0)
    drawn = []
    original = samples.draw_volume
    monkeypatch.setattr(samples, "draw_volume", lambda *a: drawn.append(original(*a)) or drawn[-1])
    group = draw_samples(model, SHAPES_ONLY, recipe, prompting, 7, 0, 0, count=3)
    assert len(drawn) == 1 and len(group) == 3
    assert group[0].volume_seconds > 0 and group[1].volume_seconds == group[2].volume_seconds == 0
    assert len({round(float(s.target.sum()), 3) for s in group}) >= 2  # other structures, not one target thrice
    # one sample per volume is the stream the recorded runs used
    [single] = draw_samples(model, SHAPES_ONLY, recipe, prompting, 7, 0, 0)
    assert torch.equal(single.x, group[0].x) and torch.equal(single.target, group[0].target)


# ----------------------------------------------------------------------------- prompts


def ellipsoid_volume() -> TrainingVolume:
    image, labels = make_volume((24, 48, 48), 1, seed=4)
    return TrainingVolume(image, labels == 1, (1.0, 1.0, 1.0), "test")


def test_box_prompt_follows_the_organiser_rule():
    volume = ellipsoid_volume()
    prompt = first_prompt(volume, np.random.default_rng(0), with_box=True)
    exact = organiser_box(volume.truth)
    z = np.nonzero(volume.truth)[0]
    assert prompt.box.lo[0] == z.min() == exact["z_min"] and prompt.box.hi[0] == z.max()
    assert prompt.box.z_mid == exact["z_mid"]
    # widening only ever grows the 2D box
    assert prompt.box.lo[1] <= exact["z_mid_y_min"] and prompt.box.hi[2] >= exact["z_mid_x_max"]
    assert len(prompt.fg) == 0 and prompt.order == ()


def test_no_box_prompt_is_the_evaluators_first_click():
    volume = ellipsoid_volume()
    prompt = first_prompt(volume, np.random.default_rng(0), with_box=False)
    expected = simulate_click(np.zeros_like(volume.truth), volume.truth)
    assert prompt.box is None and prompt.order == ("fg",)
    assert tuple(prompt.fg[0]) == expected.voxel and volume.truth[expected.voxel]


def test_add_click_accumulates_in_order_and_records_none():
    prompt = ClassPrompt(LABEL)
    prompt = add_click(prompt, Click("fg", (1, 2, 3)))
    prompt = add_click(prompt, Click("bg", (4, 5, 6)))
    prompt = add_click(prompt, None)
    assert prompt.order == ("fg", "bg", None) and prompt.done
    assert prompt.fg.tolist() == [[1, 2, 3]] and prompt.bg.tolist() == [[4, 5, 6]]


def test_training_pair_uses_the_containers_channels_and_a_target_in_the_patch(tmp_path):
    model = build_model(tiny_config(), tmp_path / "m")
    volume = ellipsoid_volume()
    prompt = first_prompt(volume, np.random.default_rng(0), with_box=True)
    x, target = training_pair(model, volume, prompt, None)
    assert x.shape == (5, 16, 16, 16) and target.shape == (16, 16, 16)
    box = x[model.spec.channels.index("box")]
    assert box.sum() > 0 and x[model.spec.channels.index("prev_seg")].sum() == 0
    assert 0 <= target.min() and target.max() <= 1 and target.sum() > 0
    # the target lies inside the box: the box slab covers the whole object
    assert float((target * (1 - box)).sum()) < 1e-3 * float(target.sum()) + 1e-6


def two_structure_volume() -> TrainingVolume:
    """Label 1 (the target, a slab) touching label 2 (a larger slab beside it)."""
    labels = np.zeros((24, 40, 40), dtype=np.uint16)
    labels[6:18, 8:20, 8:32] = 1
    labels[6:18, 20:34, 8:32] = 2
    image = np.where(labels == 1, 200, np.where(labels == 2, 120, 30)).astype(np.uint8)
    return TrainingVolume(image, labels == 1, (1.0, 1.0, 1.0), "test", labels)


def test_corrupted_previous_segmentations_leak_into_neighbours_swell_or_shrink():
    volume = two_structure_volume()
    truth, neighbour = volume.truth, volume.labels == 2
    leaks = grown = shrunk = 0
    for seed in range(40):
        wrong = corrupted_previous(volume, np.random.default_rng(seed))
        assert wrong.shape == truth.shape and wrong.dtype == bool and not np.array_equal(wrong, truth)
        extra = wrong & ~truth
        if not (truth & ~wrong).any():  # a superset: leaked or dilated
            grown += 1
            leaks += bool(extra.any() and (extra <= neighbour).all() and extra.sum() > 200)
        else:
            assert wrong.sum() < truth.sum() and not extra.any()  # an eroded copy, inside the truth
            shrunk += 1
    assert leaks >= 5 and grown > leaks and shrunk >= 3


def test_a_corrupted_previous_sample_carries_that_segmentation_and_the_click_that_fixes_it(tmp_path):
    model = build_model(tiny_config(), tmp_path / "m")
    volume = two_structure_volume()
    prompting = {"p_no_box": 0.0, "p_single_pass": 1.0, "p_corrupt_prev": 1.0, "click_rounds": [1],
                 "click_round_weights": [1.0]}
    sample = prompted_sample(model, volume, np.random.default_rng(2), prompting)
    channels = model.spec.channels
    assert sample.rounds == 1 and not sample.no_box
    assert sample.x[channels.index("prev_seg")].sum() > 0
    assert sample.x[channels.index("fg_clicks")].sum() + sample.x[channels.index("bg_clicks")].sum() > 0
    # without the share, the same single-pass recipe has neither
    plain = prompted_sample(model, volume, np.random.default_rng(2), prompting | {"p_corrupt_prev": 0.0})
    assert plain.rounds == 0 and plain.x[channels.index("prev_seg")].sum() == 0


def big_target_volume() -> TrainingVolume:
    """A slab wider than 3/4 of the tiny model's patch (16): its box is seen zoomed out."""
    labels = np.zeros((20, 40, 40), dtype=np.uint16)
    labels[4:16, 6:34, 8:30] = 1
    image = np.where(labels == 1, 200, 30).astype(np.uint8)
    return TrainingVolume(image, labels == 1, (1.0, 1.0, 1.0), "test", labels)


def coarse_ball(self, x, offset=0.0):
    """A stand-in prompting network: a ball in the middle of whatever patch it sees."""
    grid = ((np.indices(x.shape[1:]) - (x.shape[1] - 1) / 2) ** 2).sum(axis=0)
    return torch.from_numpy((grid <= (x.shape[1] * 0.35) ** 2).astype(np.float32))


def test_a_tile_sample_is_a_zoom_one_tile_of_the_zoomed_out_box_fed_the_coarse_answer(tmp_path, monkeypatch):
    from inference.field_of_view import fit, tiles
    from inference.geometry import region_of
    from inference.fusion import fuse_classes
    from inference.class_task import Effort, prepare
    from inference.pipelines import segment_class

    model = build_model(tiny_config(), tmp_path / "m")
    monkeypatch.setattr(Model, "probability", coarse_ball)
    volume = big_target_volume()
    prompt = first_prompt(volume, np.random.default_rng(0), with_box=True)
    case = samples.as_case(volume, prompt, None)
    coarse_fov = fit(samples.prompt_region(prepare(case, model), prompt), 16)
    coarse = fuse_classes(volume.truth.shape, [segment_class(model, prepare(case, model), prompt,
                                                             Effort.one_pass(16)).probability]) == LABEL
    assert coarse_fov.zoom > 1 and coarse.any()
    seen = []
    original = samples.network_input
    monkeypatch.setattr(samples, "network_input", lambda *a, **k: seen.append((a[3], k)) or original(*a, **k))
    x, target = tile_pair(model, volume, prompt, None, np.random.default_rng(3))
    [(fov, kwargs)] = seen
    lo = tuple(int(w.min()) for w in np.nonzero(coarse))
    hi = tuple(int(w.max()) for w in np.nonzero(coarse))
    assert fov.zoom == 1 and fov in tiles(region_of(lo, hi), 16)
    # the previous-mask channel is the coarse answer at full resolution, the target the truth there
    cut = tuple(slice(max(s, 0), s + 16) for s in fov.start)
    pad = [(max(0, -s), max(0, s + 16 - n)) for s, n in zip(fov.start, volume.truth.shape)]
    assert torch.equal(x[model.spec.channels.index("prev_seg")], torch.from_numpy(np.pad(coarse[cut], pad).astype(np.float32)))
    assert torch.equal(target, torch.from_numpy(np.pad(volume.truth[cut], pad).astype(np.float32)))
    assert x[model.spec.channels.index("box")].sum() > 0
    # no tile for a sample without a box, nor for a box that fits the patch at zoom 1
    click_prompt = first_prompt(volume, np.random.default_rng(0), with_box=False)
    assert tile_pair(model, volume, click_prompt, None, np.random.default_rng(3)) is None
    small = small_target_volume()
    assert tile_pair(model, small, first_prompt(small, np.random.default_rng(0), True), None,
                     np.random.default_rng(3)) is None


def small_target_volume() -> TrainingVolume:
    """A cube that fits the tiny model's patch at zoom 1."""
    labels = np.zeros((20, 40, 40), dtype=np.uint16)
    labels[8:12, 16:22, 16:22] = 1
    return TrainingVolume(np.where(labels == 1, 200, 30).astype(np.uint8), labels == 1, (1.0, 1.0, 1.0), "test")


def test_a_tile_sample_is_drawn_the_same_every_time(tmp_path):
    model = build_model(tiny_config(), tmp_path / "m")  # the real (random) network makes the coarse answer
    prompting = {"p_no_box": 0.0, "p_single_pass": 0.0, "click_rounds": [2], "click_round_weights": [1.0], "p_tile": 1.0}
    first, again = (prompted_sample(model, big_target_volume(), np.random.default_rng(5), prompting) for _ in range(2))
    assert first.tile and again.tile
    assert torch.equal(first.x, again.x) and torch.equal(first.target, again.target)


def test_the_tile_share_makes_tile_samples_only_of_zoomed_out_boxes(tmp_path, monkeypatch):
    model = build_model(tiny_config(), tmp_path / "m")
    monkeypatch.setattr(Model, "probability", coarse_ball)
    prompting = {"p_no_box": 0.0, "p_single_pass": 1.0, "click_rounds": [1], "click_round_weights": [1.0], "p_tile": 1.0}
    boxed = prompted_sample(model, big_target_volume(), np.random.default_rng(2), prompting)
    assert boxed.tile
    clicked = prompted_sample(model, big_target_volume(), np.random.default_rng(2), prompting | {"p_no_box": 1.0})
    plain = prompted_sample(model, big_target_volume(), np.random.default_rng(2), prompting | {"p_tile": 0.0})
    assert not clicked.tile and not plain.tile and not torch.equal(plain.x, boxed.x)


def test_patch_target_is_the_area_fraction_of_the_truth():
    from inference.field_of_view import FieldOfView

    truth = np.zeros((8, 8, 8), dtype=bool)
    truth[:4] = True
    fov = FieldOfView((0, 0, 0), 8, 4)  # zoom 2: each patch voxel averages 2x2x2
    t = patch_target(truth, fov)
    assert torch.allclose(t[:2], torch.ones(2, 4, 4)) and torch.allclose(t[2:], torch.zeros(2, 4, 4))


# ----------------------------------------------------------------------------- loss, schedule, loop


def test_loss_is_low_for_a_confident_correct_prediction_and_high_for_the_inverse():
    target = torch.zeros(2, 1, 8, 8, 8)
    target[:, :, 2:6, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 20
    dice_good, bce_good = loss_terms(good, target)
    dice_bad, bce_bad = loss_terms(-good, target)
    assert dice_good < 0.02 and bce_good < 0.01
    assert dice_bad > 0.9 and bce_bad > 5


def test_learning_rate_warms_up_then_decays_to_the_floor():
    opt = {"lr": 1e-3, "warmup_steps": 10, "total_steps": 110, "final_lr_fraction": 0.1}
    lrs = [learning_rate(s, opt) for s in range(0, 130)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4)


def test_a_time_planned_run_decays_with_training_minutes_not_steps():
    opt = {"lr": 1e-3, "warmup_steps": 10, "total_steps": 10**6, "total_minutes": 20.0, "final_lr_fraction": 0.1}
    assert learning_rate(500, opt, minutes=0.0) == pytest.approx(1e-3)
    assert learning_rate(500, opt, minutes=10.0) == pytest.approx(0.55e-3)
    assert learning_rate(11, opt, minutes=20.0) == learning_rate(500, opt, minutes=30.0) == pytest.approx(1e-4)


def test_a_run_planned_in_minutes_stops_there_and_resumes_from_the_minutes_it_trained(tmp_path):
    config = tiny_config()
    config["optimiser"].update(total_steps=10**6, total_minutes=1e-9)
    assert train(tmp_path / "run", config, False, None, None, SHAPES_ONLY) == 1
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["minutes"] > 0
    assert train(tmp_path / "run", config, True, None, None, SHAPES_ONLY) == 1  # nothing left to train


def test_worker_processes_feed_training_and_prompt_with_the_published_weights(tmp_path):
    config = tiny_config()
    config["sync_steps"] = 1
    assert train(tmp_path / "run", config, False, None, 3, SHAPES_ONLY, workers=2) == 3
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(float(r["feed_seconds"]) >= 0 for r in rows)
    for r in rows:  # the workers' own view: what a sample cost them, and where
        assert float(r["sample_seconds"]) >= float(r["volume_seconds"]) + float(r["passes_seconds"]) - 2e-3
    # a volume's synthesis is counted on its first sample, which may land in another step's batch
    assert sum(float(r["volume_seconds"]) for r in rows) > 0
    published = torch.load(tmp_path / "run" / "prompting_weights.pt", weights_only=True)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["network"]
    assert all(torch.equal(published[k], trained[k]) for k in trained)


@pytest.mark.parametrize("per_volume", [1, 2])
def test_worker_samples_match_the_in_process_ones_to_half_precision(tmp_path, per_volume):
    config = tiny_config()
    config["data"]["targets_per_volume"] = per_volume
    model = build_model(config, tmp_path / "model")
    recipe = Recipe.from_config(config["data"])
    # no prompting passes (single pass, no tiles): the sample depends on the seed only
    prompting = dict(config["prompting"], p_single_pass=1.0, p_tile=0.0)
    here = InProcessFeed(model, SHAPES_ONLY, recipe, prompting, 3).batch(0, 4)
    feed = WorkerFeed(model, SHAPES_ONLY, recipe, prompting, 3, workers=1, batch_size=4, first_step=0, scratch=tmp_path)
    try:
        there = sorted(feed.batch(0, 4), key=lambda s: float(s.target.sum()))
    finally:
        feed.close()
    here = sorted(here, key=lambda s: float(s.target.sum()))
    assert len(here) == len(there) == 4
    for a, b in zip(here, there):
        assert b.x.dtype == torch.float16 and b.x.shape == a.x.shape  # the trainer converts on its device
        assert torch.allclose(a.x, b.x.float(), rtol=1e-3, atol=1e-3)
        assert torch.allclose(a.target, b.target.float(), atol=1e-3)
        assert b.seconds >= b.volume_seconds >= 0 and b.passes_seconds == 0  # timed where it was drawn
    assert sum(s.volume_seconds > 0 for s in there) == 4 // per_volume  # one synthesis per volume


def test_prompting_passes_are_timed_apart_from_the_volume(tmp_path):
    config = tiny_config()
    model = build_model(config, tmp_path / "model")
    recipe = Recipe.from_config(config["data"])
    prompting = dict(config["prompting"], p_single_pass=0.0, p_corrupt_prev=0.0, click_rounds=[2],
                     click_round_weights=[1.0])
    [sample] = draw_samples(model, SHAPES_ONLY, recipe, prompting, 5, 0, 0)
    assert sample.rounds >= 1 and sample.passes_seconds > 0
    assert sample.seconds >= sample.volume_seconds + sample.passes_seconds


def test_feed_workers_start_with_single_threaded_libraries_and_the_trainer_keeps_its_environment():
    name = SINGLE_THREAD_ENV[0]
    before = os.environ.get(name)
    context = multiprocessing.get_context("spawn")
    seen = context.Queue()
    with environment({name: "1"}):
        child = context.Process(target=_report_environment, args=(name, seen))
        child.start()
    child.join(timeout=60)
    assert seen.get(timeout=5) == "1"
    assert os.environ.get(name) == before


def _report_environment(name, seen) -> None:
    seen.put(os.environ.get(name))


def test_a_failing_feed_worker_stops_training_with_its_error(tmp_path):
    config = tiny_config()
    config["data"].update(p_atlas=1.0, p_tissue=0.0)
    no_targets = LabelSources(atlases=[np.zeros((24, 24, 24), dtype=np.uint16)])
    with pytest.raises(RuntimeError, match="feed worker failed.*no usable target"):
        train(tmp_path / "run", config, False, None, 2, no_targets, workers=1)


def test_training_runs_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    config = tiny_config()
    straight = tmp_path / "straight"
    assert train(straight, copy.deepcopy(config), False, None, 4, SHAPES_ONLY) == 4
    split = tmp_path / "split"
    assert train(split, copy.deepcopy(config), False, None, 2, SHAPES_ONLY) == 2
    assert train(split, copy.deepcopy(config), True, None, 4, SHAPES_ONLY) == 4
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(split / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    # a conv bias that feeds an InstanceNorm has no effect and a true gradient of 0, so AdamW turns rounding
    # noise there (~2e-8: oneDNN's first training run in a process differs from later ones) into lr-sized steps
    # (each such bias is in the state dict twice: as `conv` and as `all_modules.0`, before its norm `all_modules.1`)
    feeds_norm = (("conv.bias", "norm.weight"), ("all_modules.0.bias", "all_modules.1.weight"))
    compared = [key for key in a["network"] if not any(
        key.endswith(bias) and key[: -len(bias)] + norm in a["network"] for bias, norm in feeds_norm)]
    assert len(compared) > len(a["network"]) / 2
    for key in compared:
        assert torch.allclose(a["network"][key], b["network"][key], atol=1e-6), key
    rows = (split / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("step,loss")
    # the exported model folder loads through the container's loader
    model = load_model(split / "model", torch.device("cpu"))
    assert model.spec.patch_size == 16 and json.loads((split / "model" / "model.json").read_text())["name"].endswith("(step 4)")
    for key, value in model.network.state_dict().items():
        assert torch.allclose(value, b["network"][key], atol=2e-2, rtol=1e-2), key


def test_the_log_counts_tile_samples_and_a_tile_trained_model_predicts_in_tiles(tmp_path, monkeypatch):
    monkeypatch.setattr(Model, "probability", coarse_ball)  # the prompting passes: a coarse answer to tile
    config = tiny_config()
    config["prompting"].update(p_no_box=0.0, p_tile=1.0)
    train(tmp_path / "run", config, False, None, 2, SHAPES_ONLY)
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and sum(int(r["tiles"]) for r in rows) >= 1
    assert read_spec(tmp_path / "run" / "model").settings.full_resolution_tiles
    config["prompting"]["p_tile"] = 0.0
    assert not model_spec(config)["full_resolution_tiles"]


def test_a_new_run_can_start_from_a_model_folder_and_records_its_loss_curve(tmp_path):
    config = tiny_config()
    train(tmp_path / "first", copy.deepcopy(config), False, None, 2, SHAPES_ONLY)
    assert (tmp_path / "first" / "loss.png").stat().st_size > 1000
    train(tmp_path / "warm", copy.deepcopy(config), False, None, 0, SHAPES_ONLY, init_from=tmp_path / "first" / "model")
    exported = load_model(tmp_path / "first" / "model", torch.device("cpu")).network.state_dict()
    warm = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=False)["network"]
    cold = torch.load(tmp_path / "first" / "checkpoint.pt", weights_only=False)["network"]
    assert all(torch.equal(warm[k], exported[k]) for k in exported)
    fresh = build_model(config, tmp_path / "fresh").network.state_dict()
    assert any(not torch.allclose(fresh[k], cold[k]) for k in cold if cold[k].is_floating_point())


def test_model_spec_matches_the_shipped_default_model():
    shipped = json.loads((DEFAULT_CONFIG.parent.parent / "model_weights" / "default" / "model.json").read_text())
    spec = model_spec(json.loads(DEFAULT_CONFIG.read_text()))
    for key in ("architecture", "channels", "patch_size", "normalisation", "prompts", "output"):
        assert shipped[key] == spec[key], key


# ----------------------------------------------------------------------------- the trained default model


def test_the_default_model_is_trained_it_segments_an_unseen_object_from_its_box(default_model):
    image, labels = make_volume((40, 96, 96), 2, seed=11)
    truth = labels == 2
    box = first_prompt(TrainingVolume(image, truth, (1.0, 1.0, 1.0), "test"), np.random.default_rng(0), True).box
    case = Case("test", image, (1.0, 1.0, 1.0), [ClassPrompt(1, box=box)])
    segs = predict_case(default_model, case)
    dice = 2 * ((segs == 1) & truth).sum() / ((segs == 1).sum() + truth.sum())
    assert dice > 0.8  # a random network gets ~0 here; filling the box ~0.5


# ----------------------------------------------------------------------------- floors


def test_calibration_ranks_offsets_by_their_scores_and_writes_the_chosen_one(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(REPO / "demo" / "inputs" / "CT_demo_box.npz", cases)  # it carries its gts
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder)
    model = load_model(folder, torch.device("cpu"), backend="auto")
    table = calibrate(model, sorted(cases.glob("*.npz")), {"box": [-30.0, 0.0]}, tmp_path / "work")
    (best, best_scores), (worst, worst_scores) = table["box"]
    assert model.spec.settings.logit_offset == read_spec(folder).settings.logit_offset  # the offsets tried are not left behind
    assert (best, worst) == (0.0, -30.0)  # -30: nothing but the clicked voxels is foreground
    assert best_scores["DSC_AUC"] > 2.0 > worst_scores["DSC_AUC"]
    before = read_spec(folder).settings.logit_offset
    write_offsets(folder, {"box": 0.75})
    assert read_spec(folder).settings.logit_offset == {**before, "box": 0.75}  # the other settings kept
    assert json.loads((folder / "model.json").read_text())["patch_size"] == model.spec.patch_size  # the rest kept


def test_floors_fill_boxes_and_paint_balls_at_fg_clicks(tmp_path):
    image, labels = make_volume((20, 40, 40), 1, seed=2)
    box = first_prompt(TrainingVolume(image, labels == 1, (1.0, 1.0, 1.0), "t"), np.random.default_rng(0), True).box
    case = Case("c", image, (1.0, 1.0, 1.0),
                [ClassPrompt(1, box=box, fg=np.array([[10, 20, 20]]), order=("fg",))])
    filled = floors.box_fill(case)
    assert filled[box.lo[0]:box.hi[0] + 1, box.lo[1]:box.hi[1] + 1, box.lo[2]:box.hi[2] + 1].all()
    assert filled.sum() == np.prod(np.asarray(box.hi) - np.asarray(box.lo) + 1)
    balls = floors.click_balls(case)
    assert balls[10, 20, 20] == 1 and balls[10, 20, 25] == 1 and balls[10, 20, 26] == 0
    assert balls.sum() == int((floors.ball_template(floors.BALL_RADIUS, "binary") > 0).sum())
