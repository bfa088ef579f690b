"""Label maps that training images are synthesised from: brain atlases, MNI152 tissue, random shapes.

Every map is an integer array in array order (z, y, x), 0 = background. Real maps come from
`training/fetch_data.sh` (CAT12 atlases, MNI152 tissue probabilities); random shapes cover
what brains lack: tubes, thin shells, clustered nuclei, large organs with small lesions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .real_cases import RealCases

DATA_DIR = Path(__file__).resolve().parent / "data"
# Atlases on the common 1 mm CAT12 grid (161 x 197 x 161); `hammers` is held out for validation.
TRAINING_ATLASES = ("neuromorphometrics", "lpba40", "ibsr", "mori", "julichbrain", "anatomy3", "aal3",
                    "Schaefer2018_100Parcels_17Networks_order", "Schaefer2018_200Parcels_17Networks_order",
                    "Schaefer2018_400Parcels_17Networks_order", "cobra", "suit", "thalamic_nuclei")
VALIDATION_ATLAS = "hammers"
SHAPE_KINDS = ("blob", "tube", "shell", "nuclei", "organ_lesion")


def read_nifti(path: Path) -> np.ndarray:
    """A NIfTI volume in array order (z, y, x): NIfTI stores (x, y, z)."""
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def read_atlas(name: str, data_dir: Path = DATA_DIR) -> np.ndarray:
    return read_nifti(data_dir / f"{name}.nii.gz").astype(np.uint16)


def mni_tissue(data_dir: Path = DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(MNI152 2009a T1 uint8, tissue labels 1 = grey matter, 2 = white matter) where their probability wins."""
    t1 = read_nifti(data_dir / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = read_nifti(data_dir / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").astype(np.int16)
    wm = read_nifti(data_dir / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").astype(np.int16)
    rest = 255 - gm - wm
    labels = np.argmax(np.stack([rest, gm, wm]), axis=0).astype(np.uint16)
    return t1.astype(np.uint8), labels


@dataclass
class LabelSources:
    """The real label maps, read once; `atlases` may be empty (then only random shapes are drawn).

    `real`: labelled cases (`training.train --data`), drawn as they are instead of synthesised."""

    atlases: list[np.ndarray] = field(default_factory=list)
    tissue: np.ndarray | None = None
    real: RealCases | None = None

    @classmethod
    def load(cls, data_dir: Path = DATA_DIR, names: tuple[str, ...] = TRAINING_ATLASES,
             real: RealCases | None = None) -> "LabelSources":
        present = [n for n in names if (data_dir / f"{n}.nii.gz").exists()]
        tissue = mni_tissue(data_dir)[1] if (data_dir / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").exists() else None
        return cls([read_atlas(n, data_dir) for n in present], tissue, real)


# ----------------------------------------------------------------------------- random shapes


def label_values(labels: np.ndarray) -> np.ndarray:
    """The sorted labels present in a map of non-negative integers: np.unique's answer, 50x faster on uint16 maps."""
    return np.flatnonzero(np.bincount(labels.ravel()))


def _ellipsoid(shape, centre, radii, rotation=None) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - np.asarray(centre, dtype=np.float32)[:, None]
    if rotation is not None:
        grid = rotation.astype(np.float32) @ grid
    return ((grid / np.asarray(radii, dtype=np.float32)[:, None]) ** 2).sum(0).reshape(shape) <= 1.0


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field (computed coarse, then upsampled)."""
    factor = max(1, int(sigma // 2))
    coarse = rng.normal(size=[max(2, -(-n // factor)) for n in shape]).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, sigma / factor)
    # trilinear with corners on corners, as ndimage.zoom(order=1) does, but 8x faster on one core, and
    # without the zero planes zoom leaves where rounding puts the last sample past the edge
    field_ = torch.nn.functional.interpolate(torch.from_numpy(coarse)[None, None], size=tuple(int(n) for n in shape),
                                             mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def blob(rng: np.random.Generator, shape) -> np.ndarray:
    """An irregular lump: a thresholded smooth field inside an ellipsoid envelope."""
    shape_arr = np.asarray(shape)
    radii = shape_arr * rng.uniform(0.1, 0.35, size=3)
    centre = rng.uniform(radii * 0.8, shape_arr - radii * 0.8)
    envelope = _ellipsoid(shape, centre, radii * 1.3, _rotation(rng))
    noise = smooth_noise(rng, shape, sigma=float(rng.uniform(3, 8)))
    dist = np.sqrt(sum(((axis - c) / r) ** 2 for axis, c, r in zip(np.ogrid[tuple(slice(0, n) for n in shape)], centre, radii)))
    mask = envelope & (noise * rng.uniform(0.2, 0.6) + 1.0 - dist > 0)
    return _largest(mask)


def tube(rng: np.random.Generator, shape) -> np.ndarray:
    """A branching tube of varying radius (vessels, airways, nerves)."""
    mask = np.zeros(shape, dtype=bool)
    shape_arr = np.asarray(shape, dtype=np.float64)
    starts = [rng.uniform(0.2, 0.8, size=3) * shape_arr]
    directions = [rng.normal(size=3)]
    radius0 = rng.uniform(1.0, 5.0)
    for branch in range(int(rng.integers(1, 5))):
        if branch:
            points = np.argwhere(mask)
            if len(points) == 0:
                break
            starts.append(points[rng.integers(len(points))].astype(np.float64))
            directions.append(rng.normal(size=3))
        pos, direction = starts[-1].copy(), directions[-1] / np.linalg.norm(directions[-1])
        radius = radius0 * (0.6 ** branch)
        for _ in range(int(rng.integers(20, 80))):
            direction = direction + rng.normal(scale=0.25, size=3)
            direction /= np.linalg.norm(direction)
            pos = pos + direction * 1.5
            if np.any(pos < 0) or np.any(pos >= shape_arr):
                break
            radius = float(np.clip(radius * rng.uniform(0.93, 1.07), 0.8, 8.0))
            _paint_ball(mask, pos, radius)
    return mask


def _paint_ball(mask: np.ndarray, centre: np.ndarray, radius: float) -> None:
    r = int(np.ceil(radius))
    lo = np.maximum(np.floor(centre).astype(int) - r, 0)
    hi = np.minimum(np.floor(centre).astype(int) + r + 1, mask.shape)
    if np.any(hi <= lo):
        return
    grid = np.indices(hi - lo).T + lo - centre
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= ((grid ** 2).sum(-1) <= radius ** 2).T


def shell(rng: np.random.Generator, shape) -> np.ndarray:
    """A thin closed or partial shell (walls, membranes, cortex-like layers)."""
    shape_arr = np.asarray(shape)
    radii = shape_arr * rng.uniform(0.15, 0.4, size=3)
    centre = rng.uniform(radii * 0.9, shape_arr - radii * 0.9)
    rotation = _rotation(rng)
    grid = rotation.astype(np.float32) @ (np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32))
    dist = np.sqrt(((grid / radii[:, None].astype(np.float32)) ** 2).sum(0)).reshape(shape)
    thickness = rng.uniform(1.0, 4.0) / radii.mean()
    mask = np.abs(dist - 1.0) <= thickness
    if rng.random() < 0.5:  # an open shell: cut by a random plane
        normal = rng.normal(size=3)
        mask &= (np.tensordot(normal, grid.reshape(3, *shape), axes=1) > rng.uniform(-0.5, 0.5) * radii.mean())
    return mask


def nuclei(rng: np.random.Generator, shape) -> np.ndarray:
    """A cluster of small ellipsoids (cells, nuclei, lymph nodes, metastases)."""
    mask = np.zeros(shape, dtype=bool)
    shape_arr = np.asarray(shape)
    cluster = rng.uniform(0.25, 0.75, size=3) * shape_arr
    spread = shape_arr * rng.uniform(0.05, 0.2)
    for _ in range(int(rng.integers(3, 25))):
        centre = np.clip(rng.normal(cluster, spread), 0, shape_arr - 1)
        _paint_ball(mask, centre, float(rng.uniform(1.5, 5.0)))
    return mask


def organ_lesion(rng: np.random.Generator, shape) -> tuple[np.ndarray, np.ndarray]:
    """A large organ and a small lesion inside it (two masks; the lesion is carved out of the organ)."""
    organ = blob(rng, shape)
    points = np.argwhere(organ)
    lesion = np.zeros(shape, dtype=bool)
    if len(points):
        _paint_ball(lesion, points[rng.integers(len(points))].astype(np.float64), float(rng.uniform(2, 8)))
        lesion &= organ
    return organ & ~lesion, lesion


def _largest(mask: np.ndarray) -> np.ndarray:
    import cc3d

    if not mask.any():
        return mask
    return cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=26) > 0


def random_shapes(rng: np.random.Generator, shape: tuple[int, int, int],
                  kind_weights: tuple[float, ...] | None = None) -> np.ndarray:
    """A label map of 2-6 random objects over a background with smooth 'tissue' regions (labels above 100).

    Each object's kind is drawn from `SHAPE_KINDS` with `kind_weights` (None: all alike).
    """
    labels = np.zeros(shape, dtype=np.uint16)
    # background structure: a few smooth regions that are not targets but give the image texture and edges
    regions = int(rng.integers(1, 5))
    noise = smooth_noise(rng, shape, sigma=float(rng.uniform(6, 20)))
    edges = np.quantile(noise, np.sort(rng.uniform(0.1, 0.9, size=regions - 1))) if regions > 1 else []
    labels[:] = 101 + np.digitize(noise, edges).astype(np.uint16)
    label = 1
    for _ in range(int(rng.integers(2, 7))):
        # None draws as the recorded runs did: their volumes stay reproducible
        kind = SHAPE_KINDS[int(rng.integers(len(SHAPE_KINDS)) if kind_weights is None
                               else rng.choice(len(SHAPE_KINDS), p=np.divide(kind_weights, sum(kind_weights))))]
        if kind == "organ_lesion":
            organ, lesion = organ_lesion(rng, shape)
            for mask in (organ, lesion):
                if mask.any():
                    labels[mask] = label
                    label += 1
            continue
        mask = {"blob": blob, "tube": tube, "shell": shell, "nuclei": nuclei}[kind](rng, shape)
        if mask.any():
            labels[mask] = label
            label += 1
    return labels
