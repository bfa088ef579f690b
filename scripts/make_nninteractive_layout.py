"""Write a folder in the official nnInteractive v1.0 layout with randomly initialised weights.

    .venv/bin/python -m scripts.make_nninteractive_layout DIR [--seed 0] [--patch 64]

Same files as the download (plans.json with ResEnc-L `3d_fullres_ps192_bs24`, dataset.json,
inference_session_class.json, fold_0/checkpoint_final.pth as an nnU-Net checkpoint, ~410 MB), so
the loader, the container and the benchmarks can be tried without the CC BY-NC-SA weights.
`--patch P` adds a configuration `3d_fullres_psP` (the same network) and names it in the checkpoint,
so that both our loader and the nninteractive package's session run ResEnc-L at P^3 (CPU benchmarks).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from inference.model import build_network, resenc_architecture
from inference.nninteractive.layout import CHECKPOINT_NAME, DEFAULT_CONFIGURATION, DEFAULT_POINT_RADIUS, PLANS_FILE, \
    SESSION_FILE
from inference.pipelines import read_spec

# v1.0's network, nnU-Net ResEnc-L, as its public plans.json describes it (Hugging Face MIC-DKFZ/nnInteractive,
# nnInteractive_v1.0/plans.json; Isensee et al., arXiv 2503.08373)
RESENC_L_FEATURES = [32, 64, 128, 256, 320, 320]
RESENC_L_BLOCKS = [1, 3, 4, 6, 6, 6]
OFFICIAL_DATASET_NAME = "Dataset225_nnInteractiveV2"
TRAINER_NAME = "nnInteractiveTrainer_stub"  # what the session falls back to for trainers it does not ship


def official_plans(architecture: dict, extra_configurations: dict | None = None) -> dict:
    """An nnU-Net plans dict shaped like v1.0's: `3d_fullres` plus `3d_fullres_ps192_bs24` inheriting from it."""
    configurations = {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2,
            "patch_size": [128, 128, 128],
            "median_image_size_in_voxels": [256, 256, 256],
            "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": architecture,
            "batch_dice": False,
        },
        DEFAULT_CONFIGURATION: {"inherits_from": "3d_fullres", "patch_size": [192, 192, 192], "batch_size": 24},
        **(extra_configurations or {}),
    }
    return {
        "dataset_name": OFFICIAL_DATASET_NAME,
        "plans_name": "nnUNetResEncUNetLPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [256, 256, 256],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": configurations,
        "experiment_planner_used": "nnUNetPlannerResEncL",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 255.0, "mean": 100.0, "median": 100.0, "min": 0.0,
                  "percentile_00_5": 0.0, "percentile_99_5": 255.0, "std": 50.0}
        },
    }


DATASET_JSON = {"channel_names": {"0": "image"}, "labels": {"background": 0, "object": 1},
                "numTraining": 0, "file_ending": ".nii.gz"}


def write_layout(folder: str | os.PathLike, plans: dict, configuration: str, seed: int = 0,
                 session: dict | str | None = None) -> torch.nn.Module:
    """Write a folder in the official layout with randomly initialised weights for `configuration` of `plans`."""
    folder = Path(folder)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / PLANS_FILE).write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=4))
    session = {"inference_class": "nnInteractiveInferenceSession", "point_radius": DEFAULT_POINT_RADIUS,
               "preferred_scribble_thickness": 2} if session is None else session
    (folder / SESSION_FILE).write_text(json.dumps(session, indent=4))
    checkpoint = folder / "fold_0" / CHECKPOINT_NAME
    stub = {"init_args": {"configuration": configuration}}
    torch.save(stub, checkpoint)  # lets read_spec resolve the configuration before the weights exist
    torch.manual_seed(seed)
    network = build_network(read_spec(folder))
    torch.save({
        "network_weights": network.state_dict(),
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                      "dataset_json": DATASET_JSON, "device": "cpu"},
        "trainer_name": TRAINER_NAME,
        "inference_allowed_mirroring_axes": [0, 1, 2],
        "current_epoch": 0,
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
    }, checkpoint)
    return network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, default=None, help="a smaller patch than v1.0's 192, e.g. 64 on a CPU")
    args = parser.parse_args()
    configuration, extra = DEFAULT_CONFIGURATION, None
    if args.patch:
        configuration = f"3d_fullres_ps{args.patch}"
        extra = {configuration: {"inherits_from": "3d_fullres", "patch_size": [args.patch] * 3}}
    plans = official_plans(resenc_architecture(RESENC_L_FEATURES, RESENC_L_BLOCKS), extra)
    network = write_layout(args.folder, plans, configuration, args.seed)
    print(f"wrote {args.folder}: {sum(p.numel() for p in network.parameters()):,} parameters (random)")


if __name__ == "__main__":
    main()
