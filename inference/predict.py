"""Segment every challenge case in a folder: `python -m inference [INPUT_DIR [OUTPUT_DIR]] [--model DIR]`.

Every case always gets an answer of its image's shape. Each case gets a time budget (its
share of 90 s x classes, see budget.py); classes are degraded in steps as the deadline
nears (no AutoZoom or boundary refinement, half patch, previous prediction or box), and a
watchdog writes the best answer it has if a forward pass overruns.

Exit code: 0 when every case was answered; 1 when some file could not be read at all (no
image shape to answer with) or its answer could not be written; 2 when the model could not
be loaded (every readable case then gets its fallback: previous prediction, else its
boxes, else empty); 3 when the input folder does not exist; 4 when the watchdog answered
(time ran out in a forward pass; the remaining cases got their fallbacks).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .budget import CallBudget, call_index, process_started, read_ledger, record_call, share_seconds
from .case_io import Case, CaseError, ClassPrompt, read_case, write_segs
from .class_task import ClassOutcome, Effort, PreparedCase, fallback
from .fusion import ClassProbability, apply_clicks, fuse_classes
from .model import Model
from .openvino_forward import BACKENDS
from .pipelines import load_model
from .prompts import BOX_MODES
from .segmenter import Segmenter

DEFAULT_INPUTS = "/workspace/inputs"
DEFAULT_OUTPUTS = "/workspace/outputs"
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "model_weights" / "default"
MODEL_ENV = "SEGFM_MODEL"
PATCH_ENV = "SEGFM_PATCH"  # e.g. 128: a smaller patch for big networks on the CPU
BOX_MODE_ENV = "SEGFM_BOX_MODE"  # "mid_slice" or "slab": how the box prompt is drawn
BACKEND_ENV = "SEGFM_BACKEND"  # "auto", "torch" or "openvino": what runs the forward pass on the CPU
EXIT_WATCHDOG = 4
FINISH_SECONDS_PER_GVOXEL = 8.0  # fusion + write of the answer, measured ~4 s on 0.48 G voxels (2 cores)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def finishing_seconds(case: Case) -> float:
    """Time to keep for fusing and writing the answer."""
    return 1.0 + FINISH_SECONDS_PER_GVOXEL * case.image.size / 1e9


@dataclass
class CaseRun:
    """A case in progress: what the watchdog needs to answer it at any moment."""

    case: Case
    output: Path
    classes: list[ClassProbability] = field(default_factory=list)
    prepared: PreparedCase | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: bool = False

    def answer(self, partial: bool = False) -> None:
        """Fuse what is there (plus fallbacks for the classes not reached) and write it, once."""
        with self.lock:
            if self.answered:
                return
            classes = list(self.classes)
            if partial:
                done = {c.label for c in classes}
                classes += [f for p in self.case.prompts if p.label not in done
                            for f in [fallback(self.prepared, p)] if f is not None]
            write_answer(self.output, self.case, apply_clicks(fuse_classes(self.case.shape, classes), self.case.prompts))
            self.answered = True


def fallback_segs(case: Case) -> np.ndarray:
    """Previous prediction, else the boxes, else empty: what a failed case answers."""
    if case.prev_pred is not None:
        return case.prev_pred
    return fuse_classes(case.shape, [f for p in case.prompts for f in [fallback(None, p)] if f is not None])


def write_answer(path: Path, case: Case, segs: np.ndarray) -> None:
    """Write in the stored image's shape (the reader may have squeezed or padded axes)."""
    write_segs(path, segs.reshape(getattr(case, "file_shape", case.shape)))


def smaller_patch(model: Model, patch: int) -> int | None:
    """The patch to fall back to: about half of `patch`, rounded down to what the network divides by."""
    smaller = patch // 2 // model.divisor * model.divisor
    return smaller if smaller >= model.divisor else None


def choose_effort(model: Model, left: float, pass_seconds: float | None, has_box: bool) -> Effort | None:
    """Degrade in steps: full (AutoZoom, boundary refinement), one pass, one pass at a smaller patch, nothing."""
    patch = model.spec.patch_size
    if pass_seconds is None or left >= pass_seconds * (1 if has_box else 2):
        return Effort(patch, stop_zooming_at=time.monotonic() + left)
    if left >= pass_seconds:
        return Effort.one_pass(patch)
    smaller = smaller_patch(model, patch)
    if left >= pass_seconds / 6 and smaller is not None:
        return Effort.one_pass(smaller)
    return None


