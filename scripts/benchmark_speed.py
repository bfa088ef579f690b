"""Where one call's time goes: a per-stage table of `predict.sh` calls, whole process per call as the evaluator runs it.

    .venv/bin/python -m scripts.benchmark_speed [--cases mr ct15 ct1000 c100] [--model default DIR ...]
        [--calls box click] [--patch 64] [--backend torch openvino] [--json FILE]

Cases (synthetic, one ellipsoid per class in noise, written compressed like challenge files):
  mr     MR 25x256x256, 1 class        ct15   CT 300x512x512, 15 classes
  ct1000 CT 1000x512x512, 5 classes    c100   180x220x180, 100 classes
Calls: `box` is the first call (boxes only); `click` is the next round (the box call's answer as the
previous prediction, plus the harness's simulated click per class). Each call is a fresh process running the container's entry point
(`python -m inference`, as `predict.sh` does, with `--no-budget` so that the full work is timed;
`--budget` keeps the budget, for models that cannot do the full work in time, e.g. ResEnc-L on a CPU).
`--code A B` compares checkouts (e.g. `git worktree add /tmp/before COMMIT`) in one run.

Stages (seconds of wall time, exclusive of nested stages): process start and exit (interpreter start to
our first line, and after our last), imports, model load, npz read, preprocessing (statistics, crops,
prompt channels), forward (network passes), resampling back (patch -> volume), boundary refinement (the
rest of boundary.py), fusion, write, other
(everything else: AutoZoom tests, logging, bookkeeping). The table's columns are the calls.
"""
from __future__ import annotations

import time

STARTED = time.time()  # before any import: the child's first moment

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = {  # name: (shape z, y, x; classes)
    "mr": ((25, 256, 256), 1),
    "ct15": ((300, 512, 512), 15),
    "ct1000": ((1000, 512, 512), 5),
    "c100": ((180, 220, 180), 100),
    "tiny": ((16, 64, 64), 2),  # for the test of this script
}
STAGE_ORDER = ("process start/exit", "imports", "model load", "npz read", "preprocessing", "forward",
               "resampling back", "boundary refinement", "fusion", "write", "other")
# (module, attribute, stage): the functions whose wall time is a stage; a nested stage's time is its own.
# Modules a checkout lacks are skipped: the names before the pipelines got their folders come last, so that
# `--code` can time a checkout of either layout.
STAGE_FUNCTIONS = (
    ("inference.predict", "load_model", "model load"),
    ("inference.predict", "read_case", "npz read"),
    ("inference.segmenter", "prepare", "preprocessing"),
    ("inference.predict", "prepare", "preprocessing"),
    ("inference.segfm.segment", "network_input", "preprocessing"),
    ("inference.segfm.tiles", "network_input", "preprocessing"),
    ("inference.nninteractive.segment", "network_input", "preprocessing"),
    ("inference.nninteractive.segment", "class_stamps", "preprocessing"),
    ("inference.model", "Model.foreground_logit", "forward"),
    ("inference.fusion", "upsample_region", "resampling back"),
    ("inference.segfm.boundary", "upsample_region", "resampling back"),
    ("inference.segfm.segment", "refine_boundary", "boundary refinement"),
    ("inference.nninteractive.segment", "upsampled", "resampling back"),
    ("inference.predict", "fuse_classes", "fusion"),
    ("inference.predict", "apply_clicks", "fusion"),
    ("inference.predict", "write_segs", "write"),
    ("inference.segment", "network_input", "preprocessing"),
    ("inference.segment_nninteractive", "network_input", "preprocessing"),
    ("inference.segment_nninteractive", "class_stamps", "preprocessing"),
    ("inference.model", "Model.margin", "forward"),
    ("inference.boundary", "upsample_region", "resampling back"),
    ("inference.segment", "refine_boundary", "boundary refinement"),
    ("inference.segment_nninteractive", "upsampled", "resampling back"),
)


# ----------------------------------------------------------------------------- the child: one timed call


