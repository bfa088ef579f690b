"""Writer of small labelled cases in the challenge's training format (imgs, gts, spacing, boxes) for the tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.harness.boxes import organiser_boxes


def labelled_volume(shape: tuple[int, int, int], n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8, labels uint8): `n_labels` ellipsoids with their own brightness, in noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    gts = np.zeros(shape, dtype=np.uint8)
    image = rng.normal(40, 10, size=shape).astype(np.float32)
    for label in range(1, n_labels + 1):
        radii = np.asarray(shape) * rng.uniform(0.15, 0.3, size=3)
        centre = rng.uniform(radii + 1, np.asarray(shape) - radii - 1)
        inside = (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0) & (gts == 0)
        gts[inside] = label
        image[inside] += 50 + 150 * label / n_labels
    return np.clip(image, 0, 255).astype(np.uint8), gts


def write_training_case(path: Path, imgs: np.ndarray, gts: np.ndarray,
                        spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0), boxes: bool = True) -> Path:
    """One case as the challenge ships its training files (boxes drawn the organisers' way)."""
    arrays = {"imgs": imgs, "gts": gts, "spacing": np.asarray(spacing_xyz, dtype=np.float64)}
    if boxes:
        found = organiser_boxes(gts, np.random.RandomState(0))
        arrays["boxes"] = np.empty(len(found), dtype=object)
        for i, box in enumerate(found):
            arrays["boxes"][i] = box
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def write_training_cases(folder: Path, count: int = 3, shape: tuple[int, int, int] = (24, 40, 40),
                         n_labels: int = 2) -> list[Path]:
    """`count` small cases `CT_case_<i>.npz` in `folder`."""
    return [write_training_case(folder / f"CT_case_{i}.npz", *labelled_volume(shape, n_labels, seed=i))
            for i in range(count)]
