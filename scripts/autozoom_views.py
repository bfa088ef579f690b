"""What the network answers on each view AutoZoom and the scale search may pass through, for the evaluator's
first click on one structure, and which view the container's pipeline chose and why.

    .venv/bin/python -m scripts.autozoom_views MODEL CASE.npz [--patch P] [--label L]

The evaluator's first click on label L, then the zoom-1 view around it and 1.5x wider views up to
max_zoom. Per view: how much of the patch the truth and the answer (the first-click offset) fill, the DSC
inside the view, how much of the patch's six faces each covers; then the scale search's evidence
(segfm/scale_search.py): the share of the most covered face that the network's uncertain plateau covers
(the search looks wider above `min_face_cover`), and how deep the wider answer (the `zoomed_click` offset)
holds the click (it is kept at `min_click_depth` and above), with the whole-volume DSC of that answer.
Last, the pipeline's own answer for the class (its progress line and DSC): the view it chose.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from inference.autozoom import ZOOM_OUT_STEP
from inference.case_io import Case, ClassPrompt
from inference.class_task import prepare
from inference.field_of_view import fit, upsample_region
from inference.fusion import fuse_classes
from inference.geometry import slices
from inference.harness.simulated_user import simulate_click
from inference.pipelines import load_model, segment_class
from inference.segfm.inputs import network_input, prompt_region
from inference.segfm.scale_search import ScaleSearch, click_depth, face_cover
from training.samples import patch_target


def on_faces(mask: np.ndarray) -> float:
    return float(np.mean([mask.take(i, axis=axis).mean() for axis in range(3) for i in (0, -1)]))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("case", type=Path, help="a challenge training case (imgs, gts, spacing)")
    parser.add_argument("--patch", type=int)
    parser.add_argument("--label", type=int, default=1)
    args = parser.parse_args()
    model = load_model(args.model, torch.device("cpu"), patch_size=args.patch, backend="auto")
    settings = model.spec.settings
    search = settings.scale_search or ScaleSearch()
    with np.load(args.case) as npz:
        imgs, truth, spacing = npz["imgs"], npz["gts"] == args.label, npz["spacing"]
    click = simulate_click(np.zeros_like(truth), truth)
    prompt = ClassPrompt(args.label, fg=np.array([click.voxel]), order=("fg",))
    case = Case(args.case.name, imgs, tuple(float(s) for s in spacing[::-1]), [prompt], None)
    prepared = prepare(case, model)
    offset, wide_offset = settings.offset(False, 1), settings.offset(False, 1, zoomed=True)
    print(f"click {click.voxel}; offsets: first click {offset:+.1f}, widened {wide_offset:+.1f}; search: {search}")
    fov = fit(prompt_region(prepared, prompt), model.spec.patch_size)
    while True:
        logit = model.foreground_logit(network_input(model, prepared, prompt, fov))
        answer = (logit + offset > 0).numpy()
        target = patch_target(truth, fov).numpy() > 0.5
        plateau = face_cover(logit + search.plateau_offset > 0)
        wide = logit + wide_offset > 0
        inside = fov.inside(truth.shape)
        whole = np.zeros_like(truth)
        whole[slices(inside)] = upsample_region(wide.float(), fov, inside).numpy() > 0.5
        print(f"zoom {fov.zoom:.2f}: fills truth {target.mean():.2f} answer {answer.mean():.2f}, DSC in view "
              f"{dice(answer, target):.3f}, faces: truth {on_faces(target):.2f} answer {on_faces(answer):.2f}; "
              f"plateau on a face {plateau:.2f} ({'look wider' if plateau > search.min_face_cover else 'fits'}), "
              f"widened answer: click depth {click_depth(wide, fov.to_patch(prompt.fg)[0]):.2f}, "
              f"DSC {dice(whole, truth):.3f}")
        if fov.zoom >= model.spec.max_zoom:
            break
        fov = fov.zoomed_out(ZOOM_OUT_STEP, model.spec.max_zoom)
    outcome = segment_class(model, prepared, prompt)
    chosen = fuse_classes(truth.shape, [outcome.probability]) == args.label
    print(f"the pipeline: {outcome.how}; DSC {dice(chosen, truth):.3f}")


if __name__ == "__main__":
    main()