class StageClock:
    """Exclusive wall time per stage of wrapped functions (a stack: an inner stage's time is not its caller's)."""

    def __init__(self, now=time.perf_counter) -> None:
        self.now = now
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []  # [stage, start, time spent in nested stages]

    def wrap(self, function, stage: str):
        def timed(*args, **kwargs):
            self._stack.append([stage, self.now(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                name, start, nested = self._stack.pop()
                spent = self.now() - start
                self.seconds[name] = self.seconds.get(name, 0.0) + spent - nested
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._stack:
                    self._stack[-1][2] += spent
        return timed

    def install(self) -> None:
        """Wrap every function of STAGE_FUNCTIONS in place (modules that fail to import are skipped)."""
        import importlib

        for module_name, path, stage in STAGE_FUNCTIONS:
            try:
                owner = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            *classes, attribute = path.split(".")
            for name in classes:
                owner = getattr(owner, name)
            if hasattr(owner, attribute):
                setattr(owner, attribute, self.wrap(getattr(owner, attribute), stage))


def child(code: str, args: list[str]) -> None:
    """Run one call like `python -m inference ARGS` with the checkout `code`; print the stage seconds as JSON."""
    sys.path.insert(0, code)
    t0 = time.perf_counter()
    import inference.predict as predict
    imports = time.perf_counter() - t0
    clock = StageClock()
    clock.install()
    t1 = time.perf_counter()
    code = predict.main(args)
    body = time.perf_counter() - t1
    seconds = {"imports": imports, **clock.seconds}
    seconds["other"] = body - sum(v for k, v in clock.seconds.items())
    seconds["forward passes"] = clock.calls.get("forward", 0)
    print(json.dumps({"started": STARTED, "finished": time.time(), "exit_code": code, "seconds": seconds}), flush=True)
    if hasattr(predict, "finish"):  # end as `python -m inference` ends
        predict.finish(code)


# ----------------------------------------------------------------------------- the parent: cases and the table


def write_box_call(name: str, folder: Path) -> Path:
    """The first call's input folder (boxes only); the labels are kept for the click call."""
    import numpy as np

    from scripts.synthetic_cases import case_arrays, grid_volume, write_case

    shape, classes = CASES[name]
    image, labels = grid_volume(shape, classes, seed=0)
    inputs = folder / name / "box" / "in"
    write_case(inputs / f"{name}.npz", case_arrays(image, labels, boxes=True, keep_gts=False))
    np.save(folder / name / "labels.npy", labels)
    return inputs


def click_call(name: str, folder: Path, previous: Path) -> Path:
    """A later round: the boxes, the previous answer, and the simulated user's click per class on its errors."""
    import numpy as np

    from inference.harness.simulated_user import simulate_round
    from scripts.synthetic_cases import write_case

    labels = np.load(folder / name / "labels.npy")
    with np.load(previous) as npz:
        prev = npz["segs"]
    with np.load(folder / name / "box" / "in" / f"{name}.npz", allow_pickle=True) as npz:
        arrays = {k: npz[k] for k in ("imgs", "spacing", "boxes")}
    clicks, order = [], []
    for click in simulate_round(prev, labels, list(range(1, int(labels.max()) + 1))):
        entry = {"fg": [], "bg": []}
        if click is not None:
            entry[click.kind].append(list(click.voxel))
        clicks.append(entry)
        order.append([None if click is None else click.kind])
    arrays.update(prev_pred=prev, clicks=np.array(clicks, dtype=object),
                  clicks_order=np.array(order + [None], dtype=object)[:-1])
    inputs = folder / name / "click" / "in"
    write_case(inputs / f"{name}.npz", arrays)
    return inputs


def time_call(code: Path, inputs: Path, outputs: Path, extra: list[str], env: dict) -> dict:
    """One call in a fresh process; its stage seconds, with process start/exit measured from outside."""
    spawned = time.time()
    result = subprocess.run([sys.executable, __file__, "--child", str(code), str(inputs), str(outputs), *extra],
                            env=env, capture_output=True, text=True)
    ended = time.time()
    if result.returncode != 0 or not result.stdout.strip():
        sys.exit(f"call failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    seconds = report["seconds"]
    seconds["process start/exit"] = (report["started"] - spawned) + (ended - report["finished"])
    seconds["total"] = ended - spawned
    return seconds


def print_table(columns: dict[str, dict]) -> None:
    names = list(columns)
    width = max(12, *(len(n) for n in names))
    print(f"{'stage':20s}" + "".join(f"{n:>{width + 2}s}" for n in names))
    for stage in (*STAGE_ORDER, "total"):
        row = [columns[n].get(stage, 0.0) for n in names]
        print(f"{stage:20s}" + "".join(f"{v:>{width + 2}.2f}" for v in row))
    print(f"{'forward passes':20s}" + "".join(f"{columns[n].get('forward passes', 0):>{width + 2}d}" for n in names))
    print(f"{'s per pass':20s}" + "".join(
        f"{columns[n].get('forward', 0.0) / max(columns[n].get('forward passes', 0), 1):>{width + 2}.3f}" for n in names))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=[c for c in CASES if c != "tiny"])
    parser.add_argument("--model", nargs="+", default=["default"], help="model folders ('default': the shipped one)")
    parser.add_argument("--calls", nargs="+", choices=["box", "click"], default=["box", "click"])
    parser.add_argument("--patch", type=int, default=None, help="patch side instead of the model's (SEGFM_PATCH)")
    parser.add_argument("--budget", action="store_true",
                        help="keep the time budget (degraded effort where it does not fit) instead of timing the full work")
    parser.add_argument("--backend", nargs="+", default=[None], help="SEGFM_BACKEND values to compare (CPU)")
    parser.add_argument("--code", nargs="+", type=Path, default=[REPO],
                        help="checkouts of this repository to compare, e.g. a worktree of an older commit (default: this one)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--keep", type=Path, default=None, help="write the cases and answers here (else a temporary folder)")
    args = parser.parse_args()
    import torch

    print(f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for name in args.cases:
            shape, classes = CASES[name]
            t0 = time.perf_counter()
            box_inputs = write_box_call(name, folder)
            print(f"\n{name}: {'x'.join(map(str, shape))}, {classes} class(es) (cases written in "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
            columns = {}
            for code, model, backend in itertools.product(args.code, args.model, args.backend):
                tag = "/".join([*([code.name] if len(args.code) > 1 else []),
                                "default" if model == "default" else Path(model).name, *([backend] if backend else [])])
                env = {**os.environ, **({"SEGFM_BACKEND": backend} if backend else {})}
                extra = ([] if model == "default" else ["--model", model]) + \
                    (["--patch", str(args.patch)] if args.patch else []) + ([] if args.budget else ["--no-budget"])
                answer = folder / name / f"out-{tag.replace('/', '-')}"
                for call in ("box", "click"):
                    if call == "box" and call not in args.calls and "click" not in args.calls:
                        continue
                    if call == "click" and call not in args.calls:
                        continue
                    # a click round answers the box call: the box call always runs before it
                    inputs = click_call(name, folder, answer / f"{name}.npz") if call == "click" else box_inputs
                    seconds = time_call(code, inputs, answer, extra, env)
                    if call in args.calls:
                        columns[f"{tag} {call}"] = seconds
                        print(f"  {tag} {call}: {seconds['total']:.1f} s (a sixth of the case's budget: "
                              f"{90.0 * classes / 6:.0f} s)", flush=True)
            print_table(columns)
            results[name] = columns
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
