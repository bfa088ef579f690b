"""The segfm pipeline's scale search without a box (inference/segfm/scale_search.py) and its negative clicks.

The network is stood in for by one that behaves as the shipped weights were measured to (docs/scale_search.md):
confident only near the positive click, unsure (a logit just under 0) over the rest of a bright object,
sure of the dark background. On an object bigger than the patch its confident answer never reaches a face,
its plateau does.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inference.case_io import Case, ClassPrompt
from inference.class_task import Effort, prepare
from inference.fusion import PatchWithinMask, fuse_classes
from inference.model import Model, create_random_model, resenc_architecture
from inference.pipelines import load_model, read_spec, segment_class
from inference.segfm.scale_search import ScaleSearch, click_depth, face_cover
from tests.test_segment import record_fovs

PATCH = 16
NEAR = 3  # patch voxels around the click ball where the stand-in network is sure
SHAPE = (64, 64, 64)


def spec(**settings) -> dict:
    return {
        "architecture": resenc_architecture([4, 8, 16], [1, 1, 1]),
        "channels": ["image", "box", "fg_clicks", "bg_clicks", "prev_seg"],
        "patch_size": PATCH, "normalisation": "zscore",
        "prompts": {"box": "slab", "points": "binary", "point_radius": 3},
        "output": "sigmoid", "weights": "weights.pt", "max_zoom": 4,
        "logit_offset": {"first_click": -1.0, "zoomed_click": 2.0},
        **settings,
    }


@pytest.fixture(scope="module")
def searching(tmp_path_factory) -> Model:
    folder = tmp_path_factory.mktemp("search")
    create_random_model(folder, spec(scale_search={"plateau_offset": 1.0, "min_face_cover": 0.25, "min_click_depth": 0.6}))
    return load_model(folder, torch.device("cpu"), backend="torch")


def one_click_stand_in(self, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """Sure near the positive click (logit 6) on bright voxels, unsure elsewhere on them (-0.5), sure of dark ones (-6)."""
    bright = x[0] > 0
    near = F.max_pool3d(x[2][None, None], 2 * NEAR + 1, stride=1, padding=NEAR)[0, 0] > 0
    logit = torch.where(bright & near, 6.0, torch.where(bright, -0.5, -6.0))
    return torch.sigmoid(logit + offset)


def bright_case(inside: tuple[slice, ...], click: tuple[int, int, int], prev: np.ndarray | None = None,
                order=("fg",), bg=()) -> tuple[Case, ClassPrompt]:
    image = np.full(SHAPE, 10, np.uint8)
    image[inside] = 200
    prompt = ClassPrompt(1, fg=np.array([click]), bg=np.array(bg, dtype=np.int64).reshape(-1, 3), order=order)
    return Case("case.npz", image, (1.0, 1.0, 1.0), [prompt], prev), prompt


def looks(monkeypatch) -> list:
    """The views the pipeline looks at, in order, each answered by the stand-in network."""
    monkeypatch.setattr(Model, "probability", one_click_stand_in)
    return record_fovs(monkeypatch)


def answer_mask(outcome) -> np.ndarray:
    return fuse_classes(SHAPE, [outcome.probability]) == 1


def test_an_object_larger_than_the_patch_is_looked_at_wider_until_it_fits(searching, monkeypatch):
    seen = looks(monkeypatch)
    case, prompt = bright_case((slice(8, 56),) * 3, (32, 32, 32))  # 48 voxels a side, the patch 16
    outcome = segment_class(searching, prepare(case, searching), prompt)
    assert [round(f.zoom, 3) for f in seen] == [1.0, 1.5, 2.25, 3.375]  # 54 voxels: the object's faces in view
    assert outcome.probability.fov == seen[-1] and "scale search widened" in outcome.how
    truth = np.zeros(SHAPE, bool)
    truth[8:56, 8:56, 8:56] = True
    got = answer_mask(outcome)
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.9


def test_without_the_search_the_same_object_answers_a_blob_at_zoom_one(tmp_path, monkeypatch):
    create_random_model(tmp_path, spec())  # the same folder without "scale_search": today's border rule only
    model = load_model(tmp_path, torch.device("cpu"), backend="torch")
    seen = looks(monkeypatch)
    case, prompt = bright_case((slice(8, 56),) * 3, (32, 32, 32))
    outcome = segment_class(model, prepare(case, model), prompt)
    assert [f.zoom for f in seen] == [1.0] and answer_mask(outcome).sum() < 20 ** 3


def test_a_small_object_keeps_zoom_one(searching, monkeypatch):
    seen = looks(monkeypatch)
    case, prompt = bright_case((slice(28, 36),) * 3, (32, 32, 32))  # 8 voxels a side: inside the zoom-1 view
    outcome = segment_class(searching, prepare(case, searching), prompt)
    assert [f.zoom for f in seen] == [1.0] and "scale search" not in outcome.how
    truth = np.zeros(SHAPE, bool)
    truth[28:36, 28:36, 28:36] = True
    assert (answer_mask(outcome) == truth).all()


def test_a_wider_answer_that_holds_the_click_off_centre_gives_way_to_the_zoom_one_answer(searching, monkeypatch):
    seen = looks(monkeypatch)
    # the click near the object's edge: its deepest voxel is elsewhere, so the wide answer is not this object
    case, prompt = bright_case((slice(8, 56),) * 3, (11, 32, 32))
    outcome = segment_class(searching, prepare(case, searching), prompt)
    assert len(seen) > 1 and outcome.probability.fov == seen[0]
    assert "kept zoom 1.00" in outcome.how and answer_mask(outcome).sum() < 20 ** 3


def test_the_search_stops_at_the_deadline(searching, monkeypatch):
    seen = looks(monkeypatch)
    case, prompt = bright_case((slice(8, 56),) * 3, (32, 32, 32))
    segment_class(searching, prepare(case, searching), prompt, Effort(PATCH, stop_zooming_at=time.monotonic() - 1))
    assert [f.zoom for f in seen] == [1.0]
    seen.clear()
    segment_class(searching, prepare(case, searching), prompt, Effort(PATCH, max_passes=2))
    assert [f.zoom for f in seen] == [1.0, 1.5]


def test_later_rounds_are_searched_only_every_round(searching, monkeypatch):
    seen = looks(monkeypatch)
    prev = np.zeros(SHAPE, np.uint8)
    prev[30:35, 30:35, 30:35] = 1
    case, prompt = bright_case((slice(8, 56),) * 3, (32, 32, 32), prev, order=("fg", "fg"))
    prompt = replace(prompt, fg=np.array([[32, 32, 32], [33, 32, 32]]))
    case = replace(case, prompts=[prompt])
    zooms = {}
    for name, search in (("none", None), ("first", ScaleSearch(every_round=False)), ("every", ScaleSearch())):
        settings = replace(searching.spec.settings, scale_search=search)
        monkeypatch.setattr(searching, "spec", replace(searching.spec, settings=settings))
        seen.clear()
        segment_class(searching, prepare(case, searching), prompt)
        zooms[name] = [round(f.zoom, 3) for f in seen]
    assert zooms["first"] == zooms["none"]  # the border rule alone
    assert zooms["every"][-1] == 3.375 and len(zooms["every"]) > len(zooms["none"])
    assert ScaleSearch(every_round=False).applies(1) and not ScaleSearch(every_round=False).applies(2)


def test_a_negative_click_without_a_box_is_answered_around_it_and_only_removes(tmp_path, monkeypatch):
    create_random_model(tmp_path, spec(local_negative_click=True))
    model = load_model(tmp_path, torch.device("cpu"), backend="torch")
    seen = looks(monkeypatch)
    prev = np.zeros(SHAPE, np.uint8)
    prev[8:56, 8:56, 8:56] = 1  # a large previous answer; the new click says "not here"
    case, prompt = bright_case((slice(8, 56),) * 3, (32, 32, 32), prev, order=("fg", "bg"), bg=[(50, 50, 50)])
    outcome = segment_class(model, prepare(case, model), prompt)
    assert len(seen) == 1 and seen[0].zoom == 1.0
    assert all(s <= 50 < s + seen[0].side for s in seen[0].start)  # the view is around the negative click
    assert isinstance(outcome.probability, PatchWithinMask)
    got = answer_mask(outcome)
    assert not (got & (prev == 0)).any()  # never adds
    assert got[32, 32, 32] and got[10, 10, 10]  # outside the view the previous answer stays
    assert not got[50, 50, 50]  # the stand-in is unsure there (far from the positive click): removed


def test_face_cover_and_click_depth():
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[:, :5, :] = True
    assert face_cover(mask) == pytest.approx(1.0)  # the y = 0 face is covered whole
    mask[:, 0] = False
    assert face_cover(mask) == pytest.approx(0.4)  # the z and x faces: 4 rows of 10
    ball = torch.zeros(21, 21, 21, dtype=torch.bool)
    z, y, x = np.ogrid[:21, :21, :21]
    ball[torch.from_numpy((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 64)] = True
    assert click_depth(ball, np.array([10.2, 9.8, 10.0])) == pytest.approx(1.0)
    assert click_depth(ball, np.array([10, 10, 17])) < 0.3
    assert click_depth(ball, np.array([0, 0, 0])) == 0.0


def test_model_json_scale_search_settings_are_checked(tmp_path):
    create_random_model(tmp_path, spec(scale_search={"min_face_cover": 0.5}, local_negative_click=True))
    settings = read_spec(tmp_path).settings
    assert settings.scale_search == ScaleSearch(min_face_cover=0.5) and settings.local_negative_click
    assert settings.offset(False, 1, zoomed=True) == 2.0 and settings.offset(False, 1) == -1.0
    assert settings.offset(False, 3, zoomed=True) == 2.0 and settings.offset(False, 3) == 0.0
    for bad in ({"scale_search": {"min_face_cover": 0}}, {"scale_search": {"colour": 1}}, {"scale_search": 3},
                {"local_negative_click": "yes"}):
        (tmp_path / "model.json").write_text(json.dumps(spec(**bad)))
        with pytest.raises(ValueError, match=f"model.json: {next(iter(bad))}"):
            read_spec(tmp_path)
