"""A model's logit offsets, chosen on tuning cases (never the validation ones) and written into its model.json.

    .venv/bin/python -m training.calibrate cases OUT_CASES [--large]        # the validation recipe, another seed, no MNI152
    .venv/bin/python -m training.calibrate run OUT_CASES MODEL_DIR [--box 0 0.5 1 1.5] [--zoomed-box 0 1] [--clicks 0 -0.5 -1] [--first-click 0 -1]
                                               [--zoomed-click 1 2 3] [--write]

`run` replays the official protocol in this process (the container's `predict.run`, no time
budget) for every offset of each prompt setting, and scores an offset by the mean of DSC_AUC and
NSD_AUC over the cases; one setting at a time, the others as MODEL_DIR/model.json has them. With
`--write` the best offset of each setting goes into MODEL_DIR/model.json (`logit_offset`), which the
container adds to the network's foreground logit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from inference import predict
from inference.harness.metrics import auc
from inference.harness.protocol import TrainingCase, load_training_case, replay_case
from inference.model import SPEC_FILE, Model
from inference.pipelines import load_model
from inference.segfm.settings import BOX_SETTINGS, PROMPT_SETTINGS

from .validate import case_tool_parser, write_validation_cases

TUNING_SEED = 2_000_003  # neither the validation seed nor a training draw


@dataclasses.dataclass
class InProcessPredictor:
    """The harness's predictor interface, answering with the container's `predict.run` on a loaded model."""

    model: Model

    def run(self, inputs: Path, outputs: Path, log: Path) -> float:
        t0 = time.perf_counter()
        with open(log, "a") as out, contextlib.redirect_stderr(out):
            predict.run(inputs, outputs, self.model, use_budget=False)
        return time.perf_counter() - t0


def score(model: Model, cases: list[TrainingCase], setting: str, offset: float, workdir: Path) -> dict[str, float]:
    """Mean DSC_AUC and NSD_AUC over `cases` with the model's foreground logit moved by `offset` in `setting`."""
    settings = model.spec.settings
    settings = dataclasses.replace(settings, logit_offset={**settings.logit_offset, setting: offset})
    model.spec = dataclasses.replace(model.spec, settings=settings)
    results = [replay_case(case, InProcessPredictor(model), workdir) for case in cases]
    failed = [r.name for r in results if r.error]
    if failed:
        raise RuntimeError(f"cases could not be scored: {failed}")
    return {"DSC_AUC": float(np.mean([auc(r.dsc) for r in results])),
            "NSD_AUC": float(np.mean([auc(r.nsd) for r in results]))}


def calibrate(model: Model, cases: list[Path], offsets: dict[str, list[float]], workdir: Path) -> dict[str, list]:
    """Per setting: [(offset, scores)] for every offset tried, best first (mean of DSC_AUC and NSD_AUC).

    The model's spec is as before afterwards; each case is read once with boxes and once without."""
    table, spec, loaded = {}, model.spec, {}
    try:
        for setting, candidates in offsets.items():
            no_box = setting not in BOX_SETTINGS  # `clicks` and `first_click` replay the same no-box cases
            if no_box not in loaded:
                loaded[no_box] = [load_training_case(path, no_box=no_box) for path in cases]
            rows = [(offset, score(model, loaded[no_box], setting, offset, workdir)) for offset in candidates]
            table[setting] = sorted(rows, key=lambda r: -(r[1]["DSC_AUC"] + r[1]["NSD_AUC"]) / 2)
    finally:
        model.spec = spec
    return table


def write_offsets(folder: Path, offsets: dict[str, float]) -> None:
    """Set `logit_offset` in the folder's model.json (atomically)."""
    path = folder / SPEC_FILE
    raw = json.loads(path.read_text())
    raw["logit_offset"] = {**raw.get("logit_offset", {}), **offsets}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser, r = case_tool_parser(__doc__.splitlines()[0])
    r.add_argument("model", type=Path)
    r.add_argument("--box", nargs="*", type=float, default=[0.0, 0.5, 1.0, 1.5], help="offsets tried with boxes")
    r.add_argument("--zoomed_box", "--zoomed-box", nargs="*", type=float, default=[0.0, 1.0],
                   help="offsets tried for boxes seen zoomed out (bigger than the patch)")
    r.add_argument("--clicks", nargs="*", type=float, default=[0.0, -0.5, -1.0], help="offsets tried without")
    r.add_argument("--first_click", "--first-click", nargs="*", type=float, default=[0.0, -1.0],
                   help="offsets tried for the lone first click without a box")
    r.add_argument("--zoomed_click", "--zoomed-click", nargs="*", type=float, default=[],
                   help="offsets tried for a click answer on a view the scale search widened (none by default)")
    r.add_argument("--write", action="store_true", help="write the best offsets into MODEL/model.json")
    args = parser.parse_args(argv)
    if args.command == "cases":
        for path in write_validation_cases(args.out, seed=TUNING_SEED, with_mni=False, large=args.large):
            print(path)
        return
    model = load_model(args.model, backend="auto")
    cases = sorted(args.cases.glob("*.npz"))
    with tempfile.TemporaryDirectory(prefix="segfm-calibrate-") as tmp:
        table = calibrate(model, cases, {s: getattr(args, s) for s in PROMPT_SETTINGS if getattr(args, s)}, Path(tmp))
    for setting, rows in table.items():
        for offset, scores in rows:
            print(f"{setting:11s} offset {offset:+.2f}: DSC_AUC {scores['DSC_AUC']:.3f} NSD_AUC {scores['NSD_AUC']:.3f}")
    best = {setting: rows[0][0] for setting, rows in table.items()}
    print(f"best: {best}")
    if args.write:
        write_offsets(args.model, best)
        print(f"written to {args.model / SPEC_FILE}")


if __name__ == "__main__":
    main()
