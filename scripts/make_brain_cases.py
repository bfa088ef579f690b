"""Write real-image labelled cases in the challenge's training format (for `training.train --data` checks).

    .venv/bin/python -m scripts.make_brain_cases OUT [--demo DEMO_OUT]

Needs `sh training/fetch_data.sh`. OUT gets 4 cases on the real CAT12 T1 template (1 mm atlas grid,
cropped to the brain), labels from training atlases (never the held-out Hammers one):
3 neuromorphometrics regions, 3 LPBA40 regions, 3 groups of neighbouring neuromorphometrics
regions (larger than a 64 patch) and the whole brain as one label. DEMO_OUT gets the large
structure of the project's validation image: the MNI152 2009a T1 with its whole brain
(grey | white matter) as one label, the one-click test of a structure larger than the patch.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from inference.harness.boxes import organiser_boxes
from training.label_maps import mni_tissue, read_atlas
from training.validate import brain_crop, cat12_template_on_atlas_grid, merged_regions, pick_regions, relabel

SEED = 25
ONE_MM = (1.0, 1.0, 1.0)


def write_case(path: Path, imgs: np.ndarray, gts: np.ndarray) -> Path:
    """A training-format case: imgs, gts, spacing (x, y, z) and the organisers' boxes."""
    found = organiser_boxes(gts, np.random.RandomState(SEED))
    boxes = np.empty(len(found), dtype=object)
    for i, box in enumerate(found):
        boxes[i] = box
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, imgs=imgs, gts=gts, spacing=np.asarray(ONE_MM), boxes=boxes)
    return path


def brain_cases(out: Path) -> list[Path]:
    rng = np.random.default_rng(SEED)
    neuro = read_atlas("neuromorphometrics")
    crop = brain_crop(neuro > 0)
    template, neuro, lpba = cat12_template_on_atlas_grid()[crop], neuro[crop], read_atlas("lpba40")[crop]
    return [
        write_case(out / "MR_cat12neuro_0.npz", template, relabel(neuro, pick_regions(neuro, rng, 3))),
        write_case(out / "MR_cat12lpba_1.npz", template, relabel(lpba, pick_regions(lpba, rng, 3))),
        write_case(out / "MR_cat12merged_2.npz", template, merged_regions(neuro, rng, 6, 3)),
        write_case(out / "MR_cat12brain_3.npz", template, (neuro > 0).astype(np.uint8)),
    ]


def mni_brain_case(out: Path) -> Path:
    t1, tissue = mni_tissue()
    crop = brain_crop(t1 > 0)
    return write_case(out / "MR_mniBrain_0.npz", t1[crop], (tissue[crop] > 0).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--demo", type=Path, help="also write the MNI152 whole-brain case here")
    args = parser.parse_args()
    for path in brain_cases(args.out) + ([mni_brain_case(args.demo)] if args.demo else []):
        with np.load(path) as npz:
            counts = np.bincount(npz["gts"].ravel())[1:]
        print(f"{path}: voxels per label {counts.tolist()}")


if __name__ == "__main__":
    main()
