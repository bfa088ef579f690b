"""Held-out validation through the harness: a model next to the box-fill and click-ball floors.

    .venv/bin/python -m training.validate cases OUT_CASES            # write the validation cases
    .venv/bin/python -m training.validate run OUT_CASES OUT [--model DIR] [--only model box-fill click-balls]

Cases never seen in training (file names `MODALITY_SOURCE_i.npz`):
- `hammers`: the held-out Hammers atlas, synthetic appearance (held-out seeds), one with thick slices;
- `shapes`: random shapes from a held-out seed;
- `mniT1`: the real MNI152 2009a T1 image with its grey and white matter;
- `cat12T1`: the real CAT12 T1 template on the atlas grid with held-out Hammers regions.
With `cases --large`, also large structures (seen zoomed out, at zoom 1.5-2.5 for patch 96):
`cat12big` and `hammersbig` (groups of neighbouring Hammers regions merged, on the real
template and on a synthetic appearance) and `shapesbig` (random shapes in a 112x192x192 volume).
`run` replays the official protocol on them with boxes and with `--no-box`, for the model and
the floors, and writes `validation.md` (means over cases, overall and per source).
"""
from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from scripts.synthetic_cases import write_case

from .label_maps import DATA_DIR, VALIDATION_ATLAS, mni_tissue, random_shapes, read_atlas
from .synthesis import render_image

REPO = Path(__file__).resolve().parent.parent
SCORES = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")
SEED = 1_000_003  # training draws use seeds (config seed, step); this one is never among them
CLASSES_PER_CASE = 3


def relabel(labels: np.ndarray, targets: list[int]) -> np.ndarray:
    """Targets become 1..K in order; everything else background."""
    gts = np.zeros(labels.shape, dtype=np.uint8)
    for i, t in enumerate(targets):
        gts[labels == t] = i + 1
    return gts


def pick_regions(labels: np.ndarray, rng: np.random.Generator, k: int, min_voxels: int = 500) -> list[int]:
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    values = values[counts >= min_voxels]
    return [int(v) for v in rng.choice(values, size=min(k, len(values)), replace=False)]


def brain_crop(mask: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    where = np.nonzero(mask)
    return tuple(slice(max(int(w.min()) - margin, 0), int(w.max()) + margin + 1) for w in where)


def cat12_template_on_atlas_grid(data_dir: Path = DATA_DIR) -> np.ndarray:
    """The 0.5 mm CAT12 template resampled (trilinear) onto the 1 mm atlas grid, uint8, array order (z, y, x)."""
    import nibabel as nib

    template = nib.load(str(data_dir / "Template_05mm_bet.nii.gz"))
    atlas = nib.load(str(data_dir / f"{VALIDATION_ATLAS}.nii.gz"))
    to_template = np.linalg.inv(template.affine) @ atlas.affine
    values = ndimage.affine_transform(np.asanyarray(template.dataobj).astype(np.float32), to_template[:3, :3],
                                      to_template[:3, 3], output_shape=atlas.shape[:3], order=1)
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8).transpose(2, 1, 0)


def merged_regions(labels: np.ndarray, rng: np.random.Generator, groups: int, k: int) -> np.ndarray:
    """`k` structures made of neighbouring regions: the regions clustered into `groups` by their centres
    (k-means), `k` of the clusters become labels 1..k."""
    values = np.unique(labels[labels > 0])
    centres = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, values))
    means = centres[rng.choice(len(centres), groups, replace=False)]
    for _ in range(20):
        nearest = np.argmin(((centres[:, None] - means[None]) ** 2).sum(-1), axis=1)
        means = np.array([centres[nearest == g].mean(0) if (nearest == g).any() else means[g] for g in range(groups)])
    merged = np.zeros(labels.shape, dtype=np.uint8)
    for i, g in enumerate(rng.choice(np.unique(nearest), size=k, replace=False)):
        merged[np.isin(labels, values[nearest == g])] = i + 1
    return merged


def write_large_cases(out: Path, hammers: np.ndarray, template: np.ndarray, rng: np.random.Generator) -> list[Path]:
    """Structures larger than the patch: the zoomed-out case the other sources hardly have."""
    written = []
    one_mm = np.asarray((1.0, 1.0, 1.0))
    for i in range(4):
        gts = merged_regions(hammers, rng, int(rng.integers(4, 9)), CLASSES_PER_CASE)
        name, image = (f"MR_cat12big_{i}", template) if i < 2 else (f"MR_hammersbig_{i}", render_image(hammers, rng))
        written.append(write_case(out / f"{name}.npz", {"imgs": image, "gts": gts, "spacing": one_mm}))
    for i in range(2):
        written.append(write_case(out / f"CT_shapesbig_{i}.npz", shapes_case(rng, (112, 192, 192))))
    return written


def shapes_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> dict:
    """Random shapes in a volume of `shape` at 1 mm, their first classes (those of 20 voxels or more) as targets."""
    labels = random_shapes(rng, shape)
    targets = [t for t in range(1, 1 + CLASSES_PER_CASE) if (labels == t).sum() >= 20]
    return {"imgs": render_image(labels, rng), "gts": relabel(labels, targets), "spacing": np.asarray((1.0, 1.0, 1.0))}


