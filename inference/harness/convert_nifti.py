"""Convert NIfTI image + label pairs into challenge training-format `.npz` cases for the harness.

Each case becomes `{MODALITY}_{case}.npz` with the keys the organisers' training files have:
`imgs` (uint8, (z, y, x)), `gts` (uint8, labels 1..K), `spacing` (float64, (x, y, z)) and
`boxes` (one dict per class, drawn as the organisers did). Intensities are mapped to
[0, 255] the organisers' way: a fixed window for CT, the 0.5-99.5 percentiles of the
nonzero voxels for every other modality.

Axis order: nibabel indexes the data array (i, j, k) and gives the header zooms in the
same order; the arrays are stored transposed to (k, j, i) = (z, y, x), as SimpleITK's
`GetArrayFromImage` gives them, while `spacing` stays (zoom_i, zoom_j, zoom_k) = (x, y, z).
No reorientation is done: the voxel grid is kept as the file stores it.

    python -m inference.harness.convert_nifti --modality CT --images DIR --labels DIR --out DIR \
        [--window soft|lung|bone|brain|LEVEL,WIDTH]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np

MODALITIES = ("CT", "MR", "PET", "US", "Microscopy")
CT_WINDOWS: dict[str, tuple[float, float]] = {  # name -> (level, width) in HU
    "soft": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
MAX_CLASSES = 255
_CHUNK = 1 << 24  # voxels per step when relabelling
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class ConversionError(ValueError):
    """A pair cannot be converted; the message is one line for stderr."""


def window_ct(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip CT values to [level - width/2, level + width/2] and scale linearly to uint8 [0, 255]."""
    if not width > 0:
        raise ValueError(f"CT window width must be positive, got {width}")
    lower, upper = level - width / 2.0, level + width / 2.0
    return _scale_to_uint8(image, lower, upper)


