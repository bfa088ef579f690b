"""End to end: challenge files in, `sh predict.sh IN OUT` (dash, as the evaluator), label maps out."""
from __future__ import annotations

import numpy as np
import pytest

from inference.budget import LEDGER_FILE
from inference.case_io import read_case
from inference.predict import predict_case
from inference.class_task import prepare
from inference.pipelines import segment_class
from inference.harness.simulated_user import deepest_voxel
from scripts.synthetic_cases import case_arrays, make_volume, write_case


def load_segs(path):
    with np.load(path) as npz:
        assert list(npz.files) == ["segs"]
        return npz["segs"]


@pytest.fixture(scope="module")
def volume():
    return make_volume((32, 72, 80), n_objects=3, seed=5)


def test_the_code_beside_predict_sh_runs_whatever_the_callers_folder_holds(tmp_path, run_predict_sh):
    """Run from another checkout's folder (the harness replaying an older version), python -m inference would
    otherwise find that folder's `inference` first."""
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "__init__.py").write_text("")
    (tmp_path / "inference" / "__main__.py").write_text("raise SystemExit('the wrong inference package ran')\n")
    result = run_predict_sh(tmp_path / "no-such-inputs", tmp_path / "out", cwd=tmp_path)
    assert "the wrong inference package" not in result.stderr
    assert result.returncode == 3 and "does not exist" in result.stderr  # our predict.py's answer


def test_every_call_kind_gets_a_well_formed_answer(tmp_path, run_predict_sh, volume):
    image, labels = volume
    prev = np.where(labels == 2, 2, 0).astype(np.uint8)
    done = case_arrays(image, labels, boxes=True, rounds=1, prev_pred=labels.copy())
    done["clicks_order"] = np.array([["fg", None], ["fg", None], ["fg", "fg"]], dtype=object)
    cases = {
        "CT_box.npz": case_arrays(image, labels, boxes=True),
        "MR_nobox.npz": case_arrays(image[:, :, :40], labels[:, :, :40] * (labels[:, :, :40] == 1), boxes=False,
                                    rounds=1),
        "CT_round2.npz": case_arrays(image, labels, boxes=True, rounds=2, prev_pred=prev),
        "CT_done.npz": done,
    }
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    for name, arrays in cases.items():
        write_case(inputs / name, arrays)

    result = run_predict_sh(inputs, outputs)

    assert result.returncode == 0, result.stderr
    # nothing else but the budget ledger: no temporary files
    assert sorted(p.name for p in outputs.iterdir() if p.name != LEDGER_FILE) == sorted(cases)
    for name, arrays in cases.items():
        segs = load_segs(outputs / name)
        assert segs.shape == arrays["imgs"].shape and segs.dtype == np.uint8
        n_classes = len(arrays.get("boxes", arrays.get("clicks")))
        assert set(np.unique(segs)) <= set(range(n_classes + 1))
        progress = [line for line in result.stderr.splitlines() if line.startswith(f"[{name}] class ")]
        assert len(progress) == n_classes
    kept = load_segs(outputs / "CT_done.npz")
    for label in (1, 2):  # classes with nothing left to fix keep their previous prediction exactly
        assert np.array_equal(kept == label, labels == label)
    assert "kept" in result.stderr


def test_a_click_inside_an_object_changes_the_answer_there(tmp_path, run_predict_sh, volume):
    image, labels = volume
    before_dir, after_dir = tmp_path / "in0", tmp_path / "in1"
    write_case(before_dir / "CT_case.npz", case_arrays(image, labels, boxes=True))
    first = run_predict_sh(before_dir, tmp_path / "out0")
    assert first.returncode == 0, first.stderr
    before = load_segs(tmp_path / "out0" / "CT_case.npz")

    # the simulated user's rule: click the deepest voxel of the largest error of class 1
    wrong = (labels == 1) & (before != 1)
    kind = "fg" if wrong.any() else "bg"
    error = wrong if wrong.any() else (labels != 1) & (before == 1)
    assert error.any()
    click = deepest_voxel(error)
    arrays = case_arrays(image, labels, boxes=True, rounds=1, prev_pred=before)
    arrays["clicks"][0] = {"fg": [click] if kind == "fg" else [], "bg": [click] if kind == "bg" else []}
    arrays["clicks_order"][0] = [kind]
    write_case(after_dir / "CT_case.npz", arrays)
    second = run_predict_sh(after_dir, tmp_path / "out1")
    assert second.returncode == 0, second.stderr
    after = load_segs(tmp_path / "out1" / "CT_case.npz")

    assert (after[tuple(click)] == 1) == (kind == "fg")
    assert (before[tuple(click)] == 1) != (after[tuple(click)] == 1)


