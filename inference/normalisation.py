"""Image intensity normalisation: statistics computed once per case, applied per patch."""
from __future__ import annotations

import numpy as np
import torch

from .geometry import nonzero_block

# zscore_nonzero_bbox_torch: the same statistics as nnInteractive's session computes them (float32 torch
# mean and unbiased std), so that the image channel matches it bit for bit
METHODS = ("zscore_nonzero_bbox", "zscore_nonzero_bbox_torch", "zscore", "unit")
SLAB_VOXELS = 1 << 24


def intensity_stats(image: np.ndarray, method: str) -> tuple[float, float]:
    """(mean, std) such that (image - mean) / std is the network's image channel."""
    if method == "unit":
        return 0.0, 255.0
    if method == "zscore_nonzero_bbox_torch":
        return _torch_mean_std(image, _nonzero_slices(image))
    if method == "zscore_nonzero_bbox":  # nnInteractive: statistics over the bounding box of nonzero voxels
        region = image[_nonzero_slices(image)]
    elif method == "zscore":
        region = image
    else:
        raise ValueError(f"normalisation must be one of {METHODS}, got {method!r}")
    mean, std = _mean_std(region)
    return mean, max(std, 1e-8)


def _nonzero_slices(image: np.ndarray) -> tuple[slice, ...]:
    return nonzero_block(image) or tuple(slice(None) for _ in range(image.ndim))


def _torch_mean_std(image: np.ndarray, region: tuple[slice, ...]) -> tuple[float, float]:
    """float32 mean and unbiased std of `image[region]`, reduced like nnInteractive does (whole float32 image, then a view).

    Returned as Python floats that hold the float32 values exactly.
    """
    # the reduction's bits depend on the memory layout it walks, so the view is taken of the full float32 volume
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    crop = volume[(slice(0, 1), *region)]
    return float(crop.mean()), max(float(crop.std()), 1e-8)  # a constant image would divide by 0


def _mean_std(region: np.ndarray) -> tuple[float, float]:
    if region.dtype == np.uint8:  # exact, from the histogram; torch's bincount takes uint8 as it is (5x numpy's)
        counts = np.zeros(256, dtype=np.float64)
        step = max(1, SLAB_VOXELS // max(region[0].size, 1))
        for z in range(0, region.shape[0], step):
            slab = torch.from_numpy(np.ascontiguousarray(region[z:z + step])).reshape(-1)
            counts += torch.bincount(slab, minlength=256).numpy()
        values = np.arange(256, dtype=np.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        return float(mean), float(np.sqrt((counts * (values - mean) ** 2).sum() / n))
    values = region.astype(np.float64, copy=False)
    return float(values.mean()), float(values.std())