def segment_with_retries(segmenter: Segmenter, prompt: ClassPrompt, effort: Effort) -> ClassOutcome:
    """A CUDA out-of-memory error retries at a smaller patch, then on the CPU."""
    model, name = segmenter.model, segmenter.prepared.case.name
    try:
        return segmenter.segment(prompt, effort)
    except torch.OutOfMemoryError:
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = smaller_patch(model, effort.patch)
        if smaller is not None:
            log(f"[{name}] out of memory at patch {effort.patch}: retrying at {smaller}")
            try:
                return segmenter.segment(prompt, Effort.one_pass(smaller))
            except torch.OutOfMemoryError:
                pass
        if model.device.type != "cpu":
            log(f"[{name}] out of memory again: moving the model to the CPU")
            model.to_cpu()
            return segmenter.segment(prompt, Effort.one_pass(smaller or effort.patch))
        raise


def predict_case(model: Model, case: Case, budget: CallBudget | None = None, run: CaseRun | None = None) -> np.ndarray:
    """The label map for one case; classes degrade as the deadline nears and fall back if they fail."""
    run = run or CaseRun(case, Path(os.devnull))
    segmenter = Segmenter(model)
    prepared = run.prepared = segmenter.set_case(case)
    reserve = finishing_seconds(case)
    pass_seconds = None
    for i, prompt in enumerate(case.prompts):
        t0 = time.monotonic()
        left = budget.left() - reserve if budget else float("inf")
        effort = choose_effort(model, left, pass_seconds, prompt.box is not None)
        probability = None
        if effort is None:
            probability = fallback(prepared, prompt)
            how = f"budget: {left:.1f} s left, kept {'previous/box' if probability else 'nothing'}"
        else:
            try:
                outcome = segment_with_retries(segmenter, prompt, effort)
                probability, how = outcome.probability, outcome.how
                if outcome.passes:
                    pass_seconds = (time.monotonic() - t0) / outcome.passes * (model.spec.patch_size / effort.patch) ** 3
            except Exception as exc:  # one bad class must not cost the others
                probability = fallback(prepared, prompt)
                how = f"FAILED ({type(exc).__name__}: {exc}); fallback {'previous/box' if probability else 'empty'}"
        if probability is not None:
            run.classes.append(probability)
        log(f"[{case.name}] class {i + 1}/{len(case.prompts)} (label {prompt.label}): {how}, "
            f"{time.monotonic() - t0:.1f} s")
    return apply_clicks(fuse_classes(case.shape, run.classes), case.prompts)


def case_budget(case: Case, output_dir: Path, started: float) -> tuple[CallBudget, str, int]:
    fingerprint = f"{case.shape}/{len(case.prompts)}/{case.has_boxes}"
    index = call_index(case.round, case.has_boxes)
    spent = read_ledger(output_dir, case.name, fingerprint)
    seconds = share_seconds(len(case.prompts), case.has_boxes, case.round, spent)
    return CallBudget(started, seconds), fingerprint, index


