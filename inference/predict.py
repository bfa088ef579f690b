"""Segment every challenge case in a folder: `python -m inference [INPUT_DIR [OUTPUT_DIR]] [--model DIR]`.

Exit code: 0 when every case was answered; 1 when some file could not be read at all (no
image shape to answer with) or its answer could not be written; 2 when the model could not
be loaded (every readable case then gets its fallback: previous prediction, else its
boxes, else empty); 3 when the input folder does not exist.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .case_io import Case, CaseError, empty_segs, read_case, write_segs
from .fusion import MaskProbability, apply_clicks, fuse_classes
from .model import Model, load_model
from .segment import fallback, prepare, segment_class

DEFAULT_INPUTS = "/workspace/inputs"
DEFAULT_OUTPUTS = "/workspace/outputs"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "model_weights" / "default"
MODEL_ENV = "SEGFM_MODEL"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def predict_case(model: Model, case: Case) -> np.ndarray:
    """The multiclass label map for one case; a class that fails falls back instead of failing the case."""
    prepared = prepare(case, model)
    classes = []
    for i, prompt in enumerate(case.prompts):
        t0 = time.perf_counter()
        try:
            outcome = segment_class(model, prepared, prompt)
            probability, how = outcome.probability, outcome.how
        except Exception as exc:  # one bad class must not cost the others
            probability = fallback(prepared, prompt)
            how = f"FAILED ({type(exc).__name__}: {exc}); fallback {'previous/box' if probability else 'empty'}"
        if probability is not None:
            classes.append(probability)
        log(f"[{case.name}] class {i + 1}/{len(case.prompts)} (label {prompt.label}): {how}, "
            f"{time.perf_counter() - t0:.1f} s")
    return apply_clicks(fuse_classes(case.shape, classes), case.prompts)


def fallback_segs(case: Case) -> np.ndarray:
    """Previous prediction, else the boxes, else empty: what a failed case answers."""
    if case.prev_pred is not None:
        return case.prev_pred
    boxes = [MaskProbability(p.label, [[a, b + 1] for a, b in zip(p.box.lo, p.box.hi)])
             for p in case.prompts if p.box is not None]
    return fuse_classes(case.shape, boxes)


def run(input_dir: Path, output_dir: Path, model: Model | None) -> int:
    """Answer every `.npz` in `input_dir`; without a model every case gets its fallback."""
    files = sorted(p for p in input_dir.iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        log(f"no .npz files in {input_dir}")
    unanswered = 0
    for path in files:
        t0 = time.perf_counter()
        try:
            case = read_case(path)
        except CaseError as exc:
            log(f"[{path.name}] ERROR: {exc}; no output written")
            unanswered += 1
            continue
        try:
            segs = predict_case(model, case) if model is not None else fallback_segs(case)
        except Exception as exc:  # e.g. out of memory: still answer with the right shape
            log(f"[{path.name}] ERROR: {type(exc).__name__}: {exc}; writing the fallback")
            segs = fallback_segs(case)
        if segs.shape != case.shape or segs.dtype != np.uint8:
            log(f"[{path.name}] ERROR: internal shape/dtype mismatch {segs.shape} {segs.dtype}; writing empty")
            segs = empty_segs(case.shape)
        try:
            write_segs(output_dir / path.name, segs)
        except OSError as exc:  # unwritable folder or full disk: say so, go on with the next case
            log(f"[{path.name}] ERROR: cannot write the output: {exc}")
            unanswered += 1
            continue
        log(f"[{path.name}] done: {len(case.prompts)} classes, shape {case.shape}, "
            f"{time.perf_counter() - t0:.1f} s")
    return 1 if unanswered else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", nargs="?", default=DEFAULT_INPUTS)
    parser.add_argument("output_dir", nargs="?", default=DEFAULT_OUTPUTS)
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV) or str(DEFAULT_MODEL),
                        help=f"model folder (default: ${MODEL_ENV} or {DEFAULT_MODEL})")
    args = parser.parse_args(argv)
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        log(f"input folder {input_dir} does not exist")
        return 3
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    try:
        model = load_model(args.model)
        log(f"model {args.model} on {model.device} loaded in {time.perf_counter() - t0:.1f} s")
    except Exception as exc:
        log(f"ERROR: cannot load model {args.model}: {type(exc).__name__}: {exc}; answering with fallbacks")
        run(input_dir, output_dir, None)
        return 2
    return run(input_dir, output_dir, model)


if __name__ == "__main__":
    sys.exit(main())
