"""The folder layout of the public nnInteractive v1.0 weights: recognise it, derive a model spec, write one.

`nnInteractive_v1.0/{plans.json, dataset.json, inference_session_class.json, fold_*/checkpoint_final.pth}`
loads as-is: the spec derived here says how its 8 input channels, its prompts and its normalisation
work, and the network is built from `plans.json` by nnunetv2 like every other model folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

SESSION_FILE = "inference_session_class.json"
PLANS_FILE = "plans.json"
CHECKPOINT_NAME = "checkpoint_final.pth"
DEFAULT_CONFIGURATION = "3d_fullres_ps192_bs24"
# image, prev seg, box +/-, point +/-, scribble +/- (box- and scribbles are never drawn by the challenge)
CHANNELS = ["image", "prev_seg", "box", "zero", "fg_clicks", "bg_clicks", "zero", "zero"]
DEFAULT_POINT_RADIUS = 4
# nninteractive 2.6.0 reads `interaction_decay` from the session file, 0.98 when the key is missing,
# and 0.9 when the file holds a bare string (its oldest format)
DEFAULT_DECAY = 0.98
LEGACY_STRING_DECAY = 0.9
DEFAULT_BOX_MODE = "mid_slice"  # v1.0 was trained on 2D boxes; the package refuses 3D ones
# the official plans: nnU-Net ResEnc-L (shared/nninteractive.md)
RESENC_L_FEATURES = [32, 64, 128, 256, 320, 320]
RESENC_L_BLOCKS = [1, 3, 4, 6, 6, 6]
OFFICIAL_DATASET_NAME = "Dataset225_nnInteractiveV2"
TRAINER_NAME = "nnInteractiveTrainer_stub"  # what the session falls back to for trainers it does not ship


def checkpoint_path(folder: str | os.PathLike) -> Path | None:
    """The one `fold_*/checkpoint_final.pth`, or None when there is none or more than one."""
    found = sorted(Path(folder).glob(f"fold_*/{CHECKPOINT_NAME}"))
    return found[0] if len(found) == 1 else None


def is_layout(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / SESSION_FILE).is_file() and (folder / PLANS_FILE).is_file() and checkpoint_path(folder) is not None


def session_settings(folder: str | os.PathLike) -> tuple[float, float]:
    """(point radius, interaction decay) from `inference_session_class.json`, with the package's defaults."""
    raw = json.loads((Path(folder) / SESSION_FILE).read_text())
    if not isinstance(raw, dict):
        return DEFAULT_POINT_RADIUS, LEGACY_STRING_DECAY
    return float(raw.get("point_radius", DEFAULT_POINT_RADIUS)), float(raw.get("interaction_decay", DEFAULT_DECAY))


def checkpoint_configuration(path: Path) -> str:
    """The plans configuration the checkpoint was trained with (its `init_args`), else the v1.0 one."""
    # mmap: only the small pickled dict is read, not the ~400 MB of tensors
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    init_args = checkpoint.get("init_args") if isinstance(checkpoint, dict) else None
    return (init_args or {}).get("configuration", DEFAULT_CONFIGURATION)


def derive_spec(folder: str | os.PathLike) -> dict:
    """The `model.json` content this layout stands for."""
    folder = Path(folder)
    checkpoint = checkpoint_path(folder)
    radius, decay = session_settings(folder)
    return {
        "name": f"nnInteractive layout ({folder.name})",
        "plans": {"file": PLANS_FILE, "configuration": checkpoint_configuration(checkpoint)},
        "channels": list(CHANNELS),
        "normalisation": "zscore_nonzero_bbox_torch",
        "prompts": {"box": DEFAULT_BOX_MODE, "points": "distance", "point_radius": radius},
        "output": "softmax2",
        "weights": str(checkpoint.relative_to(folder)),
        "max_zoom": 4,
        "pipeline": "nninteractive",
        "interaction_decay": decay,
    }


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
    from .model import build_network, read_spec  # model imports this module

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