def run(input_dir: Path, output_dir: Path, model: Model | None, use_budget: bool = True) -> int:
    """Answer every `.npz` in `input_dir`; without a model every case gets its fallback."""
    files = sorted(p for p in input_dir.iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        log(f"no .npz files in {input_dir}")
    unanswered = 0
    started = process_started()
    for n, path in enumerate(files):
        try:
            case = read_case(path)
        except CaseError as exc:
            if not answer_unreadable(path, output_dir, exc):
                unanswered += 1
            continue
        budget, fingerprint, index = case_budget(case, output_dir, started)
        current = CaseRun(case, output_dir / path.name)
        watchdog = None
        if use_budget and model is not None:
            log(f"[{path.name}] budget: call {index + 1} of {6 if case.has_boxes else 5}, "
                f"{budget.seconds:.1f} s for this call ({budget.left():.1f} s left)")
            watchdog = threading.Timer(max(budget.left(), 0.0), on_deadline, (current, files[n + 1:], output_dir))
            watchdog.daemon = True
            watchdog.start()
        try:
            segs = predict_case(model, case, budget if use_budget else None, current) \
                if model is not None else fallback_segs(case)
        except Exception as exc:  # e.g. out of memory: still answer with the right shape
            log(f"[{path.name}] ERROR: {type(exc).__name__}: {exc}; writing the fallback")
            segs = fallback_segs(case)
        if watchdog is not None:
            watchdog.cancel()
            watchdog.join()  # a timer thread left alive at exit can abort the process (SIGABRT, exit 134)
        try:
            with current.lock:
                if not current.answered:
                    write_answer(current.output, case, segs)
                    current.answered = True
        except OSError as exc:  # unwritable folder or full disk: say so, go on with the next case
            log(f"[{path.name}] ERROR: cannot write the output: {exc}")
            unanswered += 1
            continue
        record_call(output_dir, case.name, fingerprint, index, time.monotonic() - budget.started)
        log(f"[{path.name}] done: {len(case.prompts)} classes, shape {case.shape}, "
            f"{time.monotonic() - budget.started:.1f} s since start")
        started = time.monotonic()  # the next case in the folder gets its own budget
    return 1 if unanswered else 0


def answer_unreadable(path: Path, output_dir: Path, exc: CaseError) -> bool:
    """A file that cannot be segmented gets zeros of its stored shape where that is known (a missing answer
    would make the evaluator reuse a stale file); True when an answer was written."""
    shape = getattr(exc, "file_shape", None)
    log(f"[{path.name}] ERROR: {exc}; " + ("answering empty" if shape is not None else "no output written"))
    if shape is None:
        return False
    try:
        write_segs(output_dir / path.name, np.zeros(shape, np.uint8))
        return True
    except OSError as exc:
        log(f"[{path.name}] ERROR: cannot write the output: {exc}")
        return False


def on_deadline(current: CaseRun, remaining: list[Path], output_dir: Path) -> None:
    """The watchdog: answer the case with what is there, answer the rest with fallbacks, exit."""
    try:
        log(f"[{current.case.name}] budget: deadline reached during a forward pass; answering with "
            f"{len(current.classes)} of {len(current.case.prompts)} classes, the rest from fallbacks")
        current.answer(partial=True)
        for path in remaining:
            try:
                case = read_case(path)
                write_answer(output_dir / path.name, case, fallback_segs(case))
            except CaseError as exc:
                answer_unreadable(path, output_dir, exc)
            except OSError as exc:
                log(f"[{path.name}] ERROR: {exc}")
    finally:
        os._exit(EXIT_WATCHDOG)  # the stuck forward pass cannot be interrupted otherwise


def finish(code: int) -> None:
    """Exit now: every answer is written and closed, and the interpreter's teardown of torch costs ~0.3 s a call."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", nargs="?", default=DEFAULT_INPUTS)
    parser.add_argument("output_dir", nargs="?", default=DEFAULT_OUTPUTS)
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV) or str(DEFAULT_MODEL),
                        help=f"model folder (default: ${MODEL_ENV} or {DEFAULT_MODEL})")
    parser.add_argument("--patch", type=int, default=os.environ.get(PATCH_ENV) or None,
                        help=f"patch side instead of the model's (default: ${PATCH_ENV}), a multiple of its downsampling")
    parser.add_argument("--box-mode", choices=BOX_MODES, default=os.environ.get(BOX_MODE_ENV) or None,
                        help=f"box prompt as the 2D mid-slice box or the 3D slab instead of the model's (${BOX_MODE_ENV})")
    parser.add_argument("--backend", choices=BACKENDS, default=os.environ.get(BACKEND_ENV) or "auto",
                        help=f"CPU forward pass: OpenVINO when the model folder has its IR (auto), or torch (${BACKEND_ENV})")
    parser.add_argument("--no-budget", action="store_true", help="no time budget, no watchdog (debugging)")
    args = parser.parse_args(argv)
    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        log(f"input folder {input_dir} does not exist")
        return 3
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log(f"ERROR: cannot create the output folder {output_dir}: {exc}")
        return 1
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    try:
        model = load_model(args.model, patch_size=args.patch, box_mode=args.box_mode, backend=args.backend)
        engine = "openvino" if model.cpu_forward is not None else "torch"
        log(f"model {args.model} on {model.device} ({engine}) loaded in {time.perf_counter() - t0:.1f} s "
            f"(patch {model.spec.patch_size}, box {model.spec.prompts.box}, {model.spec.pipeline} pipeline)")
    except Exception as exc:
        log(f"ERROR: cannot load model {args.model}: {type(exc).__name__}: {exc}; answering with fallbacks")
        run(input_dir, output_dir, None)
        return 2
    return run(input_dir, output_dir, model, use_budget=not args.no_budget)


if __name__ == "__main__":
    sys.exit(main())