def percentile_scale(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5/99.5 percentiles of the nonzero voxels (all voxels if none) and scale to uint8."""
    image = np.asarray(image)
    if image.size == 0:
        return np.zeros(image.shape, dtype=np.uint8)
    values = image[image != 0]
    if values.size == 0:
        values = image.reshape(-1)
    lower, upper = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return _scale_to_uint8(image, lower, upper)


def _scale_to_uint8(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """clip(image, lower, upper) mapped linearly onto [0, 255], truncated to uint8 as the organisers did."""
    image = np.asarray(image)
    if not upper > lower:  # constant image (or a degenerate range): nothing to show
        return np.zeros(image.shape, dtype=np.uint8)
    work = np.clip(image.astype(np.float32, copy=False), lower, upper)  # a new array: safe to edit in place
    work -= lower
    work /= upper - lower
    work *= 255.0
    np.clip(work, 0.0, 255.0, out=work)  # float rounding must not wrap around in the uint8 cast
    return work.astype(np.uint8)


def relabel(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Map the label values to 0..K in ascending order, 0 staying background; returns (uint8 labels, mapping)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "fiub":
        raise ConversionError(f"label image has a non-numeric data type {labels.dtype}")
    if labels.size == 0:
        return np.zeros(labels.shape, dtype=np.uint8), {0: 0}
    is_float = labels.dtype.kind == "f"
    if is_float and not np.isfinite(labels).all():
        raise ConversionError("label image has NaN or infinite values")
    low, high = round(float(labels.min())), round(float(labels.max()))  # python ints: no float16 rint
    if low < 0:
        raise ConversionError(f"label image has negative values (min {labels.min():g}); 0 must be background")

    # Work on flat chunks in the array's own memory order: no full-size int64 or sorted copy of the volume.
    order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
    flat = labels.reshape(-1, order=order)

    def chunks():
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK]
            yield start, (np.rint(chunk) if is_float else chunk)

    if high < 2**16:
        counts = np.zeros(int(high) + 1, dtype=np.int64)
        for _, chunk in chunks():
            counts += np.bincount(chunk.astype(np.intp, copy=False), minlength=counts.size)
        present = np.flatnonzero(counts)
    else:
        present = np.unique(np.concatenate([np.unique(chunk) for _, chunk in chunks()]))
    values = present[present != 0]
    if len(values) > MAX_CLASSES:
        raise ConversionError(f"{len(values)} classes in the label image; the uint8 challenge format holds "
                              f"at most {MAX_CLASSES}")
    mapping = {0: 0, **{int(v): i + 1 for i, v in enumerate(values)}}
    ranks = np.concatenate([np.zeros(1, dtype=values.dtype), values])
    out = np.empty(flat.size, dtype=np.uint8)
    for start, chunk in chunks():  # every value is present in `ranks`, so its position is its new label
        out[start:start + chunk.size] = np.searchsorted(ranks, chunk)
    return out.reshape(labels.shape, order=order), mapping


def convert_pair(image_path: str | os.PathLike, label_path: str | os.PathLike, out_dir: str | os.PathLike,
                 modality: str, case_name: str | None = None,
                 window: str | tuple[float, float] = "soft") -> Path:
    """Convert one NIfTI image + label pair into `out_dir/{MODALITY}_{case}.npz`; returns the written path."""
    return _convert(image_path, label_path, out_dir, modality, case_name, window)[0]


def _convert(image_path, label_path, out_dir, modality, case_name, window):
    """convert_pair, also returning what the CLI reports: (path, shape (z, y, x), spacing (x, y, z), K)."""
    import nibabel as nib

    from .boxes import organiser_boxes  # lazily: the harness owns it; imported first to fail before the work

    modality = _modality(modality)
    level_width = parse_window(window) if modality == "CT" else None
    image_path, label_path = Path(image_path), Path(label_path)
    case = case_name if case_name is not None else nifti_stem(label_path)
    if not case or "/" in case or os.sep in case:
        raise ConversionError(f"unusable case name {case!r}: it becomes part of a file name")

    image_nii = _load(nib, image_path, "image")
    label_nii = _load(nib, label_path, "label")
    image_shape = _volume_shape(image_nii.shape, image_path.name)
    label_shape = _volume_shape(label_nii.shape, label_path.name)
    if image_shape != label_shape:
        raise ConversionError(f"image {image_path.name} has shape {image_shape} but label {label_path.name} "
                              f"has shape {label_shape}")
    spacing = _spacing(image_nii, image_path.name)

    image = image_nii.get_fdata(dtype=np.float32).reshape(image_shape)
    if not np.isfinite(image).all():
        image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    imgs = window_ct(image, *level_width) if modality == "CT" else percentile_scale(image)
    del image
    gts, mapping = relabel(np.asanyarray(label_nii.dataobj).reshape(label_shape))
    if len(mapping) == 1:
        raise ConversionError(f"label {label_path.name} has no foreground voxels")

    imgs = np.ascontiguousarray(imgs.transpose(2, 1, 0))  # (i, j, k) -> (k, j, i) = (z, y, x)
    gts = np.ascontiguousarray(gts.transpose(2, 1, 0))

    rng = np.random.RandomState(zlib.crc32(case.encode("utf-8")))  # per case, reproducible across runs
    box_list = organiser_boxes(gts, rng)
    boxes = np.empty(len(box_list), dtype=object)  # filled item by item: never a 2D array of dict fields
    for i, box in enumerate(box_list):
        boxes[i] = box

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{modality}_{case}.npz"
    np.savez_compressed(out_path, imgs=imgs, gts=gts, spacing=np.asarray(spacing, dtype=np.float64), boxes=boxes)
    return out_path, imgs.shape, spacing, len(mapping) - 1


def parse_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """A CT window as (level, width): a name from CT_WINDOWS, 'LEVEL,WIDTH', or a (level, width) pair."""
    if isinstance(window, str):
        name = window.strip().lower()
        if name in CT_WINDOWS:
            return CT_WINDOWS[name]
        parts = name.split(",")
        try:
            level, width = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"unknown CT window {window!r}: use one of {', '.join(CT_WINDOWS)} "
                             f"or LEVEL,WIDTH such as 40,400") from None
    else:
        level, width = (float(v) for v in window)
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"CT window needs a finite level and a positive width, got level {level}, width {width}")
    return level, width


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without `.nii.gz` / `.nii`."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _modality(modality: str) -> str:
    for known in MODALITIES:
        if modality.lower() == known.lower():
            return known
    raise ValueError(f"unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")


def _load(nib, path: Path, what: str):
    try:
        return nib.load(str(path))
    except Exception as exc:
        raise ConversionError(f"cannot read {what} {path.name}: {type(exc).__name__}: {exc}") from exc


def _volume_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """The 3D shape; a 4D file with one volume (trailing singleton) counts as 3D."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ConversionError(f"{name} has shape {shape}: a 3D volume is needed (2D images and 4D series "
                              f"are not supported)")
    if min(shape) < 1:
        raise ConversionError(f"{name} is empty (shape {shape})")
    return shape


def _spacing(nii, name: str) -> tuple[float, float, float]:
    zooms = tuple(float(z) for z in nii.header.get_zooms()[:3])
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ConversionError(f"{name} has unusable voxel sizes {zooms} in its header")
    return zooms  # (zoom_i, zoom_j, zoom_k) = (x, y, z) against the (z, y, x) arrays


def pair_files(images: Path, labels: Path) -> tuple[list[tuple[str, Path | None, Path]], list[Path]]:
    """Pair labels with same-named or nnU-Net `case_0000` images: ([(case, image or None, label)], unpaired images)."""
    # Extra nnU-Net channels (case_0001, ...) of a labelled case are ignored silently, not reported as unpaired.
    image_files = {nifti_stem(p): p for p in sorted(_nifti_files(images))}
    pairs = []
    used: set[str] = set()
    for label in sorted(_nifti_files(labels)):
        case = nifti_stem(label)
        for stem in (case, f"{case}_0000"):
            if stem in image_files:
                pairs.append((case, image_files[stem], label))
                used.add(stem)
                break
        else:
            pairs.append((case, None, label))
    cases = {case for case, _, _ in pairs}
    unpaired = []
    for stem, path in image_files.items():
        match = _NNUNET_CHANNEL.match(stem)
        if stem not in used and not (match and match["case"] in cases):
            unpaired.append(path)
    return pairs, unpaired


def _nifti_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_NIFTI_SUFFIXES)
            and not p.name.startswith(".")]


