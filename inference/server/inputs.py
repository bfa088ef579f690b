"""A client's inputs checked and put in the pipelines' terms: the image, its spacing, boxes, points and masks.

Arrays keep the client's axis order; the pipelines take axis 0 as the slice axis (z of the challenge).
Every problem is a `ClientError` with a one-line message; nothing here touches a session.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..case_io import Box, one_line
from ..geometry import Region, clip, nonzero_block
from .wire import ClientError

# what the pipelines keep of an image: small integer types as they are, every other number type as float32
KEPT_DTYPES = ("uint8", "int8", "uint16", "int16", "float32")


def flag(payload: dict, key: str, default: bool | None = None) -> bool:
    """A JSON boolean; `default` when the key is absent (None: the key is required)."""
    if key not in payload:
        if default is None:
            raise ClientError(400, f"missing required field: {key}")
        return default
    value = payload[key]
    if not isinstance(value, bool):
        raise ClientError(400, f"{key} must be true or false, got {shown(value)}")
    return value


def number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ClientError(400, f"{what} must be a finite number, got {shown(value)}")
    return float(value)


def numbers_of(value, length: int, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ClientError(400, f"{what} must be a list of {length} numbers, got {shown(value)}")
    return [number(v, what) for v in value]


def image_volume(array: np.ndarray) -> np.ndarray:
    """The 3D image of a (channels, X, Y, Z) upload: one channel, a number type the pipelines take, finite."""
    if array.shape[0] != 1:
        raise ClientError(400, f"image: this server takes one image channel, got {array.shape[0]} (shape {list(array.shape)})")
    volume = array[0]
    if volume.dtype.name not in KEPT_DTYPES:
        volume = volume.astype(np.uint8 if volume.dtype == bool else np.float32)
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise ClientError(400, "image: holds NaN or infinite values")
    return volume


def spacing_of(properties, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """`image_properties["spacing"]` in the image's axis order (mm), or 1 mm per axis when absent."""
    if properties is None:
        return (1.0, 1.0, 1.0)
    if not isinstance(properties, dict):
        raise ClientError(400, f"image_properties must be an object, got {shown(properties)}")
    if properties.get("spacing") is None:
        return (1.0, 1.0, 1.0)
    spacing = numbers_of(properties["spacing"], len(shape), "image_properties.spacing")
    if not all(s > 0 for s in spacing):
        raise ClientError(400, f"image_properties.spacing must be positive, got {spacing}")
    return tuple(spacing)


def box_region(coords, shape: tuple[int, int, int]) -> Region:
    """A client's box ([[lo, hi] per axis], half-open, rounded as the session rounds) cut to the image."""
    if not isinstance(coords, (list, tuple)) or len(coords) != 3:
        raise ClientError(400, f"bbox_coords must be 3 [start, end] pairs, got {shown(coords)}")
    region = [[round(v) for v in numbers_of(pair, 2, "bbox_coords")] for pair in coords]
    if any(hi <= lo for lo, hi in region):
        raise ClientError(400, f"bbox_coords {region}: every axis needs end > start")
    inside = clip(region, shape)
    if inside is None:
        raise ClientError(400, f"bbox_coords {region} lie outside the image of shape {list(shape)}")
    if sum(hi - lo == 1 for lo, hi in inside) > 1:
        raise ClientError(400, f"bbox_coords {region}: a box needs an extent along at least two axes")
    return inside


def prompt_box(region: Region, spacing: tuple[float, ...], shape: tuple[int, int, int], extend_2d: bool) -> Box:
    """The box prompt of a region. A 2D box (one axis one voxel thick) stays 2D for models trained on 2D boxes;
    for models trained on 3D boxes (`extend_2d`) it is made as deep, in mm, as it is wide on average, centred on
    its slice; along axis 0 that depth is a guess, so it does not bound the answer there (`z_known`)."""
    thin = [axis for axis, (lo, hi) in enumerate(region) if hi - lo == 1]
    lo, hi = [a for a, _ in region], [b - 1 for _, b in region]
    if thin and extend_2d:
        axis = thin[0]
        others = [a for a in range(3) if a != axis]
        depth_mm = sum((region[a][1] - region[a][0]) * spacing[a] for a in others) / 2
        half = int(round(depth_mm / spacing[axis] / 2))
        lo[axis], hi[axis] = max(0, lo[axis] - half), min(shape[axis] - 1, hi[axis] + half)
        return Box(tuple(lo), tuple(hi), (lo[0] + hi[0]) // 2, z_known=axis != 0)
    return Box(tuple(lo), tuple(hi), (lo[0] + hi[0]) // 2)


def voxel(coords, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """A click's voxel (rounded as the session rounds); it must lie inside the image."""
    point = tuple(round(v) for v in numbers_of(coords, 3, "coordinates"))
    if not all(0 <= v < n for v, n in zip(point, shape)):
        raise ClientError(400, f"coordinates {list(point)} lie outside the image of shape {list(shape)}")
    return point


def placed_mask(mask: np.ndarray, where, shape: tuple[int, int, int], what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(mask != 0, its first voxel in the image): a mask of the whole image, or of `where` ([[lo, hi]] per axis)."""
    if where is None:
        where = [[0, n] for n in shape]
    if not isinstance(where, (list, tuple)) or len(where) != 3:
        raise ClientError(400, f"interaction_bbox must be 3 [start, end] pairs, got {shown(where)}")
    region = [[round(v) for v in numbers_of(pair, 2, "interaction_bbox")] for pair in where]
    if clip(region, shape) != region:
        raise ClientError(400, f"interaction_bbox {region} exceeds the image of shape {list(shape)}")
    if list(mask.shape) != [hi - lo for lo, hi in region]:
        raise ClientError(400, f"{what} of shape {list(mask.shape)} does not match interaction_bbox {region}")
    return mask != 0, tuple(lo for lo, _ in region)


def mask_region(mask: np.ndarray, start: tuple[int, ...], what: str) -> Region:
    """The region of a mask's nonzero voxels in the image."""
    block = nonzero_block(mask)
    if block is None:
        raise ClientError(400, f"{what} is empty")
    return [[s.start + o, s.stop + o] for s, o in zip(block, start)]


def shown(value) -> str:
    """A value quoted in a message: its repr, on one line, cut short."""
    return one_line(repr(value), limit=60)
