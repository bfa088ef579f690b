"""Real labelled cases: read and checked, prepared once for fast crops, split into training and validation.

Two formats are read from a folder DIR:
- challenge training cases: `DIR/*.npz` with `imgs` (z, y, x), `gts` (same shape) and `spacing` (x, y, z);
  `boxes` may be there and is not needed (training draws boxes from `gts` the organisers' way);
- NIfTI image/label pairs in nnU-Net's layout, `DIR/imagesTr/` and `DIR/labelsTr/`, turned into the
  challenge format by the harness's converter (modality from `DIR/dataset.json`'s channel 0, else MR).

Preparation writes `DIR/prepared/<case>/`: `imgs.npy` and `gts.npy` uncompressed, so that a crop is a
memory-mapped read of only the pages it needs, and `case.json` with the shape, the spacing, every
label's voxel count and region (the container's `label_regions`) and the whole image's intensity statistics for
each normalisation the container knows (a crop must be normalised as the whole case is at inference).
It runs once per case (`python -m training.prepare DIR ...`, or on first use by `training.train --data`)
and again only when the case's file changes. Every label of a case is a target (the harness's
`case_classes`). The split is by case: a hash of the case name puts `validation_fraction` of the cases
in validation, the same whatever else the folder holds; `DIR/prepared/validation/` lists those cases
(links to the files), ready for `python -m inference.harness run`.

A bad case is skipped with one line on stderr naming its file; the run goes on.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.harness.convert_nifti import convert_pair, pair_files, percentile_scale
from inference.class_task import label_regions
from inference.geometry import Region, slices
from inference.harness.metrics import case_classes
from inference.normalisation import METHODS, intensity_stats

PREPARED = "prepared"
VALIDATION = "validation"
CASE_JSON = "case.json"
FORMAT_VERSION = 2  # bumped when case.json or the arrays change meaning: older preparations are redone


class CaseProblem(ValueError):
    """A case that cannot be used for training; the message is one line and names the file."""


class NoUsableCase(RuntimeError):
    """Not one usable training case in the folders given."""


@dataclass(frozen=True)
class LabelExtent:
    """One label of a case: its voxel count and bounding box."""

    voxels: int
    region: Region


@dataclass(frozen=True)
class RealCase:
    """A prepared case: what a sample needs to know before it reads any voxel."""

    name: str
    folder: Path  # DIR/prepared/<case>
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # array order (z, y, x)
    labels: dict[int, LabelExtent]  # the targets: every class of the case
    intensity: dict[str, tuple[float, float]]  # normalisation -> (mean, std) of the whole image

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        """(image, labels) of `region`: memory-mapped, only the pages the region spans are read."""
        imgs = np.load(self.folder / "imgs.npy", mmap_mode="r")
        gts = np.load(self.folder / "gts.npy", mmap_mode="r")
        return np.array(imgs[slices(region)]), np.array(gts[slices(region)])


@dataclass(frozen=True)
class RealCases:
    """The training cases of every `--data` folder (a sibling of `label_maps.LabelSources`)."""

    cases: tuple[RealCase, ...]
    validation: tuple[str, ...] = ()  # held-out case names (not drawn)


# ----------------------------------------------------------------------------- reading and checking


def split_of(name: str, validation_fraction: float) -> str:
    """'validation' or 'training' for a case name: a hash, so adding cases never moves the others."""
    return VALIDATION if zlib.crc32(name.encode("utf-8")) / 2**32 < validation_fraction else "training"


def read_training_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(imgs uint8, gts, spacing (x, y, z)) of a challenge training case, checked; CaseProblem if unusable."""
    try:
        with np.load(path, allow_pickle=True) as npz:
            missing = [key for key in ("imgs", "gts", "spacing") if key not in npz.files]
            if missing:
                raise CaseProblem(f"{path}: no {' or '.join(repr(k) for k in missing)} "
                                  f"(a training case needs 'imgs', 'gts' and 'spacing')")
            imgs, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
    except CaseProblem:
        raise
    except Exception as exc:  # a truncated zip, a pickle error, not an npz at all: all "cannot read"
        raise CaseProblem(f"{path}: unreadable ({type(exc).__name__}: {one_line(exc)})") from None
    return check_arrays(path, imgs, gts, spacing)


