"""Tests for training on real labelled cases: reading, bad data, preparation, split, sampling, the CLI."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.case_io import ClassPrompt
from inference.field_of_view import FieldOfView, fit
from inference.harness.convert_nifti import convert_pair
from inference.normalisation import METHODS, intensity_stats
from inference.class_task import prepare
from inference.geometry import region_of
from training.label_maps import LabelSources
from training.real_cases import (PREPARED, VALIDATION, CaseProblem, NoUsableCase, load_real_cases, prepare_folder,
                                 read_training_npz, split_of)
from training.samples import (Recipe, TrainingVolume, as_case, autozoom_views, draw_samples, draw_volume,
                              prepared_volume, prompted_sample, real_region)
from training.train import DEFAULT_CONFIG, build_model
from training_cases import labelled_volume, write_training_case, write_training_cases

REPO = Path(__file__).resolve().parent.parent
ALL_TRAINING = 0.0  # validation_fraction that keeps every case for training


def tiny_config() -> dict:
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["model"].update(features=[4, 8, 16], blocks=[1, 1, 1], patch_size=16)
    config["batch_size"], config["threads"] = 2, 1
    return config


# ----------------------------------------------------------------------------- reading and preparing


def test_a_prepared_case_holds_the_arrays_label_boxes_and_whole_image_statistics(tmp_path):
    imgs, gts = labelled_volume((20, 30, 36), 3, seed=1)
    write_training_case(tmp_path / "CT_a.npz", imgs, gts, spacing_xyz=(0.8, 0.9, 2.5))
    (case,), held_out = prepare_folder(tmp_path, ALL_TRAINING, verbose=False)
    assert held_out == [] and case.name == "CT_a" and case.shape == imgs.shape
    assert case.spacing == (2.5, 0.9, 0.8)  # array order (z, y, x): the file stores (x, y, z)
    assert sorted(case.labels) == [1, 2, 3]
    for label, extent in case.labels.items():
        where = np.nonzero(gts == label)
        assert extent.voxels == len(where[0])
        assert extent.region == region_of([w.min() for w in where], [w.max() for w in where])
    for method in METHODS:
        assert case.intensity[method] == pytest.approx(intensity_stats(imgs, method))
    image, labels = case.read([[2, 9], [0, 30], [5, 6]])
    assert np.array_equal(image, imgs[2:9, :, 5:6]) and np.array_equal(labels, gts[2:9, :, 5:6])
    # the arrays are plain .npy files: memory-mapped, a crop reads only its pages
    assert isinstance(np.load(case.folder / "imgs.npy", mmap_mode="r"), np.memmap)


def test_a_case_is_prepared_once_and_again_when_its_file_changes(tmp_path, capsys):
    write_training_cases(tmp_path, count=1)
    prepare_folder(tmp_path, ALL_TRAINING)
    assert "prepared CT_case_0" in capsys.readouterr().out
    prepare_folder(tmp_path, ALL_TRAINING)
    assert "prepared" not in capsys.readouterr().out
    imgs, gts = labelled_volume((16, 20, 20), 1, seed=5)
    write_training_case(tmp_path / "CT_case_0.npz", imgs, gts)
    os.utime(tmp_path / "CT_case_0.npz", ns=(1, 1))  # a different file, whatever the clock's resolution
    (case,), _ = prepare_folder(tmp_path, ALL_TRAINING)
    assert "prepared CT_case_0" in capsys.readouterr().out and case.shape == (16, 20, 20)


def test_the_split_is_by_case_name_and_does_not_move_when_cases_are_added(tmp_path):
    names = [f"MR_case_{i}" for i in range(400)]
    held_out = {n for n in names if split_of(n, 0.1) == VALIDATION}
    assert 20 < len(held_out) < 60  # about a tenth
    assert held_out == {n for n in names if split_of(n, 0.1) == VALIDATION}  # deterministic
    write_training_cases(tmp_path, count=12, shape=(12, 16, 16), n_labels=1)
    cases, validation = prepare_folder(tmp_path, 0.3, verbose=False)
    names = [f"CT_case_{i}" for i in range(12)]
    assert sorted(validation) == sorted(n for n in names if split_of(n, 0.3) == VALIDATION)
    assert {c.name for c in cases}.isdisjoint(validation) and len(cases) + len(validation) == 12
    # the held-out cases are linked for the harness, the training ones are not there
    linked = sorted(p.stem for p in (tmp_path / PREPARED / VALIDATION).glob("*.npz"))
    assert linked == sorted(validation)
    read_training_npz(tmp_path / PREPARED / VALIDATION / f"{validation[0]}.npz")


def test_every_label_of_a_case_is_a_target_as_the_evaluator_counts_classes(tmp_path):
    imgs, gts = labelled_volume((16, 24, 24), 2, seed=2)
    gts[gts == 2] = 7  # label numbers need not be consecutive
    write_training_case(tmp_path / "MR_gap.npz", imgs, gts, boxes=False)  # boxes are optional
    (case,), _ = prepare_folder(tmp_path, ALL_TRAINING, verbose=False)
    assert sorted(case.labels) == [1, 7]


def test_nifti_pairs_are_read_through_the_harness_converter(tmp_path):
    nib = pytest.importorskip("nibabel")
    imgs, gts = labelled_volume((12, 20, 24), 2, seed=3)
    data = tmp_path / "dataset"
    for folder, name, array in (("imagesTr", "brain_0000.nii.gz", imgs.astype(np.float32) * 3 + 100),
                                ("labelsTr", "brain.nii.gz", gts)):
        (data / folder).mkdir(parents=True)
        nifti = nib.Nifti1Image(array.transpose(2, 1, 0), np.diag([0.7, 0.8, 2.0, 1.0]))
        nib.save(nifti, str(data / folder / name))
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}}))
    (case,), _ = prepare_folder(data, ALL_TRAINING, verbose=False)
    expected = np.load(convert_pair(data / "imagesTr" / "brain_0000.nii.gz", data / "labelsTr" / "brain.nii.gz",
                                    tmp_path / "converted", "MR"))
    assert case.name == "MR_brain" and case.spacing == pytest.approx((2.0, 0.8, 0.7))
    image, labels = case.read([[0, n] for n in case.shape])
    assert np.array_equal(image, expected["imgs"]) and np.array_equal(labels, expected["gts"])


# ----------------------------------------------------------------------------- bad data


def unreadable(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")


def missing_gts(path: Path) -> None:
    imgs, _ = labelled_volume((8, 12, 12), 1, seed=0)
    np.savez_compressed(path, imgs=imgs, spacing=np.ones(3))


def shape_mismatch(path: Path) -> None:
    imgs, gts = labelled_volume((8, 12, 12), 1, seed=0)
    np.savez_compressed(path, imgs=imgs, gts=gts[:, :10], spacing=np.ones(3))


def empty_labels(path: Path) -> None:
    imgs, gts = labelled_volume((8, 12, 12), 1, seed=0)
    np.savez_compressed(path, imgs=imgs, gts=np.zeros_like(gts), spacing=np.ones(3))


def nan_image(path: Path) -> None:
    imgs, gts = labelled_volume((8, 12, 12), 1, seed=0)
    image = imgs.astype(np.float32)
    image[3, 4, 5] = np.nan
    np.savez_compressed(path, imgs=image, gts=gts, spacing=np.ones(3))


BAD = {unreadable: "unreadable", missing_gts: "'gts'", shape_mismatch: "shape", empty_labels: "no labelled voxel",
       nan_image: "NaN"}


@pytest.mark.parametrize("make", list(BAD), ids=[f.__name__ for f in BAD])
def test_a_bad_case_is_skipped_with_one_line_naming_its_file_and_the_rest_go_on(tmp_path, capsys, make):
    write_training_cases(tmp_path, count=2, shape=(12, 16, 16), n_labels=1)
    bad = tmp_path / "CT_bad.npz"
    make(bad)
    with pytest.raises(CaseProblem, match=BAD[make]):
        read_training_npz(bad)
    cases, _ = prepare_folder(tmp_path, ALL_TRAINING, verbose=False)
    assert sorted(c.name for c in cases) == ["CT_case_0", "CT_case_1"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and BAD[make] in err[0] and err[0].startswith("skipped")
    assert not (tmp_path / PREPARED / "CT_bad").exists()


def test_images_that_are_not_uint8_are_mapped_to_it(tmp_path):
    imgs, gts = labelled_volume((8, 12, 12), 1, seed=0)
    np.savez_compressed(tmp_path / "in_range.npz", imgs=imgs.astype(np.float64), gts=gts, spacing=np.ones(3))
    hounsfield = imgs.astype(np.int16) * 10 - 1000
    np.savez_compressed(tmp_path / "hounsfield.npz", imgs=hounsfield, gts=gts, spacing=np.ones(3))
    assert np.array_equal(read_training_npz(tmp_path / "in_range.npz")[0], imgs)
    mapped = read_training_npz(tmp_path / "hounsfield.npz")[0]
    assert mapped.dtype == np.uint8 and mapped.max() == 255


def test_several_folders_add_their_cases_and_a_missing_folder_is_one_line(tmp_path, capsys):
    write_training_cases(tmp_path / "a", count=2, shape=(12, 16, 16), n_labels=1)
    imgs, gts = labelled_volume((12, 16, 16), 2, seed=9)
    write_training_case(tmp_path / "b" / "MR_other.npz", imgs, gts)
    real = load_real_cases([tmp_path / "a", tmp_path / "b", tmp_path / "nowhere"], ALL_TRAINING, verbose=False)
    assert sorted(c.name for c in real.cases) == ["CT_case_0", "CT_case_1", "MR_other"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"skipped {tmp_path / 'nowhere'}: not a folder"]


def test_a_nifti_pair_the_converter_refuses_is_one_line(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    for folder, name, shape in (("imagesTr", "x_0000.nii.gz", (8, 8, 8)), ("labelsTr", "x.nii.gz", (8, 8, 6))):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.uint8), np.eye(4)), str(tmp_path / folder / name))
    with pytest.raises(NoUsableCase):
        load_real_cases([tmp_path], ALL_TRAINING)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x_0000.nii.gz" in err[0] and "x.nii.gz" in err[0] and "shape" in err[0]


def test_a_run_with_no_usable_case_stops_with_one_message(tmp_path):
    empty_labels(tmp_path / "CT_only.npz")
    with pytest.raises(NoUsableCase, match="no usable training case"):
        load_real_cases([tmp_path], ALL_TRAINING)
    result = subprocess.run([sys.executable, "-m", "training.train", str(tmp_path / "run"), "--data", str(tmp_path),
                             "--steps", "1", "--device", "cpu"], check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert lines[-1].startswith("training.train: no usable training case") and str(tmp_path) in lines[-1]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- sampling


def real_sources(tmp_path: Path, shape=(24, 40, 40), n_labels=2, count=2) -> LabelSources:
    write_training_cases(tmp_path / "data", count=count, shape=shape, n_labels=n_labels)
    return LabelSources(real=load_real_cases([tmp_path / "data"], ALL_TRAINING, verbose=False))


def test_p_real_mixes_real_and_synthetic_volumes_and_without_real_cases_the_stream_is_unchanged(tmp_path):
    sources = real_sources(tmp_path)
    recipe = Recipe(max_side=40, min_side=24)
    mixed = replace(recipe, p_real=0.5)
    kinds = [draw_volume(np.random.default_rng(i), sources, mixed, 16, 4).source for i in range(20)]
    assert 4 <= kinds.count("real") <= 16 and set(kinds) == {"real", "shapes"}
    assert all(draw_volume(np.random.default_rng(i), sources, replace(recipe, p_real=1.0), 16, 4).source == "real"
               for i in range(5))
    for seed in range(3):  # p_real is not drawn when there are no real cases: synthetic runs draw as before
        a = draw_volume(np.random.default_rng(seed), LabelSources(), recipe)
        b = draw_volume(np.random.default_rng(seed), replace(sources, real=None), replace(recipe, p_real=1.0))
        assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)


def test_real_cases_travel_to_feed_workers_as_file_references(tmp_path):
    sources = real_sources(tmp_path)
    sent = pickle.dumps(sources)  # what WorkerFeed hands its spawned processes
    assert len(sent) < 10_000  # no voxels: workers map the prepared arrays themselves
    a = draw_volume(np.random.default_rng(1), sources, Recipe(p_real=1.0), 16, 4)
    b = draw_volume(np.random.default_rng(1), pickle.loads(sent), Recipe(p_real=1.0), 16, 4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.truth, b.truth)


def test_a_real_volume_is_a_crop_around_a_label_of_the_case(tmp_path):
    sources = real_sources(tmp_path, shape=(24, 80, 90), n_labels=3)
    recipe = Recipe(p_real=1.0, p_real_union=0.0)
    for seed in range(6):
        volume = draw_volume(np.random.default_rng(seed), sources, recipe, 16, 8.0)  # no cap: 128 a side
        case = next(c for c in sources.real.cases if volume.intensity is c.intensity)
        label = int(volume.labels[np.unravel_index(np.argmax(volume.truth), volume.truth.shape)])
        extent = case.labels[label]
        assert np.array_equal(volume.truth, volume.labels == label) and volume.truth.sum() == extent.voxels
        assert volume.spacing == case.spacing and volume.source == "real"
        # the target and a patch around it, where the case has room
        assert all(n == min(hi + 16, size) - max(lo - 16, 0)
                   for n, (lo, hi), size in zip(volume.image.shape, extent.region, case.shape))


def test_the_union_target_is_every_label_of_the_case_as_one(tmp_path):
    sources = real_sources(tmp_path, n_labels=3)
    volume = draw_volume(np.random.default_rng(0), sources, Recipe(p_real=1.0, p_real_union=1.0), 96, 4)
    assert np.array_equal(volume.truth, volume.labels > 0) and len(np.unique(volume.labels)) == 4


def test_the_region_a_sample_reads_is_bounded_whatever_the_case_size():
    shape = (1000, 512, 512)
    small = real_region([[500, 510], [200, 210], [200, 210]], shape, 96, 4)
    assert small == [[404, 606], [104, 306], [104, 306]]
    whole = real_region([[0, 1000], [0, 512], [0, 512]], shape, 96, 4)
    assert all(b - a <= 384 for a, b in whole)  # the widest field of view: 96 x 4
    assert whole[0] == [308, 692]  # centred on the target
    edge = real_region([[0, 4], [0, 4], [0, 4]], shape, 96, 4)
    assert edge == [[0, 100]] * 3


def test_a_real_crop_is_normalised_with_its_whole_case_statistics(tmp_path):
    imgs, gts = labelled_volume((24, 64, 64), 1, seed=4)
    imgs[:, :, :20] = 250  # bright where no crop of the label reaches: a crop's own statistics would differ
    write_training_case(tmp_path / "data" / "MR_x.npz", imgs, gts)
    sources = LabelSources(real=load_real_cases([tmp_path / "data"], ALL_TRAINING, verbose=False))
    model = build_model(tiny_config(), tmp_path / "m")
    volume = draw_volume(np.random.default_rng(0), sources, Recipe(p_real=1.0), 8, 1.0)
    assert volume.image.shape[2] < 64
    prompt = ClassPrompt(1)
    whole = prepare(as_case(replace(volume, image=imgs, intensity=None), prompt, None), model)
    crop = prepared_volume(model, volume, prompt, None)
    own = prepare(as_case(volume, prompt, None), model)
    assert (crop.mean, crop.std) == pytest.approx((whole.mean, whole.std))
    assert abs(own.mean - whole.mean) > 1


def big_ball_volume(shape=(64, 64, 64), radius=28) -> TrainingVolume:
    grid = np.indices(shape)
    truth = ((grid - np.array(shape)[:, None, None, None] // 2) ** 2).sum(0) <= radius ** 2
    image = np.where(truth, 200, 30).astype(np.uint8)
    return TrainingVolume(image, truth, (1.0, 1.0, 1.0), "test", truth.astype(np.uint16))


def test_autozoom_views_zoom_out_like_the_container_until_the_object_fits():
    volume = big_ball_volume()
    first = fit(region_of((32, 32, 32), (32, 32, 32)), 16)  # one click in the middle, patch 16
    views = autozoom_views(first, volume.truth, 4.0)
    assert [round(v.zoom, 3) for v in views] == [1.0, 1.5, 2.25, 3.375, 4.0]  # the ball (57 voxels) never fits 64
    assert [round(v.zoom, 3) for v in autozoom_views(first, volume.truth, 3.0)] == [1.0, 1.5, 2.25, 3.0]
    small = np.zeros((64, 64, 64), dtype=bool)
    small[30:35, 30:35, 30:35] = True
    assert len(autozoom_views(first, small, 4.0)) == 1
    fits_at_two = np.zeros((64, 64, 64), dtype=bool)
    fits_at_two[22:42, 22:42, 22:42] = True  # 20 voxels: over a 16 patch, inside 24 (zoom 1.5) with a margin
    assert [round(v.zoom, 3) for v in autozoom_views(first, fits_at_two, 4.0)] == [1.0, 1.5]
    assert isinstance(views[-1], FieldOfView)


def test_one_click_samples_of_a_large_object_are_seen_at_the_containers_zooms(tmp_path):
    model = build_model(tiny_config(), tmp_path / "m")
    volume = big_ball_volume()
    prompting = {"p_no_box": 1.0, "p_single_pass": 1.0, "click_rounds": [1], "click_round_weights": [1],
                 "p_autozoom": 1.0}
    fractions = []
    for seed in range(12):
        sample = prompted_sample(model, volume, np.random.default_rng(seed), prompting)
        assert sample.no_box and not sample.tile
        fractions.append(float(sample.target.mean()))
    # at zoom 1 the ball fills the patch to its border; zoomed out it fills less of it
    assert max(fractions) > 0.99 and min(fractions) < 0.6
    prompting["p_autozoom"] = 0.0
    assert all(float(prompted_sample(model, volume, np.random.default_rng(s), prompting).target.mean()) > 0.99
               for s in range(3))


def test_real_samples_go_through_the_same_prompting_recipe(tmp_path):
    sources = real_sources(tmp_path)
    config = tiny_config()
    model = build_model(config, tmp_path / "m")
    recipe = Recipe.from_config(config["data"] | {"p_real": 1.0})
    prompting = config["prompting"] | {"p_single_pass": 0.0, "p_corrupt_prev": 0.0, "p_tile": 0.0}
    samples = draw_samples(model, sources, recipe, prompting, 0, 3, 0, 2)
    assert len(samples) == 2 and all(s.x.shape == (5, 16, 16, 16) for s in samples)
    assert all(s.rounds >= 1 for s in samples)  # clicks from the model's own errors
    again = draw_samples(model, sources, recipe, prompting, 0, 3, 0, 2)
    assert all(torch.equal(a.x, b.x) for a, b in zip(samples, again))


# ----------------------------------------------------------------------------- the command line, end to end


def test_a_few_steps_on_challenge_cases_from_the_default_model_give_a_model_predict_sh_loads(tmp_path, run_predict_sh):
    data = tmp_path / "data"
    write_training_cases(data, count=3, shape=(24, 48, 48), n_labels=2)
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["model"]["patch_size"] = 64  # the default network's 5 poolings need 32 at least; 64 keeps a step short
    config["batch_size"] = 2
    config["data"].update(p_real=1.0, validation_fraction=0.0)
    config["prompting"].update(p_single_pass=1.0, p_tile=0.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "training.train", str(run), "--data", str(data), "--config",
                             str(tmp_path / "config.json"), "--init-from", str(REPO / "model_weights" / "default"),
                             "--steps", "2", "--device", "cpu"], check=False, cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 training cases" in result.stdout and "initialised from" in result.stdout
    assert (run / "model" / "model.json").exists() and len((run / "log.csv").read_text().splitlines()) == 3
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    with np.load(data / "CT_case_0.npz", allow_pickle=True) as npz:
        np.savez_compressed(inputs / "CT_case_0.npz", imgs=npz["imgs"], spacing=npz["spacing"], boxes=npz["boxes"])
        gts = npz["gts"]
    answer = run_predict_sh(inputs, outputs, "--model", run / "model")
    assert answer.returncode == 0, answer.stderr[-2000:]
    with np.load(outputs / "CT_case_0.npz") as npz:
        segs = npz["segs"]
    assert segs.shape == gts.shape and set(np.unique(segs)) <= {0, 1, 2} and (segs > 0).any()
