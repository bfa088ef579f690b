"""Time the challenge protocol through `sh predict.sh`, whole process per call as the evaluator does.

    .venv/bin/python -m scripts.benchmark_calls [--shape 64 256 256] [--classes 1] [--no-box] [--model DIR] [--no-budget]

A case with boxes gets 6 calls (box, then 5 click rounds), one without gets 5; each round's
clicks come from the harness's simulated user (the official rule). Prints seconds per call,
the total, and the share of the budget (90 s x classes) it uses. Target on a 2-core CPU:
1 class <= 45 s.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from inference.harness.simulated_user import simulate_round
from scripts.synthetic_cases import case_arrays, make_volume, write_case

REPO = Path(__file__).resolve().parent.parent

BUDGET_PER_CLASS = 90.0


def next_clicks(arrays: dict, labels: np.ndarray, segs: np.ndarray) -> None:
    """Append the simulated user's click (or None) per class to `clicks` and `clicks_order`."""
    for i, click in enumerate(simulate_round(segs, labels, list(range(1, int(labels.max()) + 1)))):
        if click is None:
            arrays["clicks_order"][i].append(None)
            continue
        arrays["clicks"][i][click.kind].append(list(click.voxel))
        arrays["clicks_order"][i].append(click.kind)


def run_protocol(image, labels, boxes: bool, model: str | None, workdir: Path, budget: bool = True) -> list[float]:
    n = int(labels.max())
    arrays = case_arrays(image, labels, boxes=boxes, keep_gts=False)
    arrays["clicks"] = [{"fg": [], "bg": []} for _ in range(n)]
    arrays["clicks_order"] = [[] for _ in range(n)]
    segs = np.zeros_like(labels)
    times = []
    env = {**os.environ, "PYTHON": sys.executable}
    extra = (["--model", model] if model else []) + ([] if budget else ["--no-budget"])
    for call in range(6 if boxes else 5):
        if call > 0 or not boxes:
            next_clicks(arrays, labels, segs)
            arrays["prev_pred"] = segs
        inputs, outputs = workdir / f"in{call}", workdir / f"out{call}"
        call_arrays = {k: v for k, v in arrays.items() if k in ("imgs", "spacing", "boxes", "prev_pred")}
        if "prev_pred" in call_arrays:
            call_arrays["clicks"] = np.array(arrays["clicks"], dtype=object)
            call_arrays["clicks_order"] = np.array([list(o) for o in arrays["clicks_order"]] + [None],
                                                   dtype=object)[:-1]
        write_case(inputs / "case.npz", call_arrays)
        t0 = time.perf_counter()
        result = subprocess.run(["sh", str(REPO / "predict.sh"), str(inputs), str(outputs), *extra],
                                env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if result.returncode != 0:
            sys.exit(f"call {call} failed ({result.returncode}):\n{result.stderr}")
        with np.load(outputs / "case.npz") as npz:
            segs = npz["segs"]
        dice = [2 * ((segs == c) & (labels == c)).sum() / max((segs == c).sum() + (labels == c).sum(), 1)
                for c in range(1, n + 1)]
        print(f"  call {call + 1}: {times[-1]:5.1f} s   (DSC {np.mean(dice):.3f} after this call)",
              flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--no-box", action="store_true")
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-budget", action="store_true", help="full effort on every call (time what it costs)")
    args = parser.parse_args()
    image, labels = make_volume(tuple(args.shape), args.classes, seed=0)
    print(f"shape {tuple(args.shape)}, {args.classes} class(es), {'no box' if args.no_box else 'with box'}, "
          f"{os.cpu_count()} cores, model {args.model or 'default'}")
    with tempfile.TemporaryDirectory() as tmp:
        times = run_protocol(image, labels, not args.no_box, args.model, Path(tmp), not args.no_budget)
    budget = BUDGET_PER_CLASS * args.classes
    print(f"total {sum(times):.1f} s over {len(times)} calls "
          f"({sum(times) / budget:.0%} of the {budget:.0f} s budget; target <= {budget / 2:.0f} s)")


if __name__ == "__main__":
    main()
