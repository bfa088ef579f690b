"""What the network answers on each view AutoZoom would pass through, for one click on a large structure.

    .venv/bin/python -m scripts.autozoom_views MODEL CASE.npz [--patch P] [--label L]

The evaluator's first click on label L, then the zoom-1 view around it and 1.5x wider views up to
max_zoom. Per view: how much of the patch the truth and the answer fill, the DSC inside the view, and how
much of the patch's six faces each covers. AutoZoom starts only when the answer reaches a face: an answer
at 0.00 on the faces while the truth covers them is a model that has learnt "one click = a small object".
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from inference.autozoom import ZOOM_OUT_STEP
from inference.case_io import Case, ClassPrompt
from inference.class_task import prepare
from inference.field_of_view import fit
from inference.harness.simulated_user import simulate_click
from inference.pipelines import load_model
from inference.segfm.inputs import network_input, prompt_region
from training.samples import patch_target


def on_faces(mask: np.ndarray) -> float:
    return float(np.mean([mask.take(i, axis=axis).mean() for axis in range(3) for i in (0, -1)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("case", type=Path, help="a challenge training case (imgs, gts, spacing)")
    parser.add_argument("--patch", type=int)
    parser.add_argument("--label", type=int, default=1)
    args = parser.parse_args()
    model = load_model(args.model, torch.device("cpu"), patch_size=args.patch, backend="torch")
    model.network.eval()
    with np.load(args.case) as npz:
        imgs, truth, spacing = npz["imgs"], npz["gts"] == args.label, npz["spacing"]
    click = simulate_click(np.zeros_like(truth), truth)
    prompt = ClassPrompt(args.label, fg=np.array([click.voxel]), order=("fg",))
    prepared = prepare(Case(args.case.name, imgs, tuple(float(s) for s in spacing[::-1]), [prompt], None), model)
    fov = fit(prompt_region(prepared, prompt), model.spec.patch_size)
    while True:
        with torch.no_grad():
            answer = model.probability(network_input(model, prepared, prompt, fov), 0.0).numpy() > 0.5
        target = patch_target(truth, fov).numpy() > 0.5
        dsc = 2 * (answer & target).sum() / max(answer.sum() + target.sum(), 1)
        print(f"zoom {fov.zoom:.2f}: fills truth {target.mean():.2f} answer {answer.mean():.2f}, DSC in view {dsc:.3f}, "
              f"faces: truth {on_faces(target):.2f} answer {on_faces(answer):.2f}")
        if fov.zoom >= model.spec.max_zoom:
            break
        fov = fov.zoomed_out(ZOOM_OUT_STEP, model.spec.max_zoom)


if __name__ == "__main__":
    main()
