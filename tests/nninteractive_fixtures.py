"""Random-weight folders in the official nnInteractive v1.0 layout, small enough for tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.model import resenc_architecture
from scripts.make_nninteractive_layout import RESENC_L_BLOCKS, RESENC_L_FEATURES, official_plans, write_layout

SMALL_CONFIGURATION = "3d_fullres_test_ps48"  # a second configuration: the v1.0 plans stay as they are
SMALL_PATCH = 48
RESENC_L_SMALL_PATCH = "3d_fullres_ps64"  # ResEnc-L itself at a 64^3 patch (its downsampling is 32)
# the session's refinement keeps a 24-voxel margin on each side of a patch: it needs patches above 48
SMALL_REFINE_CONFIGURATION = "3d_fullres_test_ps64"


def layout_plans() -> dict:
    """v1.0's plans (ResEnc-L, `3d_fullres_ps192_bs24`) plus a small network and ResEnc-L at patch 64."""
    small = resenc_architecture([8, 16, 32, 64], [1, 1, 1, 1])
    return official_plans(resenc_architecture(RESENC_L_FEATURES, RESENC_L_BLOCKS), {
        SMALL_CONFIGURATION: {"inherits_from": "3d_fullres", "patch_size": [SMALL_PATCH] * 3, "architecture": small},
        SMALL_REFINE_CONFIGURATION: {"inherits_from": "3d_fullres", "patch_size": [64] * 3, "architecture": small},
        RESENC_L_SMALL_PATCH: {"inherits_from": "3d_fullres", "patch_size": [64] * 3},
    })


def small_layout(folder: Path, configuration: str = SMALL_CONFIGURATION, session=None, seed: int = 0) -> Path:
    write_layout(folder, layout_plans(), configuration, seed=seed, session=session)
    return folder


def sample_image(shape=(40, 70, 64), seed=0) -> np.ndarray:
    """uint8 noise with a zero border, so that the nonzero bounding box is not the whole image."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.uint8)
    image[3:-3, 5:-4, 4:-4] = rng.integers(1, 255, (shape[0] - 6, shape[1] - 9, shape[2] - 8))
    # a bright blob so that the network input has structure
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    image[(z - 20) ** 2 + (y - 30) ** 2 + (x - 31) ** 2 < 64] = 250
    return image
