"""Checks of tests/official_replica.py, and a comparison of it with `python -m inference.harness`.

The replica is an independent re-implementation of the organisers' evaluation loop; the harness is
the project's own.  The predictors below are small deterministic scripts run as
`{sys.executable} script.py {inputs} {outputs}`.
"""
from __future__ import annotations

import csv
import math
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from official_replica import COLUMNS, replay_case

# surface_distance 0.1 imports from deprecated scipy.ndimage namespaces on every call.
pytestmark = pytest.mark.filterwarnings("ignore:Please import:DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
SHAPE = (24, 48, 48)

# ----------------------------------------------------------------------------- predictor scripts

# Common head: find the single case file, keep a copy of what was received in LOG/call_<n>.npz.
_HEAD = """
import shutil, sys
from pathlib import Path
import numpy as np
inputs, outputs = Path(sys.argv[1]), Path(sys.argv[2])
(case,) = sorted(inputs.glob("*.npz"))
log = Path({log!r})
log.mkdir(parents=True, exist_ok=True)
n = len(list(log.glob("call_*.npz")))
shutil.copy(case, log / f"call_{{n}}.npz")
data = np.load(case, allow_pickle=True)
out = outputs / case.name
"""

GT_WRITER = _HEAD + """
np.savez_compressed(out, segs=np.load({side!r})["gts"].astype(np.uint8))
"""

ZEROS = _HEAD + """
np.savez_compressed(out, segs=np.zeros(data["imgs"].shape, np.uint8))
"""

FIRST_CALL_ONLY = _HEAD + """
if n == 0:
    np.savez_compressed(out, segs=np.load({side!r})["segs"])
"""

# Class 1 perfect, every other class left empty: class 1 gets None in clicks_order, the others 'fg'.
FIRST_CLASS_ONLY = _HEAD + """
gts = np.load({side!r})["gts"]
np.savez_compressed(out, segs=np.where(gts == 1, 1, 0).astype(np.uint8))
"""

# Box shrunk by one voxel, plus balls of radius 3 at fg clicks, minus balls at bg clicks.
BOX_AND_BALLS = """
import sys
from pathlib import Path
import numpy as np
inputs, outputs = Path(sys.argv[1]), Path(sys.argv[2])
(case,) = sorted(inputs.glob("*.npz"))
data = np.load(case, allow_pickle=True)
shape = data["imgs"].shape
grid = np.indices(shape)
def ball(c):
    return sum((g - int(ci)) ** 2 for g, ci in zip(grid, c)) <= 9
boxes = list(data["boxes"]) if "boxes" in data.files else []
clicks = list(data["clicks"]) if "clicks" in data.files else []
segs = np.zeros(shape, np.uint8)
for i in range(max(len(boxes), len(clicks))):
    mask = np.zeros(shape, bool)
    if i < len(boxes):
        b = boxes[i]
        mask[int(b["z_min"]) + 1:int(b["z_max"]),
             int(b["z_mid_y_min"]) + 1:int(b["z_mid_y_max"]),
             int(b["z_mid_x_min"]) + 1:int(b["z_mid_x_max"])] = True
    if i < len(clicks):
        for c in clicks[i]["fg"]:
            mask |= ball(c)
        for c in clicks[i]["bg"]:
            mask &= ~ball(c)
    segs[mask] = i + 1
np.savez_compressed(outputs / case.name, segs=segs)
"""


def _script(tmp_path: Path, name: str, body: str, **fmt) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body.format(**fmt)) if fmt else body)
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {{inputs}} {{outputs}}"


