"""Tests for inference.boundary: intensities move a zoomed-out boundary, and only when they can tell."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.segfm.boundary import BoundaryRefinement, refine_boundary
from inference.case_io import Box, ClassPrompt
from inference.field_of_view import FieldOfView, sample_area
from inference.fusion import BlockProbability, PatchProbability, fuse_classes
from inference.model import Model
from inference.class_task import Effort, prepare
from inference.pipelines import read_spec
from inference.pipelines import segment_class
from tests.test_model import tiny_spec, write_spec
from tests.test_segment import PATCH, make_case, model  # noqa: F401 (the module's tiny model fixture)

SHAPE = (64, 64, 64)
SETTINGS = BoundaryRefinement()


def sphere(radius: float, centre=(32, 32, 32)) -> np.ndarray:
    grid = np.indices(SHAPE) - np.reshape(centre, (3, 1, 1, 1))
    return (grid ** 2).sum(axis=0) <= radius ** 2


def coarse_answer(mask: np.ndarray, zoom: int = 4) -> PatchProbability:
    """What a zoomed-out network could say at best: the mask area-pooled on a patch of side 64 / zoom."""
    fov = FieldOfView((0, 0, 0), SHAPE[0], SHAPE[0] // zoom)
    probs = sample_area(mask, (0, 0, 0), fov)
    return PatchProbability.from_network(1, fov, probs)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def hard(p) -> np.ndarray:
    return (p.values([[0, n] for n in SHAPE]) > 0.5).numpy()


def test_a_coarse_boundary_moves_onto_the_intensity_edge():
    truth = sphere(20) & ~sphere(8, (32, 32, 47))  # a dent the 4x coarser patch cannot follow
    rng = np.random.default_rng(0)
    image = np.where(truth, 180, 60) + rng.normal(0, 15, SHAPE)
    patch = coarse_answer(truth)
    refined = refine_boundary(patch, image.astype(np.float32), SETTINGS)
    assert isinstance(refined, BlockProbability)
    before, after = (hard(patch) != truth).sum(), (hard(refined) != truth).sum()
    assert after < before / 4, (before, after)  # most misplaced voxels put right
    assert dice(hard(refined), truth) > 0.99


def test_intensities_that_do_not_tell_the_class_from_its_surroundings_move_little():
    truth = sphere(20)
    rng = np.random.default_rng(1)
    image = rng.normal(100, 15, SHAPE).astype(np.float32)  # the same noise inside and out
    patch = coarse_answer(truth)
    refined = refine_boundary(patch, image, SETTINGS)
    moved = (refined.values([[0, n] for n in SHAPE]) - patch.values([[0, n] for n in SHAPE])).abs()
    assert float(moved.max()) < 0.25  # a boundary voxel at p = 0.5 may flip, none goes far
    assert dice(hard(refined), truth) > dice(hard(patch), truth) - 0.01


def test_a_flat_image_or_a_fine_field_of_view_leaves_the_patch_as_it_is():
    truth = sphere(20)
    flat = coarse_answer(truth)
    assert refine_boundary(flat, np.full(SHAPE, 7, np.uint8), SETTINGS) is flat
    fine = coarse_answer(truth, zoom=1)
    image = np.where(truth, 200, 20).astype(np.uint8)
    assert refine_boundary(fine, image, SETTINGS) is fine  # zoom 1 < min_zoom 1.5


def test_a_refined_block_fuses_like_any_class_and_keeps_the_float16_ceiling():
    truth = sphere(20)
    image = np.where(truth, 200, 20).astype(np.uint8)
    refined = refine_boundary(coarse_answer(truth), image, SETTINGS)
    assert refined.probs.dtype == torch.float16 and float(refined.probs.max()) < 1
    labels = fuse_classes(SHAPE, [refined])
    np.testing.assert_array_equal(labels == 1, hard(refined))


def test_with_a_box_answers_from_min_zoom_with_box_on_are_refined():
    truth = sphere(20)
    image = np.where(truth, 200, 20).astype(np.uint8)
    fov = FieldOfView((0, 0, 0), SHAPE[0], SHAPE[0])  # zoom 1
    radius = np.sqrt(((np.indices(SHAPE) - 32) ** 2).sum(axis=0))
    soft = torch.sigmoid(torch.from_numpy(21.5 - radius).float())  # a network's soft edge, 1.5 voxels too wide
    patch = PatchProbability.from_network(1, fov, soft)
    settings = BoundaryRefinement(min_zoom_with_box=1.0)
    assert refine_boundary(patch, image, settings) is patch  # without a box min_zoom 1.5 holds
    assert refine_boundary(patch, image, SETTINGS, with_box=True) is patch  # unset: min_zoom for both
    refined = refine_boundary(patch, image, settings, with_box=True)
    assert (hard(refined) != truth).sum() < (hard(patch) != truth).sum() / 4


@pytest.mark.parametrize("bad", [{"band": 3.0, "shell": 2.0}, {"weight": 0}, {"min_zoom": 0.5}, {"bins": 1},
                                 {"min_zoom_with_box": 0.5}, {"strength": 1.0}])
def test_model_json_rejects_bad_boundary_settings(tmp_path, bad):
    with pytest.raises(ValueError, match="boundary_refinement"):
        read_spec(write_spec(tmp_path, tiny_spec(boundary_refinement=bad)))


def test_model_json_boundary_settings_parse_and_default_to_off(tmp_path):
    assert read_spec(write_spec(tmp_path, tiny_spec())).settings.boundary is None
    spec = read_spec(write_spec(tmp_path, tiny_spec(boundary_refinement={"weight": 0.5})))
    assert spec.settings.boundary == BoundaryRefinement(weight=0.5)


def test_segment_class_refines_a_zoomed_out_box_unless_its_effort_says_not(model, monkeypatch):  # noqa: F811
    shape = (40, 40, 40)
    centre = np.array([19.5, 19.5, 19.5])  # the field of view's centre
    truth = ((np.indices(shape) - centre.reshape(3, 1, 1, 1)) ** 2).sum(axis=0) <= 11 ** 2
    grid = ((np.indices((PATCH,) * 3) - 7.5) ** 2).sum(axis=0)
    ball = torch.from_numpy((grid <= 5.5 ** 2).astype(np.float32))  # about 13 voxels at zoom 2.4: too wide
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: ball.clone())
    monkeypatch.setattr(model, "spec", replace(model.spec, settings=replace(model.spec.settings, boundary=SETTINGS)))
    prompt = ClassPrompt(1, box=Box((4, 4, 4), (35, 35, 35), 20))  # extent 32 > patch 16: zoom 2.4
    case = replace(make_case(shape=shape, prompts=[prompt]), image=np.where(truth, 200, 20).astype(np.uint8))
    refined = segment_class(model, prepare(case, model), prompt)
    plain = segment_class(model, prepare(case, model), prompt, Effort(PATCH, refine_boundary=False))
    assert isinstance(refined.probability, BlockProbability) and "boundary refined" in refined.how
    assert isinstance(plain.probability, PatchProbability) and "boundary" not in plain.how
    assert dice(fuse_classes(shape, [refined.probability]) == 1, truth) > \
        dice(fuse_classes(shape, [plain.probability]) == 1, truth) + 0.03


def test_segment_class_refines_zoom_one_answers_only_for_box_prompts(model, monkeypatch):  # noqa: F811
    shape = (40, 40, 40)
    centre = np.array([19.5, 19.5, 19.5])  # the field of view's centre
    truth = ((np.indices(shape) - centre.reshape(3, 1, 1, 1)) ** 2).sum(axis=0) <= 4.5 ** 2
    radius = np.sqrt(((np.indices((PATCH,) * 3) - 7.5) ** 2).sum(axis=0))
    ball = torch.sigmoid(torch.from_numpy(6 - radius).float())  # a soft edge 1.5 voxels too wide
    monkeypatch.setattr(Model, "probability", lambda self, x, offset=0.0: ball.clone())
    monkeypatch.setattr(model, "spec", replace(model.spec, settings=replace(model.spec.settings, boundary=BoundaryRefinement(min_zoom_with_box=1.0))))
    boxed = ClassPrompt(1, box=Box((15, 15, 15), (24, 24, 24), 20))
    clicked = ClassPrompt(1, fg=np.array([[20, 20, 20]]), order=("fg",))
    image = np.where(truth, 200, 20).astype(np.uint8)
    outcomes = [segment_class(model, prepare(replace(make_case(shape=shape, prompts=[p]), image=image), model), p)
                for p in (boxed, clicked)]
    assert all("zoom 1.00" in o.how for o in outcomes)
    assert isinstance(outcomes[0].probability, BlockProbability) and "boundary refined" in outcomes[0].how
    assert isinstance(outcomes[1].probability, PatchProbability) and "boundary" not in outcomes[1].how
    assert dice(fuse_classes(shape, [outcomes[0].probability]) == 1, truth) > \
        dice(fuse_classes(shape, [outcomes[1].probability]) == 1, truth) + 0.1
