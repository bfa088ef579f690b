"""A folder in the official nnInteractive v1.0 layout loads as-is (inference/nninteractive/layout.py, inference.model)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from inference.model import build_network, load_state_dict, resenc_architecture
from inference.nninteractive.layout import CHANNELS, DEFAULT_CONFIGURATION, derive_spec, is_layout
from inference.pipelines import load_model, read_spec
from inference.prompts import PromptEncoding
from scripts.make_nninteractive_layout import RESENC_L_BLOCKS, RESENC_L_FEATURES, official_plans
from nninteractive_fixtures import SMALL_CONFIGURATION, SMALL_PATCH, layout_plans, small_layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return small_layout(tmp_path_factory.mktemp("layout"))


def test_layout_is_recognised_and_needs_all_its_parts(layout, tmp_path):
    assert is_layout(layout)
    for missing in ("inference_session_class.json", "plans.json", "fold_0/checkpoint_final.pth"):
        copy = tmp_path / missing.replace("/", "_")
        shutil.copytree(layout, copy)
        (copy / missing).unlink()
        assert not is_layout(copy)
        with pytest.raises(FileNotFoundError, match="nnInteractive"):
            read_spec(copy)


def test_two_folds_are_ambiguous(layout, tmp_path):
    shutil.copytree(layout, tmp_path / "two")
    shutil.copytree(layout / "fold_0", tmp_path / "two" / "fold_1")
    assert not is_layout(tmp_path / "two")


def test_spec_derived_from_the_layout(layout):
    spec = read_spec(layout)
    assert spec.channels == tuple(CHANNELS) == ("image", "prev_seg", "box", "zero", "fg_clicks", "bg_clicks",
                                                 "zero", "zero")
    assert spec.output == "softmax2" and spec.pipeline == "nninteractive"
    assert spec.normalisation == "zscore_nonzero_bbox_torch"
    assert spec.prompts == PromptEncoding(box="mid_slice", points="distance", point_radius=4)
    assert spec.settings.interaction_decay == 0.98  # the package's default when the session file has no decay
    assert spec.patch_size == SMALL_PATCH  # from the checkpoint's configuration in the plans
    assert spec.weights == "fold_0/checkpoint_final.pth"
    assert spec.architecture["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]


def test_session_file_sets_radius_and_decay(tmp_path):
    folder = small_layout(tmp_path / "a", session={"point_radius": 3, "interaction_decay": 0.9})
    spec = read_spec(folder)
    assert spec.prompts.point_radius == 3 and spec.settings.interaction_decay == 0.9
    # the oldest format: a bare class name, for which the package uses a decay of 0.9
    (folder / "inference_session_class.json").write_text(json.dumps("nnInteractiveInferenceSession"))
    assert read_spec(folder).settings.interaction_decay == 0.9 and read_spec(folder).prompts.point_radius == 4


def test_configuration_defaults_to_v1_without_init_args(layout, tmp_path):
    folder = shutil.copytree(layout, tmp_path / "copy")
    checkpoint = torch.load(folder / "fold_0/checkpoint_final.pth", weights_only=False)
    del checkpoint["init_args"]
    torch.save(checkpoint, folder / "fold_0/checkpoint_final.pth")
    assert derive_spec(folder)["plans"]["configuration"] == DEFAULT_CONFIGURATION
    assert read_spec(folder).patch_size == 192


def test_model_json_wins_over_the_layout(layout, tmp_path):
    folder = shutil.copytree(layout, tmp_path / "copy")
    raw = derive_spec(folder)
    raw["prompts"]["box"] = "slab"
    (folder / "model.json").write_text(json.dumps(raw))
    assert read_spec(folder).prompts.box == "slab"


def test_overrides_for_patch_and_box_mode(layout):
    spec = read_spec(layout, patch_size=32, box_mode="slab")
    assert spec.patch_size == 32 and spec.prompts.box == "slab"
    with pytest.raises(ValueError, match="box mode"):
        read_spec(layout, box_mode="cube")
    with pytest.raises(ValueError, match="multiple"):
        load_model(layout, torch.device("cpu"), patch_size=44)  # the network downsamples by 8


def test_weights_load_unchanged_with_the_duplicated_keys(layout):
    model = load_model(layout, torch.device("cpu"))
    checkpoint = torch.load(layout / "fold_0/checkpoint_final.pth", weights_only=False)
    weights = checkpoint["network_weights"]
    assert checkpoint["init_args"]["configuration"] == SMALL_CONFIGURATION and "trainer_name" in checkpoint
    assert any(k.startswith("decoder.encoder.") for k in weights)
    state = model.network.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    assert load_state_dict(layout / "fold_0/checkpoint_final.pth").keys() == weights.keys()


def test_two_logits_become_a_foreground_probability(layout):
    model = load_model(layout, torch.device("cpu"))
    x = torch.randn(8, SMALL_PATCH, SMALL_PATCH, SMALL_PATCH, generator=torch.Generator().manual_seed(0))
    logits = model.network(x[None])[0].detach()
    torch.testing.assert_close(model.foreground_logit(x), logits[1] - logits[0])
    torch.testing.assert_close(model.probability(x), torch.softmax(logits, 0)[1], atol=1e-6, rtol=1e-5)


def test_official_plans_build_resenc_l(layout):
    """The v1.0 configuration from the facts: 102,355,818 parameters, 956 state-dict keys over 264 tensors."""
    plans = official_plans(resenc_architecture(RESENC_L_FEATURES, RESENC_L_BLOCKS))
    assert plans["configurations"][DEFAULT_CONFIGURATION]["inherits_from"] == "3d_fullres"
    assert layout_plans()["configurations"][DEFAULT_CONFIGURATION] == plans["configurations"][DEFAULT_CONFIGURATION]
    assert plans["configurations"][DEFAULT_CONFIGURATION]["patch_size"] == [192, 192, 192]
    # the layout's spec with v1.0's network in place of the small one (writing 400 MB of weights is not needed)
    spec = dataclasses.replace(read_spec(layout), architecture=plans["configurations"]["3d_fullres"]["architecture"])
    network = build_network(spec)
    state = network.state_dict()
    assert sum(p.numel() for p in network.parameters()) == 102_355_818
    assert len(state) == 956 and len({t.data_ptr() for t in state.values()}) == 264
