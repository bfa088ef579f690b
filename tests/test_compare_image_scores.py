"""The image check's judge (scripts/compare_image_scores.py): it fails a wrong answer and a worse score."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from scripts.compare_image_scores import SCORES, answer_problems

REPO = Path(__file__).resolve().parent.parent


def write_case(path: Path) -> np.ndarray:
    gts = np.zeros((4, 8, 8), np.uint8)
    gts[1:3, 2:6, 2:6] = 1
    gts[1:3, 6:8, 6:8] = 2
    np.savez(path, imgs=np.zeros_like(gts), gts=gts, spacing=np.ones(3))
    return gts


def test_answer_problems_name_shape_dtype_and_foreign_labels(tmp_path):
    case, answer = tmp_path / "c.npz", tmp_path / "a.npz"
    gts = write_case(case)
    assert answer_problems(case, answer) == [f"no answer file {answer}"]
    np.savez(answer, segs=gts)
    assert answer_problems(case, answer) == []
    np.savez(answer, segs=gts[:, :4])
    assert "shape" in answer_problems(case, answer)[0]
    np.savez(answer, segs=gts.astype(np.int64))
    assert "uint8" in answer_problems(case, answer)[0]
    segs = gts.copy()
    segs[0, 0, 0] = 3
    np.savez(answer, segs=segs)
    assert "[3]" in answer_problems(case, answer)[0]


def run_compare(tmp_path, inside_score: float) -> subprocess.CompletedProcess:
    cases = tmp_path / "cases"
    cases.mkdir(parents=True)
    gts = write_case(cases / "CT_x.npz")
    for where, score in (("inside", inside_score), ("outside", 3.5)):
        out = tmp_path / where / "work" / "CT_x" / "outputs"
        out.mkdir(parents=True)
        np.savez(out / "CT_x.npz", segs=gts)
        with open(tmp_path / where / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["CaseName", *SCORES, "error"])
            writer.writeheader()
            writer.writerow({"CaseName": "CT_x.npz", **dict.fromkeys(SCORES, score), "error": ""})
    return subprocess.run([sys.executable, "-m", "scripts.compare_image_scores", str(cases), str(tmp_path / "inside"),
                           str(tmp_path / "outside")], cwd=REPO, capture_output=True, text=True, check=False)


def test_equal_scores_pass_and_worse_ones_fail(tmp_path):
    assert run_compare(tmp_path / "same", 3.5).returncode == 0
    worse = run_compare(tmp_path / "worse", 3.4)
    assert worse.returncode == 1 and "scores worse on DSC_AUC" in worse.stderr
