"""Hostile inputs: every corpus file is read into a valid Case or refused in one line, and one
`sh predict.sh` run over the whole corpus answers every file whose image shape is known."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hostile_cases import (
    check_case,
    hostile_cases,
    stored_image_shape,
    write_content,
    write_tiny_model,
)
from inference.case_io import CaseError, UnsupportedImage, display_name, read_case

try:
    from inference.budget import LEDGER_FILE
except ImportError:  # the budget ledger is another change: without it there is no ledger file
    LEDGER_FILE = None

CORPUS = hostile_cases(np.random.default_rng(2025))
NAMES = [name for name, _ in CORPUS]
MANY_CLASSES = ("classes_300_boxes.npz", "classes_300_done.npz")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "inputs"
    folder.mkdir()
    for name, content in CORPUS:
        write_content(folder / name, content)
    return folder


def _read(path):
    """(case, None) or (None, error); anything else than CaseError propagates and fails the test."""
    try:
        return read_case(path), None
    except CaseError as exc:
        return None, exc


# ----------------------------------------------------------------------------- read_case on every file


@pytest.mark.parametrize("name", NAMES)
def test_read_case_returns_a_valid_case_or_a_one_line_case_error(corpus_dir, name, capsys):
    path = corpus_dir / name
    stored = stored_image_shape(path)
    case, error = _read(path)
    if error is not None:
        message = str(error)
        assert message.strip() and "\n" not in message and "\r" not in message
        assert display_name(name) in message, "the message names the file"
        if stored is not None:  # the image was readable: the caller must still answer with its shape
            assert isinstance(error, UnsupportedImage), message
            assert error.file_shape == stored
        else:
            assert not isinstance(error, UnsupportedImage)
    else:
        assert stored is not None, "a case without a readable image cannot be valid"
        check_case(case, stored)
    for line in capsys.readouterr().err.splitlines():  # warnings: one line each, naming the file
        assert line.startswith(f"[{name}] WARNING: "), line


def test_the_corpus_covers_every_outcome(corpus_dir):
    outcomes = {"case": 0, "unsupported": 0, "unreadable": 0}
    for name in NAMES:
        case, error = _read(corpus_dir / name)
        outcomes["case" if case else "unsupported" if isinstance(error, UnsupportedImage) else "unreadable"] += 1
    assert min(outcomes.values()) >= 5, outcomes


# ----------------------------------------------------------------------------- what is kept, what is dropped


@pytest.mark.parametrize("name, warning", [
    ("unpicklable_boxes.npz", "'boxes' cannot be read"),
    ("unpicklable_clicks.npz", "'clicks' cannot be read"),
    ("unpicklable_clicks_order.npz", "'clicks_order' cannot be read"),
    ("truncated_prev_pred_member.npz", "'prev_pred' cannot be read"),
    ("imgs_float64_nan_inf.npz", "non-finite"),
    ("imgs_leading_singleton_4d.npz", "segmented as"),
    ("box_nan.npz", "not a finite number"),
    ("box_string.npz", "not a finite number"),
    ("box_out_of_range.npz", "entirely outside"),
    ("box_not_dict.npz", "not a dict"),
    ("clicks_out_of_bounds.npz", "outside the volume"),
    ("clicks_ragged.npz", "not 3 finite numbers"),
    ("clicks_four_values.npz", "not 3 finite numbers"),
    ("clicks_fg_scalar.npz", "not a list"),
    ("clicks_class_not_dict.npz", "not a dict"),
    ("order_unknown_strings.npz", "counted as None"),
    ("order_longer_than_clicks.npz", "entries for 2 classes"),
    ("prev_wrong_shape.npz", "ignored"),
    ("prev_float_nan.npz", "non-finite"),
    ("prev_negative.npz", "set to 0"),
    ("prev_over_255.npz", "labels above the 2 classes set to 0"),
    ("spacing_strings.npz", "'spacing'"),
])
def test_what_is_dropped_or_repaired_is_said_in_one_warning_line(corpus_dir, capsys, name, warning):
    case = read_case(corpus_dir / name)
    lines = capsys.readouterr().err.splitlines()
    assert any(warning in line for line in lines), lines
    assert all(line.startswith(f"[{name}] WARNING: ") for line in lines), lines
    check_case(case)


def test_lost_prompts_take_their_classes_from_the_previous_prediction(corpus_dir):
    case = read_case(corpus_dir / "unpicklable_prompts.npz")  # boxes and clicks both unreadable
    with np.load(corpus_dir / "unpicklable_prompts.npz", allow_pickle=True) as npz:
        stored = npz["prev_pred"]
    assert int(stored.max()) >= 1
    assert [p.label for p in case.prompts] == list(range(1, int(stored.max()) + 1))
    assert all(p.box is None and len(p.clicks) == 0 for p in case.prompts)
    np.testing.assert_array_equal(case.prev_pred, stored)  # so that each class can fall back on it


def test_an_unreadable_member_costs_only_that_member(corpus_dir):
    no_boxes = read_case(corpus_dir / "unpicklable_boxes.npz")
    no_clicks = read_case(corpus_dir / "unpicklable_clicks.npz")
    no_prev = read_case(corpus_dir / "truncated_prev_pred_member.npz")
    assert not no_boxes.has_boxes and all(len(p.fg) for p in no_boxes.prompts)  # clicks survive
    assert no_boxes.prev_pred is not None
    assert all(p.box is not None and len(p.fg) == 0 for p in no_clicks.prompts)  # boxes survive
    assert no_prev.prev_pred is None and no_prev.has_boxes and all(len(p.fg) for p in no_prev.prompts)


def test_non_finite_intensities_become_zero_and_the_rest_is_kept(corpus_dir):
    with np.load(corpus_dir / "imgs_float64_nan_inf.npz") as npz:
        stored = npz["imgs"]
    image = read_case(corpus_dir / "imgs_float64_nan_inf.npz").image
    bad = ~np.isfinite(stored)
    assert bad.any() and (image[bad] == 0).all()
    np.testing.assert_allclose(image[~bad], stored[~bad])


def test_squeezed_images_keep_the_stored_shape_for_the_answer(corpus_dir):
    four = read_case(corpus_dir / "imgs_leading_singleton_4d.npz")
    assert len(four.file_shape) == 4 and four.file_shape[0] == 1 and four.shape == four.file_shape[1:]
    assert four.prev_pred is not None  # stored in the 3D shape: still usable
    flat = read_case(corpus_dir / "imgs_2d.npz")
    assert flat.shape == (1, *flat.file_shape)
    with pytest.raises(UnsupportedImage) as info:
        read_case(corpus_dir / "imgs_true_4d.npz")
    assert info.value.file_shape[0] == 2 and len(info.value.file_shape) == 4


def test_clicks_are_rounded_and_those_outside_dropped(corpus_dir):
    with np.load(corpus_dir / "clicks_floats.npz", allow_pickle=True) as npz:
        raw = npz["clicks"]
    case = read_case(corpus_dir / "clicks_floats.npz")
    for prompt, entry in zip(case.prompts, raw):
        expected = np.rint(np.asarray(entry["fg"], dtype=float)).astype(np.int64)
        np.testing.assert_array_equal(prompt.fg, expected)
        assert prompt.bg.shape == (0, 3)  # (-0.6, 1, 1) rounds to z = -1: outside


def test_previous_prediction_values_are_repaired(corpus_dir):
    for name in ("prev_float_fractions.npz", "prev_float_nan.npz", "prev_negative.npz", "prev_over_255.npz",
                 "prev_bool.npz", "prev_int64.npz"):
        with np.load(corpus_dir / name) as npz:
            stored = npz["prev_pred"].astype(np.float64)
        case = read_case(corpus_dir / name)
        prev = case.prev_pred
        assert prev is not None and prev.dtype == np.uint8, name
        expected = np.rint(np.nan_to_num(stored, nan=0.0))
        expected[(expected < 0) | (expected > len(case.prompts))] = 0  # no class of that label: background
        np.testing.assert_array_equal(prev, expected, err_msg=name)


def test_more_than_255_classes_keep_every_prompt_and_their_labels(corpus_dir):
    case = read_case(corpus_dir / MANY_CLASSES[0])
    assert [p.label for p in case.prompts] == list(range(1, 301))
    assert case.prompts[299].box is not None
    done = read_case(corpus_dir / "classes_300_done.npz")
    with np.load(corpus_dir / "classes_300_done.npz", allow_pickle=True) as npz:
        stored = npz["prev_pred"]
    assert done.prev_pred.dtype == np.uint16 and int(done.prev_pred.max()) > 255
    np.testing.assert_array_equal(done.prev_pred, stored)  # labels above 255 are not clipped away
    assert all(p.done for p in done.prompts)


def test_zero_classes_is_a_valid_case(corpus_dir):
    for name in ("zero_classes_empty_arrays.npz", "zero_classes_no_prompts.npz"):
        case = read_case(corpus_dir / name)
        assert case.prompts == [] and case.round == 0 and not case.has_boxes


# ----------------------------------------------------------------------------- one predict.sh over everything


@pytest.fixture(scope="module")
def corpus_run(corpus_dir, tmp_path_factory):
    """One `sh predict.sh IN OUT --model TINY` over the whole corpus, as conftest's run_predict_sh runs it."""
    model = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(model)
    outputs = corpus_dir.parent / "outputs"
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(["sh", str(repo / "predict.sh"), str(corpus_dir), str(outputs), "--model", str(model)],
                            cwd=repo.parent, env={**os.environ, "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=300)
    return result, outputs


def _expected(corpus_dir):
    """name -> (stored image shape or None, number of classes or None if refused)."""
    out = {}
    for name in NAMES:
        if not name.endswith(".npz"):
            continue
        case, _ = _read(corpus_dir / name)
        out[name] = (stored_image_shape(corpus_dir / name), len(case.prompts) if case else None)
    return out


def test_predict_sh_answers_every_file_with_a_known_image_shape(corpus_dir, corpus_run):
    result, outputs = corpus_run
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.stderr[-2000:]  # some files had no image at all
    missing, wrong = [], []
    for name, (shape, n) in _expected(corpus_dir).items():
        path = outputs / name
        if shape is None:
            assert not path.exists(), f"{name}: an answer without an image shape to give it"
            continue
        if not path.exists():
            missing.append(name)
            continue
        with np.load(path) as npz:
            assert npz.files == ["segs"], name
            segs = npz["segs"]
        if segs.shape != shape:
            wrong.append(f"{name}: {segs.shape} != {shape}")
        if (n is None or n <= 255) and segs.dtype != np.uint8:  # beyond 255 classes: the test below
            wrong.append(f"{name}: dtype {segs.dtype}")
        if n is None:
            assert not segs.any(), f"{name}: an unsupported image is answered empty"
        elif segs.size:
            assert int(segs.max()) <= n, f"{name}: label {segs.max()} of {n} classes"
    assert not missing, f"no answer for {missing}"
    assert not wrong, wrong
    assert not (outputs / "notes.txt").exists()


def test_predict_sh_keeps_the_clicked_answers_in_the_stored_layout(corpus_dir, corpus_run):
    _, outputs = corpus_run
    checked = 0
    for name in NAMES:
        case, _ = _read(corpus_dir / name)
        if case is None or not (outputs / name).exists():
            continue
        with np.load(outputs / name) as npz:
            segs = npz["segs"].reshape(case.shape)  # back from the stored layout to the one segmented
        expected = {}
        for prompt in case.prompts:  # fg clicks are applied in class order: the last one wins
            for click in map(tuple, prompt.fg):
                expected[click] = prompt.label
        for click, label in expected.items():
            assert segs[click] == label, f"{name}: voxel {click} is {segs[click]}, clicked as {label}"
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("name", MANY_CLASSES)
def test_predict_sh_answers_more_than_255_classes_in_uint16(corpus_dir, corpus_run, name):
    _, outputs = corpus_run
    with np.load(outputs / name) as npz:
        segs = npz["segs"]
    assert segs.shape == stored_image_shape(corpus_dir / name)
    assert segs.dtype == np.uint16
    assert int(segs.max()) > 255  # labels beyond uint8 were produced and kept


def test_predict_sh_leaves_no_temporary_files(corpus_run):
    _, outputs = corpus_run
    left = [p.name for p in outputs.iterdir() if p.name != LEDGER_FILE and (p.name.startswith(".") or
                                                                            not p.name.endswith(".npz"))]
    assert not left, left


def test_every_stderr_line_names_its_file(corpus_dir, corpus_run):
    result, _ = corpus_run
    names = set(NAMES)
    stray = []
    for line in result.stderr.splitlines():
        match = re.match(r"\[([^\]]+)\] ", line)
        if match is None:
            if not line.startswith("model "):
                stray.append(line)
        elif match.group(1) not in names:
            stray.append(line)
    assert not stray, stray[:10]
    for name in NAMES:
        if not name.endswith(".npz"):
            continue
        case, error = _read(corpus_dir / name)
        errors = [line for line in result.stderr.splitlines() if line.startswith(f"[{name}] ERROR: ")]
        if error is not None:  # refused files: exactly one line saying why
            assert len(errors) == 1, (name, errors)
            assert str(error) in errors[0]
        else:
            assert not errors, errors
