"""The time budget: shares per call, the ledger, degradation steps, out-of-memory retries, the watchdog."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import budget
from inference.budget import CallBudget, LEDGER_FILE, read_ledger, record_call, share_seconds
from inference.case_io import read_case
from inference.fusion import fuse_classes, MaskProbability
from inference.model import Model
from inference.predict import choose_effort, predict_case
from inference.class_task import Effort
from scripts.synthetic_cases import case_arrays, make_volume, write_case

REPO = Path(__file__).resolve().parent.parent
IMPORTED = time.monotonic()  # this process started before pytest got here


@pytest.fixture
def no_container_start(monkeypatch):
    monkeypatch.setenv(budget.CONTAINER_START_ENV, "0")


def test_a_fresh_case_splits_its_budget_evenly(no_container_start):
    assert share_seconds(1, True, 0, {}) == pytest.approx(90 / 6 * budget.SAFETY)
    assert share_seconds(2, False, 1, {}) == pytest.approx(180 / 5 * budget.SAFETY)
    assert share_seconds(3, True, 5, {}) == pytest.approx(270 / 6 * budget.SAFETY)  # unknown history: fair shares


def test_time_saved_by_earlier_calls_goes_to_the_later_ones(no_container_start):
    quick = {0: 2.0, 1: 2.0, 2: 2.0}
    assert share_seconds(1, True, 3, quick) == pytest.approx((90 - 6) / 3 * budget.SAFETY)
    slow = {0: 40.0, 1: 30.0}
    assert share_seconds(1, True, 2, slow) == pytest.approx((90 - 70) / 4 * budget.SAFETY)


def test_container_start_is_charged_to_every_call(monkeypatch):
    monkeypatch.setenv(budget.CONTAINER_START_ENV, "3")
    assert share_seconds(1, True, 0, {}) == pytest.approx(90 / 6 * budget.SAFETY - 3)
    assert share_seconds(1, True, 2, {0: 5.0, 1: 5.0}) == pytest.approx((90 - 16) / 4 * budget.SAFETY - 3)


def test_ledger_round_trip_staleness_and_corruption(tmp_path):
    record_call(tmp_path, "CT_a.npz", "fp", 0, 3.0)
    record_call(tmp_path, "CT_a.npz", "fp", 1, 4.5)
    record_call(tmp_path, "MR_b.npz", "other", 0, 9.0)
    assert read_ledger(tmp_path, "CT_a.npz", "fp") == {0: 3.0, 1: 4.5}
    assert read_ledger(tmp_path, "CT_a.npz", "changed") == {}  # another case with the same name
    record_call(tmp_path, "CT_a.npz", "fp", 1, 6.0)  # a rerun of call 1 replaces it and drops later calls
    assert read_ledger(tmp_path, "CT_a.npz", "fp") == {0: 3.0, 1: 6.0}
    record_call(tmp_path, "CT_a.npz", "fp", 0, 1.0)  # a new run of the case starts afresh
    assert read_ledger(tmp_path, "CT_a.npz", "fp") == {0: 1.0}
    assert read_ledger(tmp_path, "MR_b.npz", "other") == {0: 9.0}
    (tmp_path / LEDGER_FILE).write_text("{not json")
    assert read_ledger(tmp_path, "CT_a.npz", "fp") == {}
    record_call(tmp_path, "CT_a.npz", "fp", 2, 2.0)
    assert read_ledger(tmp_path, "CT_a.npz", "fp") == {2: 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILE]


def test_process_start_is_read_from_proc_not_taken_as_now():
    started = budget.process_started()
    assert started < IMPORTED  # the fallback, "now", would be later than this module's import
    assert IMPORTED - started < 24 * 3600


def test_effort_degrades_in_steps(default_model):
    patch = default_model.spec.patch_size
    full = choose_effort(default_model, 100.0, 2.0, has_box=False)
    assert full.patch == patch and full.max_passes > 1
    assert full.refine_boundary
    # no AutoZoom, no boundary refinement
    assert choose_effort(default_model, 3.0, 2.0, has_box=False) == Effort(patch, max_passes=1, refine_boundary=False)
    smaller = choose_effort(default_model, 1.0, 2.0, has_box=True)  # one pass on a smaller patch
    assert smaller.max_passes == 1 and patch // 3 <= smaller.patch <= patch // 2 and not smaller.refine_boundary
    assert smaller.patch % default_model.divisor == 0
    assert choose_effort(default_model, 0.1, 2.0, has_box=True) is None  # keep the previous prediction
    assert choose_effort(default_model, 0.1, None, has_box=True).patch == patch  # nothing measured yet


def three_class_case(tmp_path, **kwargs):
    image, labels = make_volume((24, 64, 64), n_objects=3, seed=3)
    prev = labels.copy()
    return read_case(write_case(tmp_path / "CT_c.npz", case_arrays(image, labels, rounds=1, prev_pred=prev))), labels


def test_a_slow_model_keeps_the_previous_prediction_for_classes_it_cannot_reach(tmp_path, default_model,
                                                                                 monkeypatch, capsys):
    case, labels = three_class_case(tmp_path)
    real = Model.probability

    def slow(self, x, offset=0.0):
        time.sleep(3.0)
        return real(self, x, offset)

    monkeypatch.setattr(Model, "probability", slow)
    # ~3.1 s a pass: after two classes under 0.5 s is left (1 s is the finishing reserve), less than even a
    # half-patch pass (1/6 of a pass) needs, whatever the real forward pass adds to the sleep
    segs = predict_case(default_model, case, CallBudget(time.monotonic(), 6.6 + 1.0))
    log = capsys.readouterr().err
    assert "budget:" in log and "kept previous/box" in log
    assert np.array_equal(segs == 3, labels == 3)  # class 3 not reached: its previous prediction stands


def test_out_of_memory_retries_at_a_smaller_patch(tmp_path, default_model, monkeypatch, capsys):
    case, _ = three_class_case(tmp_path)
    real = Model.probability
    sizes = []

    def oom_once(self, x, offset=0.0):
        sizes.append(x.shape[-1])
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, x, offset)

    monkeypatch.setattr(Model, "probability", oom_once)
    predict_case(default_model, case)
    patch = default_model.spec.patch_size
    # failed at full patch, retried at a smaller one the network divides by, the next class back at full
    assert sizes[0] == sizes[2] == patch and sizes[1] < patch and sizes[1] % default_model.divisor == 0
    assert f"retrying at {sizes[1]}" in capsys.readouterr().err


def test_more_than_255_classes_are_written_as_uint16():
    classes = [MaskProbability(label, [[0, 2], [0, 2], [label % 4, label % 4 + 1]]) for label in (1, 300)]
    segs = fuse_classes((2, 2, 4), classes)
    assert segs.dtype == np.uint16 and segs.max() == 300
    assert fuse_classes((2, 2, 4), classes[:1]).dtype == np.uint8


WATCHDOG_RUN = """
import sys, time
from inference.model import Model
Model.probability = lambda self, x, offset=0.0: time.sleep(600)  # a forward pass that hangs
from inference.predict import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_watchdog_answers_before_the_deadline_when_a_forward_pass_hangs(tmp_path):
    image, labels = make_volume((16, 48, 48), n_objects=2, seed=4)
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    write_case(inputs / "CT_a.npz", case_arrays(image, labels, boxes=True))
    write_case(inputs / "CT_b.npz", case_arrays(image, labels, boxes=True))
    np.savez(inputs / "CT_c.npz", imgs=np.zeros((2, 4, 5, 6), np.uint8))  # read but refused: true 4D
    # 2 classes, box call: share = 180/6 * SAFETY - start; choose start so that about 6 s remain
    start = 180 / 6 * budget.SAFETY - 6.0
    env = {**os.environ, budget.CONTAINER_START_ENV: str(start), "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-c", WATCHDOG_RUN, str(inputs), str(outputs)], env=env,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert result.returncode == 4, result.stderr
    assert elapsed < 6.0 + 3.0  # it did not wait for the hanging forward pass
    assert "deadline reached" in result.stderr
    for name in ("CT_a.npz", "CT_b.npz"):  # the stuck case and the one after it both got answers
        with np.load(outputs / name) as npz:
            segs = npz["segs"]
        assert segs.shape == image.shape and segs.dtype == np.uint8
        box = case_arrays(image, labels)["boxes"][0]
        assert (segs[box["z_min"]:box["z_max"] + 1, box["z_mid_y_min"]:box["z_mid_y_max"] + 1,
                     box["z_mid_x_min"]:box["z_mid_x_max"] + 1] > 0).all()  # the box fallback
    with np.load(outputs / "CT_c.npz") as npz:  # refused images still get zeros of their stored shape
        assert npz["segs"].shape == (2, 4, 5, 6) and not npz["segs"].any()
    assert not [p for p in outputs.iterdir() if p.name.endswith(".tmp")]


def test_single_case_calls_exit_cleanly_with_the_watchdog_armed(tmp_path, run_predict_sh):
    """The watchdog timer is joined: no 'terminate called' abort (exit 134) after the answer."""
    image, labels = make_volume((8, 24, 24), n_objects=1, seed=6)
    write_case(tmp_path / "in" / "CT_a.npz", case_arrays(image, labels, boxes=True))
    for _ in range(3):
        result = run_predict_sh(tmp_path / "in", tmp_path / "out", budget=True)
        assert result.returncode == 0 and "terminate called" not in result.stderr, result.stderr
