"""The Segmenter API (inference/segmenter.py) answers a class as the batch predictor answers a one-class case."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from inference.case_io import read_case
from inference.predict import predict_case
from inference.segmenter import Segmenter

DEMO = Path(__file__).resolve().parent.parent / "demo" / "inputs"


def one_class(path: Path, label: int = 1):
    """The demo case with only class `label` (relabelled 1), its previous prediction kept for that class."""
    case = read_case(path)
    prompt = replace(case.prompts[label - 1], label=1)
    prev = None if case.prev_pred is None else (case.prev_pred == label).astype(np.uint8)
    return replace(case, prompts=[prompt], prev_pred=prev)


@pytest.mark.parametrize("name", ["CT_demo_box.npz", "MR_demo_nobox.npz", "CT_demo_round2.npz"])
def test_a_mask_is_the_batch_predictors_answer_for_the_same_prompt_and_previous_mask(default_model, name):
    case = one_class(DEMO / name)
    batch = predict_case(default_model, case) == 1
    segmenter = Segmenter(default_model)
    segmenter.set_image(case.image, case.spacing)
    mask = segmenter.mask(case.prompts[0], previous=case.prev_pred)
    assert mask.dtype == bool and mask.shape == case.shape
    assert mask.any() and np.array_equal(mask, batch)


def test_the_previous_mask_is_what_the_answer_builds_on(default_model):
    case = one_class(DEMO / "CT_demo_round2.npz")
    segmenter = Segmenter(default_model)
    segmenter.set_case(case)
    with_previous = segmenter.mask(case.prompts[0])  # the case's own previous prediction
    empty = segmenter.mask(case.prompts[0], previous=np.zeros(case.shape, np.uint8))
    assert np.array_equal(with_previous, segmenter.mask(case.prompts[0], previous=case.prev_pred))
    assert not np.array_equal(with_previous, empty)


def test_segmenting_before_an_image_is_set_says_so(default_model):
    with pytest.raises(RuntimeError, match="set_image"):
        Segmenter(default_model).mask(read_case(DEMO / "CT_demo_box.npz").prompts[0])
