"""Fuzzing the reader: random `.npz` contents (odd images, prompts as random nested Python objects).

`read_case` must raise nothing but CaseError, or return a Case whose prompts the rest of the
pipeline can draw: `prompt_channels` on a field of view fitted to each prompt gives finite channels.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hostile_cases import BOX_KEYS, check_case, objects, stored_image_shape
from inference.case_io import Case, CaseError, UnsupportedImage, read_case
from inference.field_of_view import fit
from inference.prompts import PromptEncoding, prompt_channels
from inference.class_task import PreparedCase
from inference.geometry import region_of
from inference.segfm.inputs import prompt_region

PATCH = 16
NAME = "fuzz.npz"

# ----------------------------------------------------------------------------- strategies

def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, drawn with the given weights (plausible input most of the time)."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


small = st.integers(-1, 7)  # mostly inside the small volumes drawn below
numbers = st.one_of(
    st.integers(-4, 12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 12.0),
)
scalars = st.one_of(st.none(), numbers, st.booleans(), st.text(max_size=4), st.sampled_from(["fg", "bg"]))
keys = st.sampled_from([*BOX_KEYS, "z_mid", "fg", "bg", "x", 0])
nested = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=8)),
    max_leaves=12,
)
value = weighted((3, small), (1, numbers), (1, scalars))
coordinate = weighted((4, st.lists(small, min_size=3, max_size=3)), (1, st.lists(value, min_size=2, max_size=4)),
                      (1, nested))
points = weighted((4, st.lists(coordinate, max_size=4)), (1, nested))
plausible_box = st.fixed_dictionaries({k: small for k in BOX_KEYS}, optional={"z_mid": small})
odd_box = st.fixed_dictionaries({k: value for k in BOX_KEYS}, optional={"z_mid": value, "extra": nested})
box_entry = weighted((3, plausible_box), (2, odd_box), (1, st.none()), (1, nested))
click_entry = weighted((4, st.fixed_dictionaries({"fg": points, "bg": points})),
                       (1, st.fixed_dictionaries({}, optional={"fg": points, "bg": points, "other": nested})),
                       (1, nested))
order_entry = weighted((3, st.lists(st.sampled_from(["fg", "bg", None]), max_size=5)),
                       (1, st.lists(st.sampled_from(["fg", "bg", None, "x", 3, b"fg"]), max_size=5)),
                       (1, st.none()), (1, nested))

image_dtypes = st.sampled_from([np.uint8, np.int16, np.uint16, np.int64, np.float16, np.float32, np.float64,
                                np.bool_, np.complex64, ">f4"])
images = weighted(
    (8, hnp.arrays(image_dtypes, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6))),
    (1, hnp.arrays(image_dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))),
    (1, hnp.arrays(image_dtypes, st.sampled_from([(1, 4, 5, 6), (4, 5), (2, 3, 4, 5), (3, 1, 5), (1, 1, 1, 7)]))),
    (1, st.sampled_from([np.array([["a", "b"]]), np.array([[[1, 2]]], dtype=object), np.array("image")])),
)


def packed(values):
    """A Python value as it could reach the file: as is, in an object array of entries, or array(dtype=object)."""
    return st.tuples(values, st.sampled_from(["as_is", "entries", "object_array"]))


likely = weighted((3, st.just(True)), (1, st.just(False)))


@st.composite
def npz_contents(draw) -> dict:
    imgs = draw(images)
    arrays = {"imgs": imgs}
    if draw(likely):
        arrays["boxes"] = draw(packed(weighted((4, st.lists(box_entry, min_size=1, max_size=4)), (1, nested))))
    if draw(likely):
        arrays["clicks"] = draw(packed(weighted((4, st.lists(click_entry, min_size=1, max_size=4)), (1, nested))))
    if draw(st.booleans()):
        arrays["clicks_order"] = draw(packed(weighted((4, st.lists(order_entry, max_size=5)), (1, nested))))
    if draw(likely):
        same = hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float64, np.bool_, np.uint16, np.float32]),
                          st.just(imgs.shape))
        arrays["prev_pred"] = draw(weighted((4, same), (1, packed(nested))))
    if draw(st.booleans()):
        arrays["spacing"] = draw(st.one_of(packed(nested), hnp.arrays(np.float64, st.integers(0, 4))))
    return arrays


def to_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    value, how = value
    if how == "entries" and isinstance(value, list):
        return objects(*value)
    if how == "object_array":
        try:
            return np.array(value, dtype=object)
        except ValueError:  # too ragged even for numpy
            return objects(*value) if isinstance(value, list) else np.array(None, dtype=object)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asanyarray(value)
    except (ValueError, OverflowError):  # ragged lists, ints beyond int64: pickled instead
        return objects(*value) if isinstance(value, list) else np.array(value, dtype=object)


# ----------------------------------------------------------------------------- the target


def previous_regions(prev: np.ndarray | None) -> dict:
    """The region of each label of the previous prediction (class_task.label_regions, without cc3d's
    limit of labels below the voxel count that tiny fuzzed volumes break)."""
    if prev is None:
        return {}
    regions = {}
    for label in np.unique(prev):
        if label:
            where = np.argwhere(prev == label)
            regions[int(label)] = region_of(where.min(axis=0), where.max(axis=0))
    return regions


def draw_every_prompt(case: Case) -> int:
    prepared = PreparedCase(case, 0.0, 1.0, previous_regions(case.prev_pred))
    encoding = PromptEncoding()
    drawn = 0
    for prompt in case.prompts:
        region = prompt_region(prepared, prompt)
        if region is None:
            continue
        fov = fit(region, PATCH)
        assert math.isfinite(fov.zoom) and fov.side >= PATCH
        for name, channel in prompt_channels(prompt, fov, encoding).items():
            assert channel.shape == (PATCH,) * 3, name
            assert torch.isfinite(channel).all(), name
            assert float(channel.min()) >= 0.0 and float(channel.max()) <= 1.0, name
        drawn += 1
    return drawn


@pytest.mark.filterwarnings("error")  # no numpy warnings escape the reader either
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.data_too_large])
@given(contents=npz_contents())
def test_read_case_raises_only_case_error_and_its_prompts_can_be_drawn(contents, capsys):
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / NAME
        arrays = {key: to_array(value) for key, value in contents.items()}
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        stored = stored_image_shape(path)
        try:
            case = read_case(path)
        except CaseError as exc:
            assert "\n" not in str(exc) and str(exc).strip()
            if stored is not None:
                assert isinstance(exc, UnsupportedImage) and exc.file_shape == stored, (exc, stored)
            case = None
    for line in capsys.readouterr().err.splitlines():
        assert line.startswith(f"[{NAME}] WARNING: "), line
    if case is None:
        event("refused")
        return
    check_case(case, stored)
    drawn = draw_every_prompt(case)
    event(f"case, {'some' if drawn else 'no'} prompts drawn")
