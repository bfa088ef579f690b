"""Two trivial predictors that set the floors a trained model must beat, run through the same harness.

    python -m training.floors box-fill INPUT_DIR OUTPUT_DIR      # every class = its 3D box (nothing without one)
    python -m training.floors click-balls INPUT_DIR OUTPUT_DIR   # every class = balls at its fg clicks

They read and write challenge files with the container's own `case_io`, like `predict.sh`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from inference.case_io import Case, read_case, write_segs
from inference.predict import fallback_segs
from inference.prompts import ball_template, clipped_placement

BALL_RADIUS = 5.0


def box_fill(case: Case) -> np.ndarray:
    """The container's own answer when the network cannot run: each class's box."""
    return fallback_segs(case)


def click_balls(case: Case) -> np.ndarray:
    segs = np.zeros(case.shape, dtype=np.uint8)
    ball = ball_template(BALL_RADIUS, "binary") > 0
    r = ball.shape[0] // 2
    for prompt in case.prompts:
        for centre in prompt.fg:
            placed = clipped_placement(np.asarray(centre) - r, ball.shape[0], case.shape)
            if placed is not None:
                src, dst = placed
                segs[dst][ball[src]] = prompt.label
    return segs


PREDICTORS = {"box-fill": box_fill, "click-balls": click_balls}


def main(argv: list[str] | None = None) -> int:
    kind, inputs, outputs = (argv if argv is not None else sys.argv[1:])[:3]
    Path(outputs).mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(inputs).glob("*.npz")):
        case = read_case(path)
        write_segs(Path(outputs) / path.name, PREDICTORS[kind](case).reshape(case.file_shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
