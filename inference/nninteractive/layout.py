"""The folder layout of the public nnInteractive v1.0 weights: recognise it, derive a model spec.

`nnInteractive_v1.0/{plans.json, dataset.json, inference_session_class.json, fold_*/checkpoint_final.pth}`
loads as-is: the spec derived here says how its 8 input channels, its prompts and its normalisation
work, and the network is built from `plans.json` by nnunetv2 like every other model folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

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
LICENSE_FILE = "LICENSE"
DOWNLOAD_LICENSE = "CC BY-NC-SA 4.0"  # the v1.0 weights' licence, as the package reports it without a LICENSE file


@dataclass(frozen=True)
class SessionSettings:
    """The nninteractive pipeline's settings in a model spec."""

    autocast: ClassVar[str] = "float16"  # the reference session runs float16 autocast

    interaction_decay: float = 1.0  # each older prompt counts this much less

    @classmethod
    def from_spec(cls, raw: dict, spec_file: str) -> "SessionSettings":
        decay = float(raw.get("interaction_decay", 1.0))
        if not 0 < decay <= 1:
            raise ValueError(f"{spec_file}: interaction_decay must be in (0, 1], got {decay}")
        return cls(decay)


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
        "license": folder_license(folder),
    }


def folder_license(folder: Path) -> str:
    """The first line of the folder's LICENSE file, else the download's licence."""
    path = folder / LICENSE_FILE
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()] if path.is_file() else []
    return next((line for line in lines if line), DOWNLOAD_LICENSE)
