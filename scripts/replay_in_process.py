"""Replay the official protocol for a model folder on a folder of cases, in this process, with no time budget.

    .venv/bin/python -m scripts.replay_in_process MODEL CASES OUT.json [--patch P] [--modes box nobox] [--threads T]

With a box: the box call and 5 click rounds; `nobox`: the clicks only (the box call scores 0). Prints each
case's per-round DSC and its AUCs, then the means over the cases and over the classes of each size stratum
(against the model's patch, as the harness tags them). Faster than `inference.harness run` through
predict.sh (no process per call) and free of the budget's degradations: for comparing weights and settings.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from inference.harness.metrics import auc
from inference.harness.protocol import class_rows, load_training_case, replay_case
from inference.harness.report import format_strata, modality, summarize_strata
from inference.pipelines import load_model
from training.calibrate import InProcessPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("cases", type=Path)
    parser.add_argument("out", type=Path, help="per case and mode: DSC and NSD per round, AUCs (JSON)")
    parser.add_argument("--patch", type=int, help="run the model at this patch instead of its own")
    parser.add_argument("--modes", nargs="+", choices=["box", "nobox"], default=["box", "nobox"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, torch.device("cpu"), patch_size=args.patch, backend="auto")
    print(f"{'openvino' if model.cpu_forward is not None else 'torch'}, patch {model.spec.patch_size}", flush=True)
    results, per_class = {}, {mode: [] for mode in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            for path in sorted(args.cases.glob("*.npz")):
                case = load_training_case(path, no_box=mode == "nobox")
                r = replay_case(case, InProcessPredictor(model), Path(tmp))
                key = f"{path.stem}-{mode}"
                per_class[mode] += [{**row, "modality": modality(path.name), "over_budget": False}
                                    for row in class_rows(r, model.spec.patch_size)]
                results[key] = {"dsc": [round(float(v), 4) for v in r.dsc], "nsd": [round(float(v), 4) for v in r.nsd],
                                "error": r.error, "DSC_AUC": auc(r.dsc), "NSD_AUC": auc(r.nsd)}
                print(f"{key}: DSC {results[key]['dsc']}, DSC_AUC {auc(r.dsc):.3f}, NSD_AUC {auc(r.nsd):.3f}"
                      f"{' ' + r.error if r.error else ''}", flush=True)
                args.out.write_text(json.dumps(results, indent=1))
    for mode in args.modes:
        keys = [k for k in results if k.endswith(f"-{mode}")]
        print(f"{mode}: mean over {len(keys)} cases DSC_AUC {np.mean([results[k]['DSC_AUC'] for k in keys]):.3f} "
              f"NSD_AUC {np.mean([results[k]['NSD_AUC'] for k in keys]):.3f}")
        print(format_strata(summarize_strata(per_class[mode])))


if __name__ == "__main__":
    main()
