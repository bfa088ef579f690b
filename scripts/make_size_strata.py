"""No-box targets stratified by size (small / medium / large against the patch), one target per case.

    .venv/bin/python -m scripts.make_size_strata OUT [--split validation|tuning] [--patch 96]

Needs `sh training/fetch_data.sh`. Every case is a challenge training file (`imgs`, `gts` with one label,
`spacing` 1 mm) named `MODALITY_SOURCE-TARGET.npz`; OUT/targets.csv lists each target's stratum, extent
and voxel count (the harness tags them the same way, `inference/harness/strata.py`). The two splits share
no target:
- `validation`: the real MNI152 2009a T1 (whole brain, grey matter, white matter, hemispheres); the real
  CAT12 T1 template with regions of the held-out Hammers atlas at every granularity (whole brain, lobes,
  structures, single nuclei); the real TotalSegmentator brain CT template with intensity-defined targets
  (brain, a hemisphere, the lateral ventricles, the bone rim at the skull base); random shapes of a held-out seed.
- `tuning` (where a rule's thresholds are chosen): the CAT12 template with neuromorphometrics regions, the
  CT template's other hemisphere and its parenchyma, random shapes of another seed.
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from inference.harness.strata import DEFAULT_PATCH, STRATA, stratum, target_extent
from training.label_maps import DATA_DIR, mni_tissue, random_shapes, read_atlas, read_nifti
from training.synthesis import render_image
from training.validate import brain_crop, cat12_template_on_atlas_grid

ONE_MM = np.asarray((1.0, 1.0, 1.0))
CT_ATLAS = "ct_brain_atlas_1mm.nii.gz"
CT_WINDOW_HU = (0.0, 80.0)  # the brain window: grey and white matter, CSF and blood apart
SEEDS = {"validation": 31_000_003, "tuning": 31_000_033}  # never a training seed (config seed, step)
# random-shape targets per stratum in each split
SHAPE_QUOTA = {"validation": {"small": 5, "medium": 4, "large": 5}, "tuning": {"small": 3, "medium": 2, "large": 4}}
MIN_TARGETS, MIN_LARGE = 40, 12  # the validation split's floor (issue 31)


@dataclass
class Target:
    name: str  # MODALITY_SOURCE-TARGET
    image: np.ndarray
    mask: np.ndarray


def atlas_rows(atlas: str, data_dir: Path = DATA_DIR) -> dict[str, dict]:
    """Region name -> its row (ROIid, and Hemisphere and CircRegion where the atlas has them) from the atlas's CSV."""
    with open(data_dir / f"{atlas}.csv", newline="") as f:
        return {r["ROIname"].strip(): r for r in csv.DictReader(f, delimiter=";")}


def atlas_names(atlas: str, data_dir: Path = DATA_DIR) -> dict[int, str]:
    """Region id -> name."""
    return {int(r["ROIid"]): name for name, r in atlas_rows(atlas, data_dir).items()}


def regions(labels: np.ndarray, names: dict[int, str], keep) -> np.ndarray:
    """The union of the regions whose name `keep` accepts."""
    return np.isin(labels, [i for i, n in names.items() if keep(n)])


def left_of_midline(mask: np.ndarray) -> np.ndarray:
    """The half of x (the last axis) below the middle of the mask's extent, as a broadcastable mask."""
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    return (np.arange(mask.shape[2]) < (xs[0] + xs[-1] + 1) / 2)[None, None, :]


def largest_component(mask: np.ndarray) -> np.ndarray:
    return cc3d.largest_k(mask.astype(np.uint8), k=1, connectivity=26) > 0


def mni_targets(data_dir: Path) -> list[Target]:
    t1, tissue = mni_tissue(data_dir)
    crop = brain_crop(t1 > 0)
    t1, tissue = t1[crop], tissue[crop]
    brain = tissue > 0
    left = left_of_midline(brain)
    return [Target("MR_mni-brain", t1, brain), Target("MR_mni-gm", t1, tissue == 1),
            Target("MR_mni-wm", t1, tissue == 2), Target("MR_mni-lefthemisphere", t1, brain & left),
            Target("MR_mni-rightwm", t1, (tissue == 2) & ~left)]


