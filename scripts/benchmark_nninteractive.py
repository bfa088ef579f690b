"""Time forward passes of a model folder (e.g. nnInteractive v1.0, or random weights in its layout) on this machine.

    .venv/bin/python -m scripts.benchmark_nninteractive DIR [--patch 128 [192 ...]] [--repeat 2]

Loads DIR as predict.sh would (patch overridden per run), builds the network input of one click
through the model's pipeline, and prints the load time and seconds per forward pass for each patch.
Per-call times through `sh predict.sh`: SEGFM_PATCH=128 python -m scripts.benchmark_calls --model DIR.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from inference.case_io import Case, ClassPrompt
from inference.class_task import Effort, prepare
from inference.pipelines import load_model
from inference.pipelines import segment_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--patch", type=int, nargs="+", default=[128])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    image = np.random.default_rng(0).integers(0, 255, (96, 256, 256)).astype(np.uint8)
    prompt = ClassPrompt(1, fg=np.array([[48, 128, 128]]), order=("fg",))
    case = Case("benchmark", image, (1.0, 1.0, 1.0), [prompt])
    print(f"{args.folder}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for patch in args.patch:
        t0 = time.perf_counter()
        model = load_model(args.folder, patch_size=patch)
        loaded = time.perf_counter() - t0
        n = sum(p.numel() for p in model.network.parameters())
        prepared = prepare(case, model)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            segment_class(model, prepared, prompt, Effort(patch, max_passes=1))
            times.append(time.perf_counter() - t0)
        print(f"patch {patch}^3 on {model.device}: {n / 1e6:.1f} M parameters, loaded in {loaded:.1f} s, "
              f"one pass (input + forward) " + ", ".join(f"{t:.1f}" for t in times) + " s", flush=True)


if __name__ == "__main__":
    main()
