"""Fine-tuning a model folder (ours, or one in the nnInteractive download's layout) into a folder predict.sh loads."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.model import load_state_dict
from inference.nninteractive.layout import CHANNELS
from inference.pipelines import load_model, read_spec
from training.samples import Sample
from scripts.make_nninteractive_layout import RESENC_L_FEATURES
from training.train import DEFAULT_CONFIG, batch_loss, learning_rate, loss_terms, main, run_spec
from training_cases import write_training_cases

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"
SEED_RECIPE = CONFIGS / "seed-nninteractive.json"
DEFAULT_MODEL = REPO / "model_weights" / "default"
DEMO_BOX_CASE = REPO / "demo" / "inputs" / "CT_demo_box.npz"


def quick(config_path: Path, folder: Path) -> Path:
    """The recipe at `config_path` with small synthetic volumes and one sample a step, written to `folder`."""
    config = json.loads(config_path.read_text())
    config["data"].update(p_atlas=0.0, p_tissue=0.0, max_side=48, min_side=32)
    config["prompting"].update(p_single_pass=1.0, p_tile=0.0)  # no prompting passes: the loop is what is tested
    config.update(batch_size=1, threads=2, log_every=1)
    path = folder / "config.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def answer(run_predict_sh, tmp_path: Path, model: Path, case: Path) -> np.ndarray:
    """`sh predict.sh IN OUT --model MODEL` on one case: its answer, checked against the image's shape."""
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    shutil.copy(case, inputs)
    result = run_predict_sh(inputs, outputs, "--model", model)
    assert result.returncode == 0, result.stderr
    segs = np.load(outputs / case.name)["segs"]
    assert segs.shape == np.load(case)["imgs"].shape
    return segs


def test_a_run_from_the_default_model_keeps_its_network_and_exports_a_folder_predict_sh_loads(tmp_path, run_predict_sh):
    run = tmp_path / "run"
    config = quick(DEFAULT_CONFIG, tmp_path / "config")
    main([str(run), "--config", str(config), "--init-from", str(DEFAULT_MODEL), "--patch", "64", "--steps", "2",
          "--device", "cpu"])
    shipped, spec = read_spec(DEFAULT_MODEL), json.loads((run / "model" / "model.json").read_text())
    assert spec["architecture"] == shipped.architecture and spec["channels"] == list(shipped.channels)
    assert spec["patch_size"] == 64 and spec["pipeline"] == "segfm" and spec["name"].endswith("(step 2)")
    # calibrated for the old weights: chosen again for the new ones (training.calibrate)
    assert "logit_offset" not in spec and "boundary_refinement" not in spec
    # a fine-tune of the shipped weights, not a fresh network: two warm-up steps move them by about the lr
    trained = torch.load(run / "checkpoint.pt", weights_only=False)["network"]
    start = load_state_dict(DEFAULT_MODEL / shipped.weights)
    moved = max(float((trained[k] - start[k].float()).abs().max()) for k in start if start[k].is_floating_point())
    assert 0 < moved < 1e-3
    # resuming needs neither --init-from nor --patch: the checkpoint holds the run's spec
    main([str(run), "--resume", "--steps", "3", "--device", "cpu"])
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    assert read_spec(run / "model").patch_size == 64
    segs = answer(run_predict_sh, tmp_path, run / "model", DEMO_BOX_CASE)
    assert set(np.unique(segs)) <= {0, 1, 2} and (segs > 0).any()


@pytest.fixture(scope="module")
def nninteractive_layout(tmp_path_factory) -> Path:
    """ResEnc-L with random weights in the download's layout, at patch 64 (~410 MB)."""
    folder = tmp_path_factory.mktemp("nninteractive") / "nnInteractive_v1.0"
    subprocess.run([sys.executable, "-m", "scripts.make_nninteractive_layout", str(folder), "--patch", "64"],
                   cwd=REPO, check=True, capture_output=True)
    return folder


def test_a_seed_recipe_run_from_an_nninteractive_download_trains_its_8_channels_and_2_logits(
        tmp_path, run_predict_sh, nninteractive_layout):
    run, data = tmp_path / "run", tmp_path / "data"
    write_training_cases(data, count=2, shape=(24, 40, 40))
    config = quick(SEED_RECIPE, tmp_path / "config")
    assert json.loads(config.read_text())["data"]["p_real"] == 1.0  # the seed system trains on real cases only
    main([str(run), "--config", str(config), "--init-from", str(nninteractive_layout), "--steps", "1",
          "--device", "cpu", "--data", str(data)])
    spec = json.loads((run / "model" / "model.json").read_text())
    assert spec["channels"] == CHANNELS and spec["output"] == "softmax2" and spec["patch_size"] == 64
    assert spec["architecture"]["arch_kwargs"]["features_per_stage"] == RESENC_L_FEATURES
    # the seed recipe's 3D box and binary balls; our field of view, on which the samples were drawn
    assert spec["prompts"] == {"box": "slab", "points": "binary", "point_radius": 4}
    assert spec["pipeline"] == "segfm" and "plans" not in spec and "interaction_decay" not in spec
    assert sorted(p.name for p in (run / "model").iterdir()) == ["model.json", "weights.pt"]
    model = load_model(run / "model", torch.device("cpu"))
    assert sum(p.numel() for p in model.network.parameters()) == 102_355_818
    start = load_state_dict(nninteractive_layout / read_spec(nninteractive_layout).weights)
    exported = model.network.state_dict()
    assert any(not torch.equal(exported[k], start[k].half().float()) for k in start if start[k].is_floating_point())
    answer(run_predict_sh, tmp_path, run / "model", DEMO_BOX_CASE)


def test_the_seed_recipe_keeps_its_learning_rate_and_a_recipe_without_a_network_needs_a_folder(tmp_path, capsys):
    seed = json.loads(SEED_RECIPE.read_text())
    assert {learning_rate(step, seed["optimiser"], minutes) for step in (0, 1, 500, 10**6)
            for minutes in (0.0, 1e4)} == {1e-4}
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, dict(seed["optimiser"], schedule="poly"))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--config", str(SEED_RECIPE)])
    assert "--init-from" in capsys.readouterr().err
    # our own recipe beside it: every improvement is a key of the same blocks
    ours = json.loads((CONFIGS / "ours-nninteractive.json").read_text())
    assert set(ours["prompting"]) == set(seed["prompting"]) and ours["prompting"]["p_no_box"] > 0


def test_a_run_may_change_only_what_the_weights_do_not_fix(tmp_path):
    config = json.loads(SEED_RECIPE.read_text())
    spec = run_spec(config, DEFAULT_MODEL, patch_size=128)
    assert spec["patch_size"] == 128 and spec["prompts"]["box"] == "slab" and spec["max_zoom"] == 4
    config["init_overrides"]["channels"] = ["image"]
    with pytest.raises(ValueError, match="init_overrides"):
        run_spec(config, DEFAULT_MODEL)


def test_the_two_logit_loss_is_the_two_class_cross_entropy_of_the_foreground_logit():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    target = (torch.rand(2, 4, 4, 4) > 0.5).float()

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    samples = [Sample(torch.zeros(1, 4, 4, 4), target[i], False, 0) for i in range(2)]
    loss, dice, bce = batch_loss(Fixed(), samples, torch.device("cpu"), "softmax2")
    assert bce.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target.long()).item(), rel=1e-5)
    probs = torch.softmax(logits, 1)[:, 1:]
    assert dice.item() == pytest.approx(loss_terms(torch.logit(probs), target[:, None])[0].item(), rel=1e-4)
    assert logits.grad is not None and loss.item() == pytest.approx(dice.item() + bce.item())
