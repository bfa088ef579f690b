"""Tests for inference.model (spec parsing, weights I/O, output heads) and inference.normalisation."""
from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from inference.model import (
    Model,
    ModelSpec,
    _resolve_configuration,
    build_network,
    load_state_dict,
    resenc_architecture,
    save_model,
)
from inference.normalisation import intensity_stats
from inference.pipelines import load_model, read_spec
from inference.prompts import PromptEncoding

DEFAULT_MODEL = Path(inference.__file__).resolve().parent.parent / "model_weights" / "default"
PATCH = 16


# ----------------------------------------------------------------------------- helpers


def tiny_architecture(features=(4, 8, 16)):
    return resenc_architecture(list(features), [1] * len(features))


def tiny_spec(**overrides):
    spec = {
        "name": "tiny",
        "architecture": tiny_architecture(),
        "channels": ["image", "box", "fg_clicks", "bg_clicks", "prev_seg"],
        "patch_size": PATCH,
        "normalisation": "zscore_nonzero_bbox",
        "prompts": {"box": "slab", "points": "binary", "point_radius": 4},
        "output": "sigmoid",
        "weights": "weights.pt",
        "max_zoom": 4,
    }
    spec.update(overrides)
    return spec


def write_spec(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(spec))
    return folder


def make_network(folder: Path, spec: dict, seed=0) -> torch.nn.Module:
    write_spec(folder, spec)
    torch.manual_seed(seed)
    net = build_network(read_spec(folder))
    # random non-trivial norm parameters so that every tensor matters
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def random_input(channels=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((channels, PATCH, PATCH, PATCH), generator=g)


class FixedLogits(torch.nn.Module):
    """A stand-in network whose output is known: it ignores the input."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert x.shape[0] == 1 and x.ndim == 5
        return self.logits[None]


# ----------------------------------------------------------------------------- read_spec


def test_read_spec_accepts_default_model_json():
    spec = read_spec(DEFAULT_MODEL)
    assert isinstance(spec, ModelSpec)
    assert spec.folder == DEFAULT_MODEL
    assert spec.channels == ("image", "box", "fg_clicks", "bg_clicks", "prev_seg")
    assert spec.patch_size == 96
    assert spec.normalisation == "zscore_nonzero_bbox"
    assert spec.output == "sigmoid"
    assert spec.weights == "weights.pt"
    assert spec.max_zoom == 4.0
    assert spec.prompts == PromptEncoding(box="slab", points="binary", point_radius=4)
    assert spec.architecture["arch_kwargs"]["features_per_stage"] == [16, 32, 64, 128, 192, 192]


def test_read_spec_cubic_patch_list_and_defaults(tmp_path):
    raw = tiny_spec(patch_size=[24, 24, 24])
    del raw["max_zoom"], raw["prompts"]
    spec = read_spec(write_spec(tmp_path, raw))
    assert spec.patch_size == 24
    assert spec.max_zoom == 4.0
    assert spec.prompts == PromptEncoding()


def test_logit_offset_is_per_prompt_setting_and_moves_the_probability(tmp_path):
    assert read_spec(write_spec(tmp_path, tiny_spec())).settings.logit_offset == {}
    spec = tiny_spec(logit_offset={"box": 1.5})
    save_model(tmp_path, spec, make_network(tmp_path, spec))
    model = load_model(tmp_path, torch.device("cpu"))
    assert (model.spec.settings.offset(has_box=True), model.spec.settings.offset(has_box=False)) == (1.5, 0.0)
    x = random_input()
    torch.testing.assert_close(model.probability(x, 1.5), torch.sigmoid(model.foreground_logit(x) + 1.5))


def test_first_click_offset_applies_to_the_lone_first_click_without_a_box_and_defaults_to_the_clicks_one(tmp_path):
    spec = read_spec(write_spec(tmp_path, tiny_spec(logit_offset={"box": 1.0, "clicks": 0.5, "first_click": -1.0})))
    assert [spec.settings.offset(True, 1), spec.settings.offset(False, 1), spec.settings.offset(False, 2), spec.settings.offset(False, 0)] == [1.0, -1.0, 0.5, 0.5]
    spec = read_spec(write_spec(tmp_path, tiny_spec(logit_offset={"clicks": 0.5})))
    assert spec.settings.offset(False, 1) == 0.5


def test_a_box_seen_zoomed_out_takes_the_zoomed_box_offset_else_the_box_one(tmp_path):
    spec = read_spec(write_spec(tmp_path, tiny_spec(logit_offset={"box": 1.0, "zoomed_box": 0.0, "clicks": 0.5})))
    assert [spec.settings.offset(True, 0), spec.settings.offset(True, 0, zoomed=True), spec.settings.offset(True, 3, zoomed=True),
            spec.settings.offset(False, 2, zoomed=True)] == [1.0, 0.0, 0.0, 0.5]
    spec = read_spec(write_spec(tmp_path, tiny_spec(logit_offset={"box": 1.0})))
    assert spec.settings.offset(True, 0, zoomed=True) == 1.0


@pytest.mark.parametrize(
    "override,field",
    [
        ({"channels": ["image", "box", "clicks"]}, "channels"),
        ({"channels": ["box", "fg_clicks"]}, "channels"),  # no image channel
        ({"patch_size": [16, 16, 32]}, "patch_size"),
        ({"output": "softmax3"}, "output"),
        ({"normalisation": "minmax"}, "normalisation"),
        ({"logit_offset": {"nobox": 1.0}}, "logit_offset"),
        ({"logit_offset": {"box": float("nan")}}, "logit_offset"),
        ({"logit_offset": 1.0}, "logit_offset"),
        ({"full_resolution_tiles": "yes"}, "full_resolution_tiles"),
        ({"full_resolution_tiles": 1}, "full_resolution_tiles"),
    ],
)
def test_read_spec_rejects_bad_fields(tmp_path, override, field):
    with pytest.raises(ValueError, match=field):
        read_spec(write_spec(tmp_path, tiny_spec(**override)))


def test_full_resolution_tiles_are_off_unless_model_json_turns_them_on(tmp_path):
    assert read_spec(write_spec(tmp_path / "a", tiny_spec())).settings.full_resolution_tiles is False
    assert read_spec(write_spec(tmp_path / "b", tiny_spec(full_resolution_tiles=True))).settings.full_resolution_tiles is True


def test_read_spec_rejects_missing_output_and_normalisation(tmp_path):
    raw = tiny_spec()
    del raw["output"]
    with pytest.raises(ValueError, match="output"):
        read_spec(write_spec(tmp_path / "a", raw))
    raw = tiny_spec()
    del raw["normalisation"]
    with pytest.raises(ValueError, match="normalisation"):
        read_spec(write_spec(tmp_path / "b", raw))


def write_plans(folder: Path) -> dict:
    base = tiny_architecture(features=(2, 4, 8))
    child = tiny_architecture(features=(4, 8, 16))
    plans = {
        "dataset_name": "Dataset999_Test",
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "batch_size": 2,
                "patch_size": [PATCH, PATCH, PATCH],
                "architecture": base,
            },
            "3d_child": {"inherits_from": "3d_fullres", "batch_size": 4, "architecture": child},
            "3d_grandchild": {"inherits_from": "3d_child", "batch_size": 8},
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    return plans


@pytest.mark.parametrize("configuration", ["3d_child", "3d_grandchild"])
def test_plans_reference_resolves_inheritance(tmp_path, configuration):
    plans = write_plans(tmp_path)
    raw = tiny_spec(plans={"file": "plans.json", "configuration": configuration})
    del raw["architecture"], raw["patch_size"]
    spec = read_spec(write_spec(tmp_path, raw))
    assert spec.architecture == plans["configurations"]["3d_child"]["architecture"]
    assert spec.architecture["arch_kwargs"]["features_per_stage"] == [4, 8, 16]
    assert spec.patch_size == PATCH  # from the parent configuration
    resolved = _resolve_configuration(plans["configurations"], configuration)
    assert "inherits_from" not in resolved
    assert resolved["data_identifier"] == "nnUNetPlans_3d_fullres"  # inherited key
    assert resolved["batch_size"] == (4 if configuration == "3d_child" else 8)  # child overrides
    assert plans["configurations"]["3d_child"]["inherits_from"] == "3d_fullres"  # input not mutated


def test_plans_reference_parent_configuration_and_network(tmp_path):
    write_plans(tmp_path)
    raw = tiny_spec(plans={"file": "plans.json", "configuration": "3d_fullres"})
    del raw["architecture"], raw["patch_size"]
    spec = read_spec(write_spec(tmp_path, raw))
    assert spec.architecture["arch_kwargs"]["features_per_stage"] == [2, 4, 8]
    # a model folder with a plans reference loads end to end
    raw_child = tiny_spec(plans={"file": "plans.json", "configuration": "3d_grandchild"})
    del raw_child["architecture"], raw_child["patch_size"]
    write_spec(tmp_path, raw_child)
    net = build_network(read_spec(tmp_path))
    save_model(tmp_path, raw_child, net)
    model = load_model(tmp_path, torch.device("cpu"))
    first_conv = next(m for m in model.network.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 5 and first_conv.out_channels == 4
    assert model.probability(random_input()).shape == (PATCH,) * 3


# ----------------------------------------------------------------------------- weights I/O


def test_save_load_round_trip_matches_fp16_weights(tmp_path):
    spec = tiny_spec()
    net = make_network(tmp_path, spec)
    save_model(tmp_path, spec, net)
    assert json.loads((tmp_path / "model.json").read_text()) == spec
    a = load_model(tmp_path, torch.device("cpu"))
    b = load_model(tmp_path, torch.device("cpu"))
    assert not a.network.training
    assert all(p.dtype == torch.float32 for p in a.network.parameters())
    x = random_input()
    with torch.no_grad():
        out_a = a.network(x[None])
        out_b = b.network(x[None])
    assert torch.equal(out_a, out_b)
    torch.testing.assert_close(a.probability(x), b.probability(x), rtol=0, atol=0)

    reference = copy.deepcopy(net)
    with torch.no_grad():
        for t in list(reference.parameters()) + list(reference.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
        expected = reference(x[None])
    torch.testing.assert_close(out_a, expected, rtol=1e-5, atol=1e-6)
    for (k, v), (k2, v2) in zip(a.network.state_dict().items(), reference.state_dict().items()):
        assert k == k2
        assert torch.equal(v, v2), k


def test_saved_state_stores_shared_tensors_once(tmp_path):
    spec = tiny_spec()
    net = make_network(tmp_path, spec)
    full = net.state_dict()
    shared_keys = [k for k in full if k.startswith("decoder.encoder.")]
    assert shared_keys, "the architecture repeats the encoder under decoder.encoder"
    save_model(tmp_path, spec, net)
    stored = torch.load(tmp_path / "weights.pt", map_location="cpu", weights_only=True)
    assert set(stored) == set(full)
    for k, v in stored.items():
        if v.is_floating_point():
            assert v.dtype == torch.float16, k
        assert torch.equal(v.float(), full[k].half().float()) if v.is_floating_point() else torch.equal(v, full[k])
    for k in shared_keys:
        twin = k[len("decoder."):]
        assert stored[k].untyped_storage().data_ptr() == stored[twin].untyped_storage().data_ptr(), k
    naive = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in full.items()}
    torch.save(naive, tmp_path / "naive.pt")
    size, naive_size = (tmp_path / "weights.pt").stat().st_size, (tmp_path / "naive.pt").stat().st_size
    assert size < 0.6 * naive_size, (size, naive_size)
    fp32_size = sum(v.numel() * v.element_size() for v in full.values())
    assert size < fp32_size


def test_load_state_dict_plain_and_nnunet_checkpoint(tmp_path):
    net = make_network(tmp_path, tiny_spec())
    state = net.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save(
        {
            "network_weights": state,
            "trainer_name": "x",
            "init_args": {"plans": {"configurations": {}}, "configuration": "3d_fullres", "fold": 0},
        },
        tmp_path / "ckpt.pt",
    )
    for name in ("plain.pt", "ckpt.pt"):
        loaded = load_state_dict(tmp_path / name)
        assert list(loaded) == list(state), name
        for k in state:
            assert torch.equal(loaded[k], state[k]), (name, k)


def test_load_state_dict_checkpoint_needing_full_unpickling(tmp_path):
    net = make_network(tmp_path, tiny_spec())
    state = net.state_dict()
    # a Path in the bookkeeping is refused by weights_only loading: the loader must fall back
    torch.save(
        {"network_weights": state, "trainer_name": "x", "init_args": {"output_folder": pathlib.PurePosixPath("/a/b")}},
        tmp_path / "ckpt.pt",
    )
    loaded = load_state_dict(tmp_path / "ckpt.pt")
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_model_from_nnunet_checkpoint_is_exact(tmp_path):
    spec = tiny_spec(weights="checkpoint_final.pth")
    net = make_network(tmp_path, spec)
    torch.save(
        {"network_weights": net.state_dict(), "trainer_name": "x", "init_args": {"fold": 0}},
        tmp_path / "checkpoint_final.pth",
    )
    model = load_model(tmp_path, torch.device("cpu"))
    x = random_input()
    with torch.no_grad():
        assert torch.equal(model.network(x[None]), net(x[None]))


# ----------------------------------------------------------------------------- Model.probability


def test_probability_shape_range_and_sigmoid_head(tmp_path):
    spec = tiny_spec()
    net = make_network(tmp_path, spec)
    save_model(tmp_path, spec, net)
    model = load_model(tmp_path, torch.device("cpu"))
    x = random_input()
    p = model.probability(x)
    assert p.shape == (PATCH,) * 3
    assert p.device.type == "cpu"
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    with torch.no_grad():
        expected = torch.sigmoid(model.network(x[None])[0, 0])
    torch.testing.assert_close(p, expected)
    assert x.shape == (5, PATCH, PATCH, PATCH)  # the input is not modified in shape


def test_probability_heads_with_known_logits(tmp_path):
    spec = read_spec(write_spec(tmp_path, tiny_spec()))
    g = torch.Generator().manual_seed(3)
    logits2 = 4 * torch.randn((2, PATCH, PATCH, PATCH), generator=g)
    softmax_model = Model(dataclasses.replace(spec, output="softmax2"), FixedLogits(logits2), torch.device("cpu"))
    p = softmax_model.probability(random_input())
    assert p.shape == (PATCH,) * 3
    torch.testing.assert_close(p, torch.sigmoid(logits2[1] - logits2[0]))
    torch.testing.assert_close(p, torch.softmax(logits2, dim=0)[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(p, torch.sigmoid(logits2[0]))  # not the sigmoid head

    logits1 = 4 * torch.randn((1, PATCH, PATCH, PATCH), generator=g)
    sigmoid_model = Model(spec, FixedLogits(logits1), torch.device("cpu"))
    torch.testing.assert_close(sigmoid_model.probability(random_input()), torch.sigmoid(logits1[0]))
    assert sigmoid_model.network.calls == 1


def test_default_model_forward():
    model = load_model(DEFAULT_MODEL, torch.device("cpu"))
    x = torch.zeros((5, 128, 128, 128))
    x[0] = torch.randn((128, 128, 128), generator=torch.Generator().manual_seed(0))
    x[1, 40:90, 40:90, 40:90] = 1
    p = model.probability(x)
    assert p.shape == (128, 128, 128)
    assert torch.isfinite(p).all()
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


# ----------------------------------------------------------------------------- intensity_stats


def test_unit_normalisation():
    image = np.random.default_rng(0).integers(0, 255, (4, 5, 6)).astype(np.uint8)
    assert intensity_stats(image, "unit") == (0.0, 255.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_zscore_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    if dtype == np.uint8:
        image = rng.integers(0, 256, (9, 10, 11)).astype(np.uint8)
    elif dtype == np.int16:
        image = rng.integers(-1000, 2000, (9, 10, 11)).astype(np.int16)
    else:
        image = rng.normal(30.0, 7.0, (9, 10, 11)).astype(np.float32)
    mean, std = intensity_stats(image, "zscore")
    ref = image.astype(np.float64)
    assert mean == pytest.approx(ref.mean(), rel=1e-10, abs=1e-10)
    assert std == pytest.approx(ref.std(), rel=1e-10)
    assert isinstance(mean, float) and isinstance(std, float)


def test_zscore_uint8_does_not_overflow():
    image = np.full((20, 20, 20), 255, dtype=np.uint8)
    image[0] = 0
    mean, std = intensity_stats(image, "zscore")
    ref = image.astype(np.float64)
    assert mean == pytest.approx(ref.mean())
    assert std == pytest.approx(ref.std())


def nonzero_bbox_stats(image):
    idx = np.nonzero(image)
    box = tuple(slice(i.min(), i.max() + 1) for i in idx)
    region = image[box].astype(np.float64)
    return region.mean(), region.std()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_zscore_nonzero_bbox_uses_only_the_bounding_box(dtype):
    rng = np.random.default_rng(2)
    image = np.zeros((20, 22, 24), dtype=dtype)
    image[3:8, 4:10, 5:9] = rng.integers(1, 200, (5, 6, 4))
    image[12:15, 15:18, 14:20] = rng.integers(50, 250, (3, 3, 6))
    image[10, 6, 7] = 0  # zeros inside the bounding box are counted
    mean, std = intensity_stats(image, "zscore_nonzero_bbox")
    ref_mean, ref_std = nonzero_bbox_stats(image)
    assert mean == pytest.approx(ref_mean, rel=1e-9)
    assert std == pytest.approx(ref_std, rel=1e-9)
    whole = image.astype(np.float64)
    assert abs(mean - whole.mean()) > 1.0  # differs from whole-volume statistics
    assert abs(std - whole.std()) > 1.0


def test_zscore_nonzero_bbox_counts_negative_values_as_nonzero():
    image = np.zeros((10, 11, 12), dtype=np.float32)
    image[4:6, 4:6, 4:6] = 100.0
    image[1, 2, 3] = -50.0  # only negative: still extends the box
    image[8, 9, 10] = -1.0
    mean, std = intensity_stats(image, "zscore_nonzero_bbox")
    ref_mean, ref_std = nonzero_bbox_stats(image)
    assert mean == pytest.approx(ref_mean, rel=1e-9)
    assert std == pytest.approx(ref_std, rel=1e-9)


@pytest.mark.parametrize("method", ["zscore", "zscore_nonzero_bbox"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_all_zero_image_does_not_divide_by_zero(method, dtype):
    image = np.zeros((5, 6, 7), dtype=dtype)
    mean, std = intensity_stats(image, method)
    assert mean == 0.0
    assert std > 0 and np.isfinite(std)
    with np.errstate(all="raise"):
        normalised = (image.astype(np.float32) - mean) / std
    assert np.all(normalised == 0)


def test_constant_image_gives_positive_std():
    image = np.full((4, 4, 4), 7, dtype=np.uint8)
    mean, std = intensity_stats(image, "zscore")
    assert mean == pytest.approx(7.0)
    assert std > 0 and np.isfinite((image - mean) / std).all()


def test_unknown_normalisation_method():
    with pytest.raises(ValueError, match="normalisation"):
        intensity_stats(np.zeros((2, 2, 2), dtype=np.uint8), "minmax")