def write_validation_cases(out: Path, data_dir: Path = DATA_DIR, seed: int = SEED, with_mni: bool = True,
                           large: bool = False) -> list[Path]:
    """The validation cases; another `seed` draws other regions and appearances (tuning cases, training/calibrate.py).

    `with_mni=False` leaves out the MNI152 case, which is the same whatever the seed; `large` adds
    the large-structure cases (their own random stream: the others stay the same)."""
    rng = np.random.default_rng(seed)
    written = []
    hammers = read_atlas(VALIDATION_ATLAS, data_dir)
    atlas_crop = brain_crop(hammers > 0)
    hammers = hammers[atlas_crop]
    for i in range(3):
        targets = pick_regions(hammers, rng, CLASSES_PER_CASE)
        labels, spacing = hammers, (1.0, 1.0, 1.0)
        if i == 2:  # thick slices, as in most clinical MR
            labels, spacing = hammers[::3], (1.0, 1.0, 3.0)
        written.append(write_case(out / f"MR_hammers_{i}.npz", {
            "imgs": render_image(labels, rng), "gts": relabel(labels, targets), "spacing": np.asarray(spacing)}))
    for i in range(3):
        written.append(write_case(out / f"CT_shapes_{i}.npz", shapes_case(rng, (64, 112, 112))))
    if with_mni:
        t1, tissue = mni_tissue(data_dir)
        mni_crop = brain_crop(t1 > 0)
        written.append(write_case(out / "MR_mniT1_0.npz", {
            "imgs": t1[mni_crop], "gts": relabel(tissue[mni_crop], [1, 2]), "spacing": np.asarray((1.0, 1.0, 1.0))}))
    template = cat12_template_on_atlas_grid(data_dir)[atlas_crop]
    for i in range(2):
        targets = pick_regions(hammers, rng, CLASSES_PER_CASE)
        written.append(write_case(out / f"MR_cat12T1_{i}.npz", {
            "imgs": template, "gts": relabel(hammers, targets), "spacing": np.asarray((1.0, 1.0, 1.0))}))
    if large:
        written += write_large_cases(out, hammers, template, np.random.default_rng([seed, 1]))
    return written


# ----------------------------------------------------------------------------- running


PREDICTORS = ("model", "box-fill", "click-balls")


def predictor_command(name: str, model: Path | None) -> str:
    if name == "model":
        model_arg = f" --model {shlex.quote(str(model))}" if model else ""
        return f"sh {shlex.quote(str(REPO / 'predict.sh'))} {{inputs}} {{outputs}}{model_arg}"
    return f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m training.floors {name} {{inputs}} {{outputs}}"


def settings(name: str) -> list[bool]:
    """The `--no-box` settings a predictor is run with: box-fill has nothing to fill without a box."""
    return [False] if name == "box-fill" else [False, True]


def read_results(out: Path) -> dict[tuple[str, bool], list[dict]]:
    """Every finished run under `out`, in a fixed order."""
    results = {}
    for name in PREDICTORS:
        for no_box in settings(name):
            path = out / f"{name}{'-nobox' * no_box}" / "metrics.csv"
            if path.exists():
                with open(path) as f:
                    results[(name, no_box)] = list(csv.DictReader(f))
    return results


def run_harness(cases: Path, out: Path, command: str, no_box: bool) -> None:
    args = [sys.executable, "-m", "inference.harness", "run", str(cases), str(out), "--predictor", command]
    subprocess.run(args + (["--no-box"] if no_box else []), cwd=REPO, check=True)


def source(case_name: str) -> str:
    return case_name.split("_")[1] if case_name.count("_") >= 2 else case_name


def table(results: dict[tuple[str, bool], list[dict]]) -> str:
    """Markdown: one row per (predictor, prompt setting), overall then per source, DSC_AUC per source."""
    sources = sorted({source(r["CaseName"]) for rows in results.values() for r in rows})
    head = ["predictor", "prompts", "cases", *SCORES, "over budget", "mean s/case", *[f"DSC_AUC {s}" for s in sources]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, no_box), rows in results.items():
        mean = {s: np.mean([float(r[s]) for r in rows]) for s in SCORES}
        per_source = [np.mean([float(r["DSC_AUC"]) for r in rows if source(r["CaseName"]) == s]) for s in sources]
        over = sum(r.get("over_budget") in ("True", "1", "true") for r in rows)
        seconds = np.mean([float(r["TotalRunningTime"]) for r in rows])
        lines.append("| " + " | ".join([name, "clicks only" if no_box else "box + clicks", str(len(rows)),
                                        *[f"{mean[s]:.3f}" for s in SCORES], str(over), f"{seconds:.1f}",
                                        *[f"{v:.3f}" for v in per_source]]) + " |")
    return "\n".join(lines)


def case_tool_parser(description: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """A tool over a set of cases: `cases OUT` writes them, `run CASES ...` uses them; the parser, and the `run`
    sub-parser for the tool's own arguments."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    cases = sub.add_parser("cases")
    cases.add_argument("out", type=Path)
    cases.add_argument("--large", action="store_true", help="also the large-structure cases (`*big`)")
    run = sub.add_parser("run")
    run.add_argument("cases", type=Path)
    return parser, run


def main(argv: list[str] | None = None) -> None:
    parser, r = case_tool_parser(__doc__.splitlines()[0])
    r.add_argument("out", type=Path)
    r.add_argument("--model", type=Path, help="model folder (default: the container's default)")
    r.add_argument("--only", nargs="+", choices=PREDICTORS, default=list(PREDICTORS),
                   help="run these (the table also shows earlier runs found in OUT)")
    args = parser.parse_args(argv)
    if args.command == "cases":
        for path in write_validation_cases(args.out, large=args.large):
            print(path)
        return
    for name in args.only:
        for no_box in settings(name):
            run_harness(args.cases, args.out / f"{name}{'-nobox' * no_box}", predictor_command(name, args.model), no_box)
    text = table(read_results(args.out))
    (args.out / "validation.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
