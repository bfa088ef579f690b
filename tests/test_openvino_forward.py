"""The OpenVINO forward pass (inference/openvino_forward.py): exported once beside the weights, used on the
CPU only while it matches them, and giving torch's answers within float32 rounding."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model import create_random_model
from inference.openvino_export import export
from inference.openvino_forward import IR_FOLDER, SOURCE_FILE, current_ir
from inference.pipelines import load_model
from inference.predict import DEFAULT_MODEL, main
from hostile_cases import tiny_model_spec

pytest.importorskip("openvino")

@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ov_model")
    create_random_model(folder, tiny_model_spec(), seed=3)
    model = load_model(folder, torch.device("cpu"))
    export(model.network, 5, 16, folder, folder / "weights.pt")
    return folder


@pytest.mark.parametrize("patch", [16, 32, 24])  # the IR's spatial axes are dynamic: any patch the spec allows
def test_openvino_margin_matches_torch(exported, patch):
    torch_model = load_model(exported, torch.device("cpu"), patch_size=patch, backend="torch")
    ov_model = load_model(exported, torch.device("cpu"), patch_size=patch, backend="auto")
    assert torch_model.cpu_forward is None and ov_model.cpu_forward is not None
    x = torch.randn(5, patch, patch, patch, generator=torch.Generator().manual_seed(patch))
    ours, reference = ov_model.foreground_logit(x), torch_model.foreground_logit(x)
    assert ours.shape == reference.shape == (patch,) * 3
    scale = float(reference.abs().max())
    assert scale > 0.1, "a flat output proves nothing"
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4 * scale + 1e-5)
    assert float(((ours > 0) != (reference > 0)).float().mean()) < 1e-3


def test_an_ir_of_other_weights_is_never_used(exported, tmp_path):
    folder = tmp_path / "retrained"
    shutil.copytree(exported, folder)
    create_random_model(folder, tiny_model_spec(), seed=4)  # new weights, the old IR still there
    assert (folder / IR_FOLDER / "model.xml").is_file()
    assert current_ir(folder, folder / "weights.pt") is None
    assert load_model(folder, torch.device("cpu"), backend="auto").cpu_forward is None
    with pytest.raises(FileNotFoundError, match="no OpenVINO IR"):
        load_model(folder, torch.device("cpu"), backend="openvino")


def test_a_broken_source_record_means_no_ir(exported, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(exported, folder)
    (folder / IR_FOLDER / SOURCE_FILE).write_text("{not json")
    assert current_ir(folder, folder / "weights.pt") is None


def test_the_shipped_default_model_carries_a_current_ir():
    ir = current_ir(DEFAULT_MODEL, DEFAULT_MODEL / "weights.pt")
    assert ir is not None, "export it: sh scripts/setup.sh (or python -m inference.openvino_export model_weights/default)"
    source = json.loads((DEFAULT_MODEL / IR_FOLDER / SOURCE_FILE).read_text())
    assert source["weights"] == "weights.pt"


def test_predict_with_openvino_answers_like_torch(tmp_path):
    from scripts.synthetic_cases import write_demo_cases

    inputs = tmp_path / "in"
    write_demo_cases(inputs)
    answers = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / backend
        assert main([str(inputs), str(out), "--backend", backend, "--no-budget"]) == 0
        answers[backend] = {p.name: np.load(p)["segs"] for p in sorted(out.glob("*.npz"))}
    assert answers["torch"].keys() == answers["openvino"].keys() and len(answers["torch"]) == 3
    for name, reference in answers["torch"].items():
        assert reference.any(), f"{name}: an empty answer proves nothing"
        assert np.mean(answers["openvino"][name] != reference) < 1e-3, name


def test_an_ir_openvino_cannot_read_falls_back_to_torch(exported, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    shutil.copytree(exported, folder)
    (folder / IR_FOLDER / "model.xml").write_text("<net>not an IR</net>")  # digest still matches the weights
    model = load_model(folder, torch.device("cpu"), backend="auto")
    assert model.cpu_forward is None and model.network is not None
    assert "OpenVINO unavailable" in capsys.readouterr().err
    with pytest.raises(RuntimeError):  # OpenVINO's refusal, no longer caught when OpenVINO was asked for
        load_model(folder, torch.device("cpu"), backend="openvino")
