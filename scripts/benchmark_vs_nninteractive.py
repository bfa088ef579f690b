"""Time per interaction: our pipeline against the `nninteractive` package's own session, same weights, same prompts.

    sh -c 'python -m pip install --no-deps --target /tmp/parity -r requirements-parity.txt'
    .venv/bin/python -m scripts.make_nninteractive_layout /tmp/resenc_l --patch 64   # ResEnc-L, random weights
    .venv/bin/python -m inference.openvino_export /tmp/resenc_l                     # optional: our CPU IR
    PYTHONPATH=/tmp/parity .venv/bin/python -m scripts.benchmark_vs_nninteractive /tmp/resenc_l [--repeat 3]

One class, three interactions as in the challenge: a 2D box on its middle slice, then a positive click,
then a negative one. The session keeps its state between interactions (its image is set once: that time
is printed apart); ours does what one call of the container does for that class: intensity statistics,
the field of view, the network pass and the fused label map. The object fits the patch (zoom 1) and
AutoZoom is off on both sides (`--autozoom` turns it on): random weights answer noise on every patch
border, so AutoZoom would zoom to 4 and refine dozens of patches, a cost no trained model pays.
Sides alternate within each repeat; printed: median seconds per interaction and ours / theirs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from inference.case_io import Box, Case, ClassPrompt, box_from_dict
from inference.fusion import fuse_classes
from inference.harness.boxes import organiser_box
from inference.class_task import Effort, prepare
from inference.pipelines import load_model
from inference.pipelines import segment_class
from scripts.synthetic_cases import grid_volume


def interactions(mask: np.ndarray) -> tuple[Box, list[tuple[str, tuple[int, int, int]]]]:
    """The organisers' box of the object and two clicks: at the box's centre, and just outside it."""
    box = box_from_dict(organiser_box(mask), mask.shape)
    centre = tuple((a + b) // 2 for a, b in zip(box.lo, box.hi))
    outside = (centre[0], centre[1], min(box.hi[2] + 2, mask.shape[2] - 1))
    return box, [("fg", centre), ("bg", outside)]


class Theirs:
    """The package's session: image set once, interactions added one by one."""

    def __init__(self, folder: Path, image: np.ndarray, autozoom: bool):
        from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

        with contextlib.redirect_stdout(io.StringIO()):
            self.session = nnInteractiveInferenceSession(
                device=torch.device("cpu"), use_torch_compile=False, verbose=False,
                torch_n_threads=torch.get_num_threads(), do_autozoom=autozoom, enable_undo=False)
            self.session.initialize_from_trained_model_folder(str(folder))
        self.image = image

    def start(self) -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            self.session.set_image(self.image[None].astype(np.float32))
            self.session.set_target_buffer(torch.zeros(self.image.shape, dtype=torch.uint8))
            self.session._finish_preprocessing_and_initialize_interactions()
        return time.perf_counter() - t0

    def interact(self, box: Box, step: tuple[str, tuple[int, int, int]] | None) -> float:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            if step is None:
                bounds = [[box.z_mid, box.z_mid + 1], [box.lo[1], box.hi[1] + 1], [box.lo[2], box.hi[2] + 1]]
                self.session.add_bbox_interaction(bounds, include_interaction=True)
            else:
                self.session.add_point_interaction(step[1], include_interaction=step[0] == "fg")
        return time.perf_counter() - t0


def ours_interact(model, image: np.ndarray, box: Box, steps: list, prev: np.ndarray | None,
                  autozoom: bool) -> tuple[float, np.ndarray]:
    """One call's work for the class after `steps` clicks; returns seconds and the label map."""
    fg = np.array([p for kind, p in steps if kind == "fg"], dtype=np.int64).reshape(-1, 3)
    bg = np.array([p for kind, p in steps if kind == "bg"], dtype=np.int64).reshape(-1, 3)
    prompt = ClassPrompt(1, box=box, fg=fg, bg=bg, order=tuple(kind for kind, _ in steps))
    t0 = time.perf_counter()
    case = Case("benchmark", image, (1.0, 1.0, 1.0), [prompt], prev_pred=prev)
    outcome = segment_class(model, prepare(case, model), prompt, Effort(model.spec.patch_size, 5 if autozoom else 1))
    labels = fuse_classes(image.shape, [outcome.probability] if outcome.probability is not None else [])
    return time.perf_counter() - t0, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a model folder in the nnInteractive v1.0 layout")
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--autozoom", action="store_true", help="AutoZoom and refinement on both sides")
    parser.add_argument("--objects", type=int, default=27,
                        help="objects in the image (one per grid cell; the first is segmented): fewer = larger = more zoom")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    image, labels = grid_volume(tuple(args.shape), args.objects, seed=0)
    box, clicks = interactions(labels == 1)
    theirs = Theirs(args.folder, image, args.autozoom)
    ours = {"ours (torch)": load_model(args.folder, torch.device("cpu"), backend="torch")}
    try:
        ours["ours (openvino)"] = load_model(args.folder, torch.device("cpu"), backend="openvino")
    except (FileNotFoundError, ImportError) as exc:
        print(f"no OpenVINO run: {exc}")
    patch = ours["ours (torch)"].spec.patch_size
    print(f"{args.folder}: patch {patch}, image {tuple(args.shape)}, box {box.lo}..{box.hi}, "
          f"{torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.repeat} repeats")
    names = ["box", "+ fg click", "+ bg click"]
    times: dict[str, list[list[float]]] = {"nninteractive session": []}
    setup = []
    for r in range(args.repeat):
        setup.append(theirs.start())
        times["nninteractive session"].append([theirs.interact(box, None)] +
                                              [theirs.interact(box, step) for step in clicks])
        for side, model in ours.items():
            prev, row = None, []
            for k in range(3):
                seconds, prev = ours_interact(model, image, box, clicks[:k], prev, args.autozoom)
                row.append(seconds)
            times.setdefault(side, []).append(row)
        print(f"  repeat {r + 1}: " + ", ".join(f"{side} {sum(rows[-1]):.1f} s" for side, rows in times.items()),
              flush=True)
    print(f"session set_image (once per image, not counted below): {np.median(setup):.2f} s")
    reference = np.median(times["nninteractive session"], axis=0)
    print(f"{'':24s}" + "".join(f"{n:>14s}" for n in names) + f"{'total':>10s}{'ours/theirs':>13s}")
    for side, rows in times.items():
        med = np.median(rows, axis=0)
        print(f"{side:24s}" + "".join(f"{v:14.2f}" for v in med) + f"{med.sum():10.2f}"
              + f"{med.sum() / reference.sum():13.2f}")


if __name__ == "__main__":
    main()
