"""Boxes as the challenge organisers made them (their get_boxes.py), for cases that have none."""
from __future__ import annotations

import zlib

import numpy as np

MAX_SHIFT_PX = 6  # a random 0..5 px widening per side, scaled by the slice size / 256


def organiser_box(mask: np.ndarray, rng: np.random.RandomState | None = None) -> dict:
    """Closed z-range of the object; 2D box on its voxel-median slice, widened at random when `rng` is given."""
    z, _, _ = np.nonzero(mask)
    z_mid = int(z[len(z) // 2])  # the median over voxels, not over slices: what the organisers used
    ys, xs = np.nonzero(mask[z_mid])
    height, width = mask.shape[1:]
    shift = int(rng.randint(0, MAX_SHIFT_PX)) if rng is not None else 0
    shift_x, shift_y = int(shift * width / 256), int(shift * height / 256)
    return {
        "z_min": int(z[0]), "z_max": int(z[-1]), "z_mid": z_mid,
        "z_mid_x_min": max(0, int(xs.min()) - shift_x), "z_mid_y_min": max(0, int(ys.min()) - shift_y),
        "z_mid_x_max": min(width - 1, int(xs.max()) + shift_x), "z_mid_y_max": min(height - 1, int(ys.max()) + shift_y),
    }


def organiser_boxes(gts: np.ndarray, rng: np.random.RandomState | None = None) -> list[dict]:
    """One box per nonzero label, in label order (class i = label i + 1 after relabelling)."""
    return [organiser_box(gts == label, rng) for label in np.unique(gts) if label != 0]


def case_rng(case_name: str, seed: int = 0) -> np.random.RandomState:
    """A random state that depends only on the case name and the seed, so boxes are reproducible."""
    return np.random.RandomState((zlib.crc32(case_name.encode()) + seed) % 2**32)