def cat12_targets(split: str, data_dir: Path) -> list[Target]:
    """The real CAT12 template; validation: the held-out Hammers regions, tuning: neuromorphometrics'."""
    hammers = read_atlas("hammers", data_dir)
    crop = brain_crop(hammers > 0)
    template = cat12_template_on_atlas_grid(data_dir)[crop]
    if split == "tuning":
        labels, names = read_atlas("neuromorphometrics", data_dir)[crop], atlas_names("neuromorphometrics", data_dir)
        rows = atlas_rows("neuromorphometrics", data_dir)
        side = {n: r["Hemisphere"] for n, r in rows.items()}
        circ = {n: r["CircRegion"] for n, r in rows.items()}
        wanted = {
            "lefthemisphere": lambda n: side[n] == "left",
            "rightfrontal": lambda n: circ[n] == "Frontal lobe" and side[n] == "right",
            "lefttemporal": lambda n: circ[n] == "Temporal lobe" and side[n] == "left",
            "cerebellum": lambda n: "Cerebell" in n,  # the CSV files cerebral white matter under "Cerebellum" too
            "cerebralwm": lambda n: "Cerebral White Matter" in n,
            "leftbasalganglia": lambda n: circ[n] == "Basal ganglia" and side[n] == "left",
            "rightoccipital": lambda n: circ[n] == "Occipital lobe" and side[n] == "right",
            "leftamygdala": lambda n: n == "Left Amygdala",
            "rightpallidum": lambda n: n == "Right Pallidum",
            "lefthippocampus": lambda n: n == "Left Hippocampus",
            "rightcaudate": lambda n: n == "Right Caudate",
        }
        return [Target(f"MR_cat12-{key}", template, regions(labels, names, keep)) for key, keep in wanted.items()]
    labels, names = hammers[crop], atlas_names("hammers", data_dir)
    wanted = {
        "brain": lambda n: True,
        "rightfrontal": lambda n: n.startswith("FL ") and n.endswith(" R"),
        "frontallobes": lambda n: n.startswith("FL "),
        "temporallobes": lambda n: n.startswith("TL "),
        "leftparietal": lambda n: n.startswith("PL ") and n.endswith(" L"),
        "rightoccipital": lambda n: n.startswith("OL ") and n.endswith(" R"),
        "cerebellum": lambda n: n.startswith("cerebellum"),
        "ventricles": lambda n: "ventricle" in n.lower(),
        "corpuscallosum": lambda n: n == "corpus callosum",
        "brainstem": lambda n: n.startswith("brainstem"),
        "leftthalamus": lambda n: n == "thalamus L",
        "rightputamen": lambda n: n == "putamen R",
        "leftcaudate": lambda n: n == "caudate nucleus L",
        "righthippocampus": lambda n: n == "TL hippocampus R",
        "leftamygdala": lambda n: n == "TL amygdala L",
        "rightpallidum": lambda n: n == "pallidum R",
        "leftaccumbens": lambda n: n == "nucleus accumbens L",
        "rightsubstantianigra": lambda n: n == "substantia nigra R",
        "thirdventricle": lambda n: n == "Third ventricle",
    }
    return [Target(f"MR_cat12-{key}", template, regions(labels, names, keep)) for key, keep in wanted.items()]


def ct_targets(split: str, data_dir: Path) -> list[Target]:
    """The brain CT template (HU, brain-extracted) in the brain window; targets by intensity."""
    hu = read_nifti(data_dir / CT_ATLAS).astype(np.float32)
    brain = hu > 0
    crop = brain_crop(brain)
    hu, brain = hu[crop], brain[crop]
    lo, hi = CT_WINDOW_HU
    image = np.round(np.clip((hu - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    left = left_of_midline(brain)
    if split == "tuning":
        parenchyma = largest_component(brain & (hu >= 20) & (hu < 60))
        return [Target("CT_ctbrain-righthemisphere", image, brain & ~left), Target("CT_ctbrain-parenchyma", image, parenchyma)]
    deep = ndimage.distance_transform_edt(brain) > 8  # CSF away from the sulci at the surface
    csf = cc3d.connected_components((deep & (hu < 15)).astype(np.uint8), connectivity=26)
    sizes = np.bincount(csf.ravel())
    sizes[0] = 0
    ventricles = np.isin(csf, np.argsort(sizes)[-2:])  # the two lateral ventricles
    bone = largest_component(brain & (hu >= 60))  # the bright rim the brain extraction left at the skull base
    return [Target("CT_ctbrain-brain", image, brain), Target("CT_ctbrain-lefthemisphere", image, brain & left),
            Target("CT_ctbrain-ventricles", image, ventricles), Target("CT_ctbrain-bonerim", image, bone)]


def shape_targets(split: str, patch: int, shape: tuple[int, int, int] = (144, 192, 192)) -> list[Target]:
    """Random shapes (synthetic contrast) until each stratum has its quota; one target per volume."""
    rng = np.random.default_rng(SEEDS[split])
    quota = dict(SHAPE_QUOTA[split])
    targets = []
    while any(quota.values()):
        labels = random_shapes(rng, shape)
        objects = [v for v in range(1, 100) if (labels == v).sum() >= 20]
        fits = [v for v in objects if quota.get(stratum(target_extent(labels == v), patch), 0) > 0]
        if not fits:
            continue
        v = fits[int(rng.integers(len(fits)))]
        size = stratum(target_extent(labels == v), patch)
        quota[size] -= 1
        targets.append(Target(f"CT_shapes-{size}{SHAPE_QUOTA[split][size] - quota[size]}", render_image(labels, rng), labels == v))
    return targets


def write_targets(out: Path, split: str, patch: int = DEFAULT_PATCH, data_dir: Path = DATA_DIR) -> list[dict]:
    """Write the split's cases and targets.csv; returns the rows of targets.csv."""
    out.mkdir(parents=True, exist_ok=True)
    targets = cat12_targets(split, data_dir) + ct_targets(split, data_dir) + shape_targets(split, patch)
    if split == "validation":
        targets = mni_targets(data_dir) + targets
    rows = []
    for target in targets:
        if not target.mask.any():
            raise ValueError(f"{target.name}: empty target")
        extent = target_extent(target.mask)
        np.savez_compressed(out / f"{target.name}.npz", imgs=target.image, gts=target.mask.astype(np.uint8), spacing=ONE_MM)
        rows.append({"case": f"{target.name}.npz", "stratum": stratum(extent, patch), "extent": extent,
                     "voxels": int(target.mask.sum())})
        print(f"{target.name}: {rows[-1]['stratum']}, extent {extent}, {rows[-1]['voxels']} voxels", flush=True)
    with open(out / "targets.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", choices=sorted(SEEDS), default="validation")
    parser.add_argument("--patch", type=int, default=DEFAULT_PATCH, help="the patch side the strata are relative to")
    args = parser.parse_args()
    rows = write_targets(args.out, args.split, args.patch)
    counts = {s: sum(r["stratum"] == s for r in rows) for s in STRATA}
    print(f"{len(rows)} targets: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.split == "validation" and (len(rows) < MIN_TARGETS or counts["large"] < MIN_LARGE):
        raise SystemExit(f"the validation split needs >= {MIN_TARGETS} targets, >= {MIN_LARGE} large")


if __name__ == "__main__":
    main()