def main(argv: list[str] | None = None) -> int:
    """Convert every image/label pair of two folders; one line per case, exit 1 if any pair failed."""
    parser = argparse.ArgumentParser(prog="python -m inference.harness.convert_nifti",
                                     description="Convert NIfTI image + label pairs into challenge .npz cases.")
    parser.add_argument("--modality", required=True, type=str.strip,
                        help=f"one of {', '.join(MODALITIES)} (the output file prefix)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images (.nii or .nii.gz)")
    parser.add_argument("--labels", required=True, type=Path, help="folder of label images, same file names "
                        "(or case.nii.gz against nnU-Net's case_0000.nii.gz images)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the .npz cases")
    parser.add_argument("--window", default="soft",
                        help="CT only: soft (40,400), lung (-600,1500), bone (400,1800), brain (40,80) "
                             "or LEVEL,WIDTH; write a negative level as --window=-600,1500 (default soft)")
    args = parser.parse_args(argv)
    try:
        modality = _modality(args.modality)
        window = parse_window(args.window)
    except ValueError as exc:
        parser.error(str(exc))
    for option, folder in (("--images", args.images), ("--labels", args.labels)):
        if not folder.is_dir():
            parser.error(f"{option} {folder} is not a folder")

    pairs, unpaired = pair_files(args.images, args.labels)
    for path in unpaired:
        print(f"skipped {path.name}: no label file of the same name", file=sys.stderr)
    if not pairs:
        print(f"no label files (.nii, .nii.gz) in {args.labels}", file=sys.stderr)
        return 1
    failed = 0
    for case, image, label in pairs:
        if image is None:
            failed += 1
            print(f"FAILED {label.name}: no image {case}.nii.gz or {case}_0000.nii.gz in {args.images}",
                  file=sys.stderr)
            continue
        try:
            out, shape, spacing, n_classes = _convert(image, label, args.out, modality, case, window)
        except Exception as exc:  # one bad pair must not stop the batch
            failed += 1
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(f"FAILED {image.name} + {label.name}: {message}", file=sys.stderr)
            continue
        print(f"{out.name}: shape (z, y, x) {shape}, spacing (x, y, z) {tuple(round(s, 4) for s in spacing)}, "
              f"{n_classes} classes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