def check_arrays(path: Path, imgs: np.ndarray, gts: np.ndarray,
                 spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The checks every case passes, whatever its format; images that are not uint8 are mapped to it."""
    if imgs.ndim != 3:
        raise CaseProblem(f"{path}: imgs has shape {imgs.shape}, a 3D volume is needed")
    if gts.shape != imgs.shape:
        raise CaseProblem(f"{path}: gts shape {gts.shape} != imgs shape {imgs.shape}")
    if imgs.dtype.kind not in "uifb" or gts.dtype.kind not in "uib":
        raise CaseProblem(f"{path}: imgs ({imgs.dtype}) must be numbers and gts ({gts.dtype}) integers")
    if imgs.dtype.kind == "f" and not np.isfinite(imgs).all():
        raise CaseProblem(f"{path}: imgs has NaN or infinite values")
    try:
        spacing = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise CaseProblem(f"{path}: spacing {one_line(spacing)} is not 3 numbers") from None
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise CaseProblem(f"{path}: spacing {spacing} is not 3 positive numbers")
    if gts.dtype.kind == "i" and gts.min() < 0:
        raise CaseProblem(f"{path}: gts has negative labels")
    if not gts.any():
        raise CaseProblem(f"{path}: gts has no labelled voxel")
    if imgs.dtype != np.uint8:
        # the challenge's images are uint8 in [0, 255]; others are mapped there as the organisers do
        in_range = imgs.min() >= 0 and imgs.max() <= 255
        imgs = np.round(imgs).astype(np.uint8) if in_range else percentile_scale(imgs)
    return imgs, gts, spacing


def one_line(value, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ----------------------------------------------------------------------------- preparing


def label_extents(gts: np.ndarray) -> dict[int, LabelExtent]:
    """Voxel count and region of every class of the case (the evaluator's classes)."""
    regions = label_regions(gts)
    # slice by slice: np.bincount casts to int64, 8 bytes a voxel of the whole case at once
    size = int(gts.max()) + 1
    counts = sum(np.bincount(plane.ravel(), minlength=size) for plane in gts)
    return {c: LabelExtent(int(counts[c]), regions[c]) for c in case_classes(gts)}


def write_prepared(folder: Path, name: str, source: Path, imgs: np.ndarray, gts: np.ndarray,
                   spacing_xyz: tuple[float, float, float]) -> RealCase:
    """Write one case's prepared folder (atomically: a half-written folder is never taken for a prepared one)."""
    gts = gts.astype(np.uint8) if gts.max() <= 255 else gts.astype(np.uint16)
    labels = label_extents(gts)
    if not labels:
        raise CaseProblem(f"{source}: gts has one value everywhere: no label besides the background")
    intensity = {method: tuple(float(v) for v in intensity_stats(imgs, method)) for method in METHODS}
    stat = source.stat()
    meta = {"format": FORMAT_VERSION, "name": name, "source": str(source.resolve()),
            "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns,
            "shape": list(imgs.shape), "spacing_xyz": list(spacing_xyz),
            "labels": {str(k): {"voxels": v.voxels, "region": v.region} for k, v in labels.items()},
            "intensity": {k: list(v) for k, v in intensity.items()}}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        np.save(tmp / "imgs.npy", np.ascontiguousarray(imgs))
        np.save(tmp / "gts.npy", np.ascontiguousarray(gts))
        (tmp / CASE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return case_from_meta(folder, meta)


def case_from_meta(folder: Path, meta: dict) -> RealCase:
    labels = {int(k): LabelExtent(v["voxels"], v["region"]) for k, v in meta["labels"].items()}
    return RealCase(meta["name"], folder, tuple(meta["shape"]), tuple(reversed(meta["spacing_xyz"])), labels,
                    {k: tuple(v) for k, v in meta["intensity"].items()})


def prepared_case(folder: Path, source: Path) -> RealCase | None:
    """The case prepared earlier from `source` as it is now, or None (never prepared, or the file changed)."""
    try:
        meta = json.loads((folder / CASE_JSON).read_text())
        stat = source.stat()
    except (OSError, ValueError):
        return None
    if (meta.get("format") != FORMAT_VERSION or meta.get("source_size") != stat.st_size
            or meta.get("source_mtime_ns") != stat.st_mtime_ns):
        return None
    return case_from_meta(folder, meta)


@dataclass(frozen=True)
class CaseFile:
    """One case of a data folder before preparation: a challenge .npz, or a NIfTI image/label pair."""

    name: str
    source: Path  # the file whose change means the case must be prepared again (the .npz, or the label)
    image: Path | None = None  # NIfTI pairs only
    modality: str = "MR"


def case_files(data_dir: Path) -> list[CaseFile]:
    """Every case a data folder holds, in name order (NIfTI pairs: as the harness's converter pairs them)."""
    files = [CaseFile(p.stem, p) for p in sorted(data_dir.glob("*.npz"))]
    images, labels = data_dir / "imagesTr", data_dir / "labelsTr"
    if images.is_dir() and labels.is_dir():
        modality = nifti_modality(data_dir)
        pairs, unpaired = pair_files(images, labels)
        for path in unpaired:
            print(f"skipped {path}: no label file of the same name in {labels}", file=sys.stderr)
        for case, image, label in pairs:
            if image is None:
                print(f"skipped {label}: no image {case}.nii.gz or {case}_0000.nii.gz in {images}", file=sys.stderr)
                continue
            files.append(CaseFile(f"{modality}_{case}", label, image, modality))
    return files


def nifti_modality(data_dir: Path) -> str:
    """The modality of a NIfTI dataset: its dataset.json's channel 0 if that names one (CT windows differ), else MR."""
    try:
        channel = str(json.loads((data_dir / "dataset.json").read_text())["channel_names"]["0"])
    except (OSError, ValueError, KeyError, TypeError):
        return "MR"
    return "CT" if channel.strip().upper() == "CT" else "MR"


def read_case_file(case: CaseFile, scratch: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The checked arrays of a case; NIfTI pairs go through the harness's converter first (into `scratch`)."""
    if case.image is None:
        return read_training_npz(case.source)
    try:
        npz = convert_pair(case.image, case.source, scratch, case.modality, case.name.split("_", 1)[1])
    except Exception as exc:
        raise CaseProblem(f"{case.image} + {case.source}: {type(exc).__name__}: {one_line(exc)}") from None
    try:
        return read_training_npz(npz)
    finally:
        npz.unlink(missing_ok=True)


def prepare_folder(data_dir: Path, validation_fraction: float,
                   verbose: bool = True) -> tuple[list[RealCase], list[str]]:
    """Prepare every training case of `data_dir` not yet prepared (bad ones skipped with a line on stderr);
    link the validation cases into DIR/prepared/validation/. Returns (training cases, validation case names)."""
    if not data_dir.is_dir():
        print(f"skipped {data_dir}: not a folder", file=sys.stderr)
        return [], []
    out = data_dir / PREPARED
    cases, held_out = [], []
    files = case_files(data_dir)
    if not files:
        print(f"skipped {data_dir}: no .npz cases and no imagesTr/ + labelsTr/ NIfTI pairs", file=sys.stderr)
    for file in files:
        if split_of(file.name, validation_fraction) == VALIDATION:
            held_out.append(file.name)
            link_validation_case(out / VALIDATION, file)
            continue
        folder = out / file.name
        case = prepared_case(folder, file.source)
        if case is None:
            try:
                with tempfile.TemporaryDirectory(dir=data_dir if os.access(data_dir, os.W_OK) else None) as scratch:
                    imgs, gts, spacing = read_case_file(file, Path(scratch))
                case = write_prepared(folder, file.name, file.source, imgs, gts, spacing)
                del imgs, gts
            except CaseProblem as exc:
                print(f"skipped {exc}", file=sys.stderr)
                continue
            if verbose:
                print(f"prepared {file.name}: shape {case.shape}, {len(case.labels)} labels", flush=True)
        cases.append(case)
    return cases, held_out


def link_validation_case(folder: Path, file: CaseFile) -> None:
    """A held-out case in DIR/prepared/validation/: a link to its .npz, or a NIfTI pair converted once."""
    target = folder / f"{file.name}.npz"
    if target.exists() or target.is_symlink():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if file.image is None:
        target.symlink_to(file.source.resolve())
        return
    try:
        convert_pair(file.image, file.source, folder, file.modality, file.name.split("_", 1)[1])
    except Exception as exc:
        print(f"skipped {file.image} + {file.source}: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)


def load_real_cases(data_dirs: list[Path], validation_fraction: float = 0.1, verbose: bool = True) -> RealCases:
    """The training cases of every folder, prepared first where needed; NoUsableCase when there is none."""
    cases, held_out = [], []
    for data_dir in data_dirs:
        found, validation = prepare_folder(Path(data_dir), validation_fraction, verbose)
        cases += found
        held_out += validation
    if not cases:
        folders = ", ".join(str(d) for d in data_dirs)
        raise NoUsableCase(f"no usable training case in {folders}"
                           + (f" ({len(held_out)} held out for validation)" if held_out else ""))
    if verbose:
        print(f"{len(cases)} training cases, {len(held_out)} held out for validation "
              f"(validation_fraction {validation_fraction})", flush=True)
    return RealCases(tuple(cases), tuple(held_out))