def test_the_network_sees_the_click(tmp_path, default_model, volume):
    """Not only the final label: the class probability around the click changes."""
    image, labels = volume
    plain = write_case(tmp_path / "a.npz", case_arrays(image, labels, boxes=True, rounds=1))
    clicked = case_arrays(image, labels, boxes=True, rounds=1)
    centre = deepest_voxel(labels == 1)
    clicked["clicks"][0] = {"fg": [], "bg": [centre]}
    clicked["clicks_order"][0] = ["bg"]
    case_a, case_b = read_case(plain), read_case(write_case(tmp_path / "b.npz", clicked))

    out_a = segment_class(default_model, prepare(case_a, default_model), case_a.prompts[0]).probability
    out_b = segment_class(default_model, prepare(case_b, default_model), case_b.prompts[0]).probability
    # compared in volume coordinates: the answer may be a patch or a refined block of the volume
    near = [[int(c) - 3, int(c) + 4] for c in centre]
    assert out_a.region(labels.shape) == out_b.region(labels.shape)
    assert not np.allclose(out_a.values(near).numpy(), out_b.values(near).numpy(), atol=1e-3)


def test_a_broken_file_does_not_stop_the_batch(tmp_path, run_predict_sh, volume):
    image, labels = volume
    inputs = tmp_path / "in"
    write_case(inputs / "CT_good.npz", case_arrays(image, labels, boxes=True))
    (inputs / "CT_broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (inputs / "notes.txt").write_text("not a case")

    result = run_predict_sh(inputs, tmp_path / "out", budget=True)

    assert result.returncode == 1
    assert (tmp_path / "out" / LEDGER_FILE).is_file() and "budget: call 1 of 6" in result.stderr
    assert load_segs(tmp_path / "out" / "CT_good.npz").shape == image.shape
    assert not (tmp_path / "out" / "CT_broken.npz").exists()
    errors = [line for line in result.stderr.splitlines() if "CT_broken.npz" in line]
    assert len(errors) == 1 and "ERROR" in errors[0]


def test_without_a_usable_model_every_case_still_gets_its_fallback(tmp_path, run_predict_sh, volume):
    image, labels = volume
    inputs = tmp_path / "in"
    write_case(inputs / "CT_box.npz", case_arrays(image, labels, boxes=True))
    prev = np.where(labels == 3, 3, 0).astype(np.uint8)
    write_case(inputs / "CT_prev.npz", case_arrays(image, labels, boxes=True, rounds=1, prev_pred=prev))

    result = run_predict_sh(inputs, tmp_path / "out", "--model", tmp_path / "missing")

    assert result.returncode == 2
    assert "cannot load model" in result.stderr
    boxed = load_segs(tmp_path / "out" / "CT_box.npz")
    box = case_arrays(image, labels)["boxes"][0]
    assert (boxed[box["z_min"]:box["z_max"] + 1, box["z_mid_y_min"]:box["z_mid_y_max"] + 1,
                  box["z_mid_x_min"]:box["z_mid_x_max"] + 1] > 0).all()
    assert np.array_equal(load_segs(tmp_path / "out" / "CT_prev.npz"), prev)


def test_a_failing_class_falls_back_without_failing_the_case(tmp_path, default_model, volume, monkeypatch):
    image, labels = volume
    prev = labels.copy()
    case = read_case(write_case(tmp_path / "c.npz", case_arrays(image, labels, boxes=True, rounds=1, prev_pred=prev)))
    real = type(default_model).probability
    calls = []

    def flaky(self, x, offset=0.0):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, x, offset)

    monkeypatch.setattr(type(default_model), "probability", flaky)
    segs = predict_case(default_model, case)
    assert np.array_equal(segs == 2, labels == 2)  # class 2 failed: its previous prediction stands
    assert segs.shape == image.shape and segs.dtype == np.uint8