def _calls(log: Path) -> list[dict]:
    files = sorted(log.glob("call_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    out = []
    for f in files:
        with np.load(f, allow_pickle=True) as d:
            out.append({k: d[k] for k in d.files})
    return out


# ----------------------------------------------------------------------------- synthetic cases


def _boxes(gts: np.ndarray) -> list[dict]:
    """Organisers' box (without the random widening): z range, and the 2D box on slice z_mid."""
    boxes = []
    for c in np.unique(gts)[1:]:
        z_idx, _, _ = np.where(gts == c)
        z_mid = int(z_idx[len(z_idx) // 2])
        ys, xs = np.where(gts[z_mid] == c)
        boxes.append(dict(z_min=int(z_idx.min()), z_max=int(z_idx.max()), z_mid=z_mid,
                          z_mid_x_min=int(xs.min()), z_mid_y_min=int(ys.min()),
                          z_mid_x_max=int(xs.max()), z_mid_y_max=int(ys.max())))
    return boxes


def _save_case(path: Path, gts: np.ndarray, spacing, boxes: bool) -> Path:
    rng = np.random.default_rng(0)
    imgs = np.clip(gts.astype(np.int16) * 60 + rng.integers(0, 40, gts.shape), 0, 255).astype(np.uint8)
    data = dict(imgs=imgs, gts=gts.astype(np.uint8), spacing=np.asarray(spacing, dtype=np.float64))
    if boxes:
        data["boxes"] = np.array(_boxes(gts), dtype=object)
    np.savez_compressed(path, **data)
    return path


def _ellipsoid(centre, radii) -> np.ndarray:
    grid = np.indices(SHAPE)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _cube_case() -> np.ndarray:
    """Class 1: a 9^3 cube (unique deepest voxel at its centre); class 2: a 5x7x9 cuboid (tied maxima)."""
    gts = np.zeros(SHAPE, np.uint8)
    gts[4:13, 10:19, 10:19] = 1
    gts[14:19, 25:32, 30:39] = 2
    return gts


CUBE_CENTRE = [8, 14, 14]


# ----------------------------------------------------------------------------- 1. the replica alone


@pytest.mark.parametrize("boxes", [True, False], ids=["box", "no-box"])
def test_perfect_predictor(tmp_path, boxes):
    gts = _cube_case()
    case = _save_case(tmp_path / "cube.npz", gts, (1.0, 1.0, 2.0), boxes)
    np.savez(tmp_path / "side.npz", gts=gts)
    log = tmp_path / "log"
    cmd = _script(tmp_path, "gt", GT_WRITER, log=str(log), side=str(tmp_path / "side.npz"))
    trace = []
    row = replay_case(case, cmd, tmp_path / "work", trace=trace)

    assert list(row) == COLUMNS
    assert row["CaseName"] == "cube.npz" and row["num_class"] == 2 and row["runtime_upperbound"] == 180
    first = 1 if boxes else 2
    for k in range(first, 7):
        assert row[f"DSC_{k}"] == 1.0 and row[f"NSD_{k}"] == 1.0
    if not boxes:
        assert row["DSC_1"] == row["NSD_1"] == row["RunningTime_1"] == 0
    assert row["DSC_AUC"] == pytest.approx(4.0) and row["NSD_AUC"] == pytest.approx(4.0)
    assert row["DSC_Final"] == row["NSD_Final"] == 1.0

    calls = _calls(log)
    assert len(calls) == (6 if boxes else 5) == len(trace)
    if boxes:  # call 0: the case as given, minus the ground truth
        assert sorted(calls[0]) == ["boxes", "imgs", "spacing"]
    for r, sent in enumerate(calls[1 if boxes else 0:], start=1):
        expected_keys = {"imgs", "spacing", "clicks", "clicks_order", "prev_pred"} | ({"boxes"} if boxes else set())
        assert set(sent) == expected_keys
        assert sent["clicks"].dtype == object and sent["clicks"].shape == (2,)
        # No error -> no click, but None is still appended: one entry per class per round.
        # Without a box, round 1 starts from zeros, so it brings one fg click per class.
        order = sent["clicks_order"]
        assert order.shape == (2, r)
        # dtype: '<U2' while only 'fg'/'bg' are in it, object once a None is.
        assert order.dtype == (object if (boxes or r > 1) else np.dtype("<U2"))
        if boxes:
            assert all(d == {"fg": [], "bg": []} for d in sent["clicks"])
            assert all(v is None for v in order.ravel())
        else:
            assert sent["clicks"][0] == {"fg": [CUBE_CENTRE], "bg": []}
            assert len(sent["clicks"][1]["fg"]) == 1 and sent["clicks"][1]["bg"] == []
            assert order.tolist() == [["fg"] + [None] * (r - 1)] * 2
        expected_prev = gts if (boxes or r > 1) else np.zeros_like(gts)
        assert sent["prev_pred"].dtype == np.uint8
        np.testing.assert_array_equal(sent["prev_pred"], expected_prev)


def test_zeros_predictor_clicks_the_deepest_voxel(tmp_path):
    gts = _cube_case()
    case = _save_case(tmp_path / "cube.npz", gts, (0.8, 0.8, 2.5), True)
    log = tmp_path / "log"
    cmd = _script(tmp_path, "zeros", ZEROS, log=str(log))
    row = replay_case(case, cmd, tmp_path / "work")

    for k in range(1, 7):
        assert row[f"DSC_{k}"] == 0.0 and row[f"NSD_{k}"] == 0.0
    assert row["DSC_AUC"] == row["NSD_AUC"] == 0.0

    calls = _calls(log)
    assert len(calls) == 6
    first = calls[1]
    # Class 1: the unique deepest voxel of the cube, its centre.
    assert first["clicks"][0] == {"fg": [CUBE_CENTRE], "bg": []}
    # Class 2: ties; the click must be a voxel of maximal (border-as-background) EDT.
    (click2,) = first["clicks"][1]["fg"]
    assert first["clicks"][1]["bg"] == []
    obj = np.pad(gts == 2, 1)
    edt = distance_transform_edt(obj)[1:-1, 1:-1, 1:-1]
    assert edt[tuple(click2)] == edt.max() == 3.0
    assert all(isinstance(v, (int, np.integer)) for v in click2)
    # All-'fg' clicks_order is a plain (n_classes, round) string array.
    order = first["clicks_order"]
    assert order.shape == (2, 1) and order.dtype.kind == "U" and order.tolist() == [["fg"], ["fg"]]
    # The error never changes, so every round repeats the same clicks.
    last = calls[-1]
    assert last["clicks"][0]["fg"] == [CUBE_CENTRE] * 5
    assert last["clicks"][1]["fg"] == [click2] * 5
    assert last["clicks_order"].tolist() == [["fg"] * 5] * 2


def test_mixed_none_and_clicks(tmp_path):
    gts = _cube_case()
    case = _save_case(tmp_path / "cube.npz", gts, (1.0, 1.0, 1.0), False)
    np.savez(tmp_path / "side.npz", gts=gts)
    log = tmp_path / "log"
    cmd = _script(tmp_path, "first", FIRST_CLASS_ONLY, log=str(log), side=str(tmp_path / "side.npz"))
    row = replay_case(case, cmd, tmp_path / "work")
    for k in range(2, 7):
        assert row[f"DSC_{k}"] == pytest.approx(0.5)
        assert row[f"NSD_{k}"] == pytest.approx(0.5)  # class 2 is empty: NSD 0; class 1 perfect: 1
    calls = _calls(log)
    # Round 1 (no box): nothing predicted yet, both classes get an fg click.
    assert calls[0]["clicks_order"].tolist() == [["fg"], ["fg"]]
    # Round 2 on: class 1 perfect -> None; class 2 still empty -> fg.  Stored as an object array.
    order = calls[2]["clicks_order"]
    assert order.dtype == object and order.tolist() == [["fg", None, None], ["fg", "fg", "fg"]]
    assert calls[2]["clicks"][0] == {"fg": [CUBE_CENTRE], "bg": []}


@pytest.mark.parametrize("boxes", [True, False], ids=["box", "no-box"])
def test_stale_output_is_reused(tmp_path, boxes):
    gts = _cube_case()
    case = _save_case(tmp_path / "cube.npz", gts, (1.0, 1.0, 2.0), boxes)
    first_pred = gts.copy()
    first_pred[first_pred == 2] = 0  # class 1 right, class 2 missed
    first_pred[4:13, 10:19, 16:19] = 0  # and part of the cube missed
    np.savez(tmp_path / "side.npz", segs=first_pred)
    log = tmp_path / "log"
    cmd = _script(tmp_path, "once", FIRST_CALL_ONLY, log=str(log), side=str(tmp_path / "side.npz"))
    trace = []
    row = replay_case(case, cmd, tmp_path / "work", trace=trace)

    first = 1 if boxes else 2
    expected = (2 * 6 * 81 / (9 * 81 + 6 * 81) + 0.0) / 2
    for k in range(first, 7):
        assert row[f"DSC_{k}"] == pytest.approx(expected)
        assert row[f"NSD_{k}"] == row[f"NSD_{first}"]
    assert all(t["output_exists"] for t in trace)
    calls = _calls(log)
    for sent in calls[1:]:
        np.testing.assert_array_equal(sent["prev_pred"], first_pred)  # the stale file, again and again


def test_no_output_at_all_scores_zero(tmp_path):
    gts = _cube_case()
    case = _save_case(tmp_path / "cube.npz", gts, (1.0, 1.0, 2.0), True)
    trace = []
    row = replay_case(case, f"{shlex.quote(sys.executable)} -c pass {{inputs}} {{outputs}}", tmp_path / "w", trace=trace)
    assert all(row[f"DSC_{k}"] == 0 for k in range(1, 7))
    assert not trace[-1]["output_exists"]  # the official CSV would leave this case out


# ----------------------------------------------------------------------------- 2. replica vs harness


def _comparison_cases(folder: Path, boxes: bool) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    a = np.zeros(SHAPE, np.uint8)
    a[_ellipsoid((11, 22, 20), (7, 12, 9))] = 1
    b = np.zeros(SHAPE, np.uint8)
    b[_ellipsoid((8, 15, 14), (5, 8, 7))] = 1
    b[_ellipsoid((15, 32, 33), (6, 9, 10)) & ~_ellipsoid((15, 32, 33), (3, 4, 4))] = 2  # hollow shell
    c = np.zeros(SHAPE, np.uint8)
    c[3:20, 6:40, 9:14] = 1  # a thin slab, then an L-shaped object
    c[5:18, 20:44, 25:30] = 2
    c[5:18, 38:44, 25:45] = 2
    return [
        _save_case(folder / "case_a.npz", a, (0.9, 0.9, 2.0), boxes),
        _save_case(folder / "case_b.npz", b, (1.0, 1.0, 1.0), boxes),
        _save_case(folder / "case_c.npz", c, (0.6, 0.8, 1.5), boxes),
    ]


def _close(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


@pytest.mark.parametrize("no_box", [False, True], ids=["box", "no-box"])
def test_replica_matches_harness(tmp_path, no_box):
    boxed = _comparison_cases(tmp_path / "cases", boxes=True)
    predictor = _script(tmp_path, "box_and_balls", BOX_AND_BALLS)

    args = [sys.executable, "-m", "inference.harness", "run", str(tmp_path / "cases"), str(tmp_path / "out"),
            "--predictor", predictor] + (["--no-box"] if no_box else [])
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        harness = {r["CaseName"]: r for r in csv.DictReader(f)}
    assert sorted(harness) == [p.name for p in boxed]

    # The replica gets the same cases, without the boxes key when the harness drops them.
    mine = boxed if not no_box else _comparison_cases(tmp_path / "cases_nobox", boxes=False)
    for case in mine:
        ours = replay_case(case, predictor, tmp_path / "work" / case.stem)
        theirs = harness[case.name]
        assert set(COLUMNS) <= set(theirs), sorted(set(COLUMNS) - set(theirs))
        diffs = []
        for col, tol in ([(f"DSC_{k}", 1e-6) for k in range(1, 7)] + [(f"NSD_{k}", 0.02) for k in range(1, 7)]
                         + [("DSC_AUC", 4e-6), ("DSC_Final", 1e-6), ("NSD_AUC", 0.08), ("NSD_Final", 0.02)]):
            if not _close(float(ours[col]), float(theirs[col]), tol):
                diffs.append(f"{col}: replica {ours[col]!r} vs harness {theirs[col]!r}")
        for col in ("num_class", "runtime_upperbound"):
            if float(ours[col]) != float(theirs[col]):
                diffs.append(f"{col}: replica {ours[col]!r} vs harness {theirs[col]!r}")
        if no_box and float(theirs["RunningTime_1"]) != 0:
            diffs.append(f"RunningTime_1 should be 0 without a box, harness has {theirs['RunningTime_1']}")
        assert not diffs, f"{case.name}: " + "; ".join(diffs)
        # The predictor is imperfect and clicks matter: scores must move over the rounds.
        assert len({round(ours[f"DSC_{k}"], 9) for k in range(2, 7)}) > 1
