"""Time boundary refinement (inference/segfm/boundary.py) of one class at zoom 1 (a box call), 2, 3 and 4, patch 96.

    .venv/bin/python -m scripts.benchmark_boundary

A ball filling 3/4 of the patch, a random uint8 image of the crop's size; prints seconds and the
process's peak memory after each zoom (ascending, so each peak is that zoom's).
"""
from __future__ import annotations

import resource
import time

import numpy as np
import torch

from inference.segfm.boundary import BoundaryRefinement, refine_boundary
from inference.field_of_view import FieldOfView
from inference.fusion import PatchProbability

PATCH = 96


def main() -> None:
    torch.set_num_threads(2)
    grid = ((np.indices((PATCH,) * 3) - (PATCH - 1) / 2) ** 2).sum(axis=0)
    ball = torch.from_numpy((grid <= (0.375 * PATCH) ** 2).astype(np.float32))
    settings = BoundaryRefinement(min_zoom_with_box=1.0)
    for zoom in (1, 2, 3, 4):
        side = PATCH * zoom
        patch = PatchProbability.from_network(1, FieldOfView((0, 0, 0), side, PATCH), ball)
        image = np.random.default_rng(0).integers(0, 256, (side,) * 3, dtype=np.uint8)
        t0 = time.perf_counter()
        refine_boundary(patch, image, settings, with_box=True)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"zoom {zoom}: crop {side}^3, {seconds:.2f} s, peak memory {peak:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
