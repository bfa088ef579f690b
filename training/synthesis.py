"""Label map -> challenge-like uint8 image (the SynthSeg recipe), plus the geometric augmentations.

Each label gets a random mean intensity and texture; then a multiplicative bias field, blur,
noise and a gamma curve, and finally the [0, 255] uint8 mapping challenge images have.
Labels are sometimes merged into a few intensity groups so that neighbours share a
contrast and only the prompts can tell them apart.
"""
from __future__ import annotations

import numpy as np
from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, interpolate_img,
                                                 rotate_coords_3d, scale_coords)
from scipy import ndimage

from .label_maps import label_values, smooth_noise


def render_image(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random-contrast uint8 image of a label map."""
    values = label_values(labels)
    means = rng.uniform(0, 1, size=len(values)).astype(np.float32)
    if rng.random() < 0.4:  # few contrasts: neighbours often look alike
        groups = rng.integers(0, int(rng.integers(2, 5)), size=len(values))
        means = rng.uniform(0, 1, size=groups.max() + 1).astype(np.float32)[groups]
    if values[0] == 0 and rng.random() < 0.6:  # background is often dark (air, outside the body)
        means[0] = rng.uniform(0, 0.1)
    stds = rng.uniform(0.0, 0.08, size=len(values)).astype(np.float32)
    mean_of, std_of = (np.zeros(int(values[-1]) + 1, dtype=np.float32) for _ in range(2))
    mean_of[values], std_of[values] = means, stds
    image = mean_of[labels] + std_of[labels] * rng.normal(size=labels.shape).astype(np.float32)
    if rng.random() < 0.5:  # texture
        image += 0.05 * rng.uniform(0, 1) * smooth_noise(rng, labels.shape, float(rng.uniform(1, 3)))
    if rng.random() < 0.7:  # bias field
        image *= np.exp(rng.uniform(0, 0.4) * smooth_noise(rng, labels.shape, float(rng.uniform(15, 40))))
    if rng.random() < 0.5:
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.5, size=3))
    image += rng.uniform(0, 0.06) * rng.normal(size=labels.shape).astype(np.float32)
    lo, hi = np.percentile(image, [rng.uniform(0, 1), rng.uniform(99, 100)])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    image **= np.exp(rng.uniform(-0.4, 0.4))  # gamma
    return np.round(image * 255).astype(np.uint8)


def thick_slices(labels: np.ndarray, rng: np.random.Generator, max_factor: int) -> tuple[np.ndarray, int]:
    """Keep every k-th slice along z (k = 1..max_factor): thick-slice MR and CT as stored in voxels."""
    k = int(rng.integers(1, max_factor + 1)) if rng.random() < 0.5 else 1
    if k == 1 or labels.shape[0] < 4 * k:
        return labels, 1
    return labels[int(rng.integers(k))::k], k


def rotate_and_scale(labels: np.ndarray, rng: np.random.Generator, max_angle: float,
                     scale_range: tuple[float, float]) -> np.ndarray:
    """A random rotation and isotropic scaling of a label map (nearest neighbour), same shape."""
    coords = create_zero_centered_coordinate_mesh(labels.shape)
    angles = rng.uniform(-max_angle, max_angle, size=3)
    coords = rotate_coords_3d(coords, *angles)
    coords = scale_coords(coords, float(rng.uniform(*scale_range)))
    for axis, n in enumerate(labels.shape):
        coords[axis] += (n - 1) / 2
    return interpolate_img(labels, coords, order=0, mode="constant", cval=0)


def reorient(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random axis permutation and flips (atlases are one orientation; challenge volumes are any)."""
    labels = labels.transpose(rng.permutation(3))
    for axis in range(3):
        if rng.random() < 0.5:
            labels = np.flip(labels, axis)
    return np.ascontiguousarray(labels)


def crop_around(labels: np.ndarray, target: int, rng: np.random.Generator, max_side: int) -> np.ndarray:
    """A random window of at most `max_side` voxels per axis that contains the target's centre region."""
    where = np.nonzero(labels == target)
    slices = []
    for axis, n in enumerate(labels.shape):
        lo, hi = int(where[axis].min()), int(where[axis].max()) + 1
        side = min(n, int(rng.integers(min(max_side, max(hi - lo + 16, 32)), max_side + 1)))
        centre = (lo + hi) // 2 + int(rng.integers(-side // 4, side // 4 + 1))
        start = int(np.clip(centre - side // 2, 0, n - side))
        slices.append(slice(start, start + side))
    return labels[tuple(slices)]
