"""Check the image's answers on cases replayed by the harness, against the same cases run outside it.

    python -m scripts.compare_image_scores CASES INSIDE_OUT OUTSIDE_OUT

INSIDE_OUT / OUTSIDE_OUT: `python -m inference.harness run CASES OUT --workdir OUT/work` outputs. Every case
must have a final answer of the image's shape, dtype uint8 and only the case's labels, no harness error, and
scores inside not worse than outside by more than TOLERANCE (the image's torch differs from CI's).
Prints the scores side by side; exits 1 on any failure.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

SCORES = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")
TOLERANCE = 0.005


def read_rows(out: Path) -> dict[str, dict]:
    with open(out / "metrics.csv", newline="") as f:
        return {row["CaseName"]: row for row in csv.DictReader(f)}


def answer_problems(case: Path, answer: Path) -> list[str]:
    """What is wrong with a case's final answer file, if anything."""
    if not answer.is_file():
        return [f"no answer file {answer}"]
    with np.load(case, allow_pickle=True) as c, np.load(answer, allow_pickle=True) as a:
        image, labels, segs = c["imgs"], np.unique(c["gts"]), a["segs"]
    problems = []
    if segs.shape != image.shape:
        problems.append(f"shape {segs.shape} != image {image.shape}")
    if segs.dtype != np.uint8:
        problems.append(f"dtype {segs.dtype}, not uint8")
    extra = sorted(set(np.unique(segs).tolist()) - set(labels.tolist()))
    if extra:
        problems.append(f"labels {extra} that the case does not have")
    return problems


def differing_voxels(inside: Path, outside: Path) -> str:
    if not (inside.is_file() and outside.is_file()):
        return "(an answer is missing:)"
    with np.load(inside) as a, np.load(outside) as b:
        if a["segs"].shape != b["segs"].shape:
            return "(shapes differ:)"
        return str(int((a["segs"] != b["segs"]).sum()))


def main(argv: list[str]) -> int:
    cases, inside, outside = (Path(a) for a in argv)
    rows_in, rows_out = read_rows(inside), read_rows(outside)
    failures = []
    print(f"{'case':<22}" + "".join(f"{s + ' in/out':>22}" for s in SCORES))
    for case in sorted(cases.glob("*.npz")):
        name = case.name
        if name not in rows_in or name not in rows_out:
            failures.append(f"{name}: not scored (inside: {name in rows_in}, outside: {name in rows_out})")
            continue
        a, b = rows_in[name], rows_out[name]
        print(f"{name:<22}" + "".join(f"{float(a[s]):>13.4f} /{float(b[s]):>7.4f}" for s in SCORES))
        for where, row in (("inside", a), ("outside", b)):
            if row.get("error"):
                failures.append(f"{name} {where}: harness error {row['error']}")
        for problem in answer_problems(case, inside / "work" / case.stem / "outputs" / name):
            failures.append(f"{name} inside: {problem}")
        differ = differing_voxels(inside / "work" / case.stem / "outputs" / name,
                                  outside / "work" / case.stem / "outputs" / name)
        print(f"{'':<22}final answers: {differ} voxels differ inside vs outside")
        worse = [s for s in SCORES if float(a[s]) < float(b[s]) - TOLERANCE]
        if worse:
            failures.append(f"{name}: the image scores worse on {', '.join(worse)}")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print(f"every answer has the image's shape, uint8 and the case's labels; inside >= outside - {TOLERANCE}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
