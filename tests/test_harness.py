"""The harness: simulated user, organiser boxes, the per-case loop, reports and the CLI."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import distance_transform_edt

from inference.harness.__main__ import main as harness_main
from inference.harness.boxes import case_rng, organiser_box, organiser_boxes
from inference.harness.protocol import Predictor, TrainingCase, class_rows, load_training_case, official_row, replay_case
from inference.harness.report import OFFICIAL_COLUMNS, modality, read_metrics, summarize, summarize_strata
from inference.harness.simulated_user import Click, simulate_click, simulate_round
from inference.harness.strata import stratum, target_extent

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- simulated user


def full_volume_click(prediction, truth):
    """The evaluator's rule written the slow way: full volume, scipy's EDT, global-seed tie-break."""
    error = (prediction != truth).astype(np.uint8)
    if not error.any():
        return None
    labels = cc3d.connected_components(error, connectivity=26)
    sizes = np.bincount(labels.flat)
    sizes[0] = 0
    component = labels == np.argmax(sizes)
    coords = np.argwhere(component)
    lo, hi = coords.min(0), coords.max(0) + 1
    pad = np.maximum(((hi - lo) * 0.25).astype(int), 1)
    padded = np.zeros(hi - lo + 2 * pad, dtype=np.uint8)
    padded[tuple(slice(p, p + n) for p, n in zip(pad, hi - lo))] = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    dist = np.zeros(component.shape)
    dist[tuple(slice(a, b) for a, b in zip(lo, hi))] = distance_transform_edt(padded)[
        tuple(slice(p, p + n) for p, n in zip(pad, hi - lo))]
    dist *= component
    np.random.seed(42)
    best = np.argwhere(dist == dist.max())
    voxel = tuple(int(v) for v in best[np.random.choice(len(best))])
    return Click("fg" if truth[voxel] else "bg", voxel)


def test_no_error_means_no_click():
    truth = np.zeros((5, 6, 7), bool)
    truth[1:3, 2:4, 2:5] = True
    assert simulate_click(truth.copy(), truth) is None
    assert simulate_click(np.zeros_like(truth), np.zeros_like(truth)) is None


def test_a_single_missed_voxel_gets_an_fg_click_there():
    truth = np.zeros((5, 6, 7), bool)
    truth[2, 3, 4] = True
    assert simulate_click(np.zeros_like(truth), truth) == Click("fg", (2, 3, 4))


def test_a_single_extra_voxel_gets_a_bg_click_there():
    truth = np.zeros((5, 6, 7), bool)
    truth[1:4, 1:4, 1:4] = True
    prediction = truth.copy()
    prediction[4, 5, 6] = True
    assert simulate_click(prediction, truth) == Click("bg", (4, 5, 6))


def test_the_click_goes_to_the_largest_component_at_its_deepest_voxel():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:5, 2:5, 2:5] = True  # small miss: 27 voxels
    truth[8:17, 8:17, 8:17] = True  # large miss: 729 voxels, centre (12, 12, 12)
    assert simulate_click(np.zeros_like(truth), truth) == Click("fg", (12, 12, 12))


def test_ties_are_broken_like_the_evaluator():
    truth = np.zeros((4, 10, 10), bool)
    truth[1:3, 2:8, 2:8] = True  # a 2-voxel-thick slab: many voxels share the largest distance
    click = simulate_click(np.zeros_like(truth), truth)
    assert click == full_volume_click(np.zeros_like(truth), truth)
    dist = distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1, 1:-1]
    assert (dist == dist[click.voxel]).sum() > 1  # it really was a tie


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 0.5))
def test_bounding_box_shortcut_equals_the_full_volume_rule(seed, density):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(3, 14, size=3))
    truth = rng.random(shape) < density
    prediction = rng.random(shape) < density
    assert simulate_click(prediction, truth) == full_volume_click(prediction, truth)


def test_a_round_gives_one_click_or_none_per_class():
    gts = np.zeros((6, 8, 8), np.uint8)
    gts[1:3, 1:3, 1:3] = 1
    gts[4:6, 5:8, 5:8] = 2
    segs = np.where(gts == 1, 1, 0).astype(np.uint8)
    clicks = simulate_round(segs, gts, [1, 2])
    assert clicks[0] is None and clicks[1].kind == "fg" and gts[clicks[1].voxel] == 2


# ----------------------------------------------------------------------------- boxes


def test_organiser_box_uses_the_voxel_median_slice_and_closed_ranges():
    mask = np.zeros((10, 12, 14), bool)
    mask[2, 3:5, 4:6] = True  # 4 voxels on slice 2
    mask[3:9, 6, 7] = True  # 6 voxels, one on each of slices 3..8
    box = organiser_box(mask)
    z = np.nonzero(mask)[0]
    assert box["z_mid"] == z[len(z) // 2] == 4  # not the middle of the distinct slices (5)
    assert (box["z_min"], box["z_max"]) == (2, 8)
    assert (box["z_mid_y_min"], box["z_mid_y_max"], box["z_mid_x_min"], box["z_mid_x_max"]) == (6, 6, 7, 7)


def test_organiser_widening_is_seeded_scaled_and_clipped():
    mask = np.zeros((4, 512, 512), bool)
    mask[1:3, 0:100, 200:300] = True
    boxes = [organiser_box(mask, case_rng("CT_x.npz", s)) for s in range(20)]
    assert boxes[3] == organiser_box(mask, case_rng("CT_x.npz", 3))  # reproducible
    shifts = {b["z_mid_x_max"] - 299 for b in boxes}
    assert shifts <= {0, 2, 4, 6, 8, 10} and len(shifts) > 1  # 0..5 px scaled by 512/256
    assert all(b["z_mid_y_min"] == 0 for b in boxes)  # clipped at the border
    gts = np.zeros((4, 20, 20), np.uint8)
    gts[1, 2:4, 2:4], gts[2, 10:12, 10:14] = 3, 7
    assert [b["z_min"] for b in organiser_boxes(gts)] == [1, 2]  # label order


# ----------------------------------------------------------------------------- the per-case loop


def small_case(boxes: bool = True) -> TrainingCase:
    gts = np.zeros((12, 24, 24), np.uint8)
    gts[2:8, 4:14, 4:14] = 1
    gts[6:11, 15:22, 12:20] = 2
    imgs = (gts * 80 + 20).astype(np.uint8)
    box_arr = np.array(organiser_boxes(gts), dtype=object) if boxes else None
    return TrainingCase("CT_small.npz", imgs, gts, np.array([1.0, 1.0, 2.0]), box_arr)


def script_predictor(tmp_path: Path, body: str) -> Predictor:
    script = tmp_path / "predictor.py"
    script.write_text("import sys, pathlib, numpy as np\ninp, out = map(pathlib.Path, sys.argv[1:3])\n"
                      "f = next(inp.glob('*.npz'))\nd = np.load(f, allow_pickle=True)\n" + body)
    return Predictor(f"{sys.executable} {script} {{inputs}} {{outputs}}")


def test_box_case_gets_six_calls_with_the_evaluator_keys(tmp_path):
    keys_log = tmp_path / "keys.txt"
    predictor = script_predictor(tmp_path, f"open({str(keys_log)!r}, 'a').write(','.join(sorted(d.files)) + '\\n')\n"
                                           "np.savez(out / f.name, segs=np.zeros(d['imgs'].shape, np.uint8))\n")
    result = replay_case(small_case(), predictor, tmp_path / "work")
    calls = keys_log.read_text().splitlines()
    assert calls[0] == "boxes,imgs,spacing"
    assert calls[1:] == ["boxes,clicks,clicks_order,imgs,prev_pred,spacing"] * 5
    assert len(result.times) == 6 and all(t > 0 for t in result.times)
    assert result.dsc == [0.0] * 6 and result.error is None


def test_no_box_case_scores_the_missing_box_call_as_zero(tmp_path):
    predictor = script_predictor(tmp_path, "np.savez(out / f.name, segs=np.zeros(d['imgs'].shape, np.uint8))\n")
    result = replay_case(small_case(boxes=False), predictor, tmp_path / "work")
    assert result.times[0] == 0.0 and len(result.times) == 6 and all(t > 0 for t in result.times[1:])


def test_clicks_accumulate_and_none_marks_a_finished_class(tmp_path):
    case = small_case()
    np.save(tmp_path / "gts.npy", case.gts)
    # perfect on class 1 from the start, never predicts class 2: class 1 gets None, class 2 fg clicks
    predictor = script_predictor(tmp_path, f"g = np.load({str(tmp_path / 'gts.npy')!r})\n"
                                           "np.savez(out / f.name, segs=np.where(g == 1, 1, 0).astype(np.uint8))\n"
                                           f"import shutil; shutil.copy(f, {str(tmp_path / 'last.npz')!r})\n")
    result = replay_case(case, predictor, tmp_path / "work")
    with np.load(tmp_path / "last.npz", allow_pickle=True) as last:
        order = [list(o) for o in last["clicks_order"]]
        clicks = list(last["clicks"])
    assert order[0] == [None] * 5 and order[1] == ["fg"] * 5
    assert len(clicks[1]["fg"]) == 5 and clicks[0] == {"fg": [], "bg": []}
    assert all(case.gts[tuple(v)] == 2 for v in clicks[1]["fg"])
    assert result.dsc[1:] == pytest.approx([0.5] * 5)  # class 1 perfect, class 2 empty


def test_a_missing_answer_reuses_the_previous_one(tmp_path):
    case = small_case()
    np.save(tmp_path / "gts.npy", case.gts)
    predictor = script_predictor(tmp_path, f"g = np.load({str(tmp_path / 'gts.npy')!r})\n"
                                           "np.savez(out / f.name, segs=g) if 'clicks' not in d.files else None\n")
    result = replay_case(case, predictor, tmp_path / "work")
    assert result.dsc == pytest.approx([1.0] * 6)  # the box call's perfect answer stands for every round


def test_an_answer_of_the_wrong_shape_is_reported_not_scored(tmp_path):
    predictor = script_predictor(tmp_path, "np.savez(out / f.name, segs=np.zeros((3, 3, 3), np.uint8))\n")
    result = replay_case(small_case(), predictor, tmp_path / "work")
    assert "abort" in result.error
    row = official_row(result)
    assert row["DSC_Final"] == 0.0 and set(OFFICIAL_COLUMNS) <= set(row)


def test_class_rows_hold_each_class_s_own_scores_and_stratum(tmp_path):
    case = small_case(boxes=False)
    np.save(tmp_path / "gts.npy", case.gts)
    # class 1 perfect from the first click round on, class 2 never answered
    predictor = script_predictor(tmp_path, f"g = np.load({str(tmp_path / 'gts.npy')!r})\n"
                                           "np.savez(out / f.name, segs=np.where(g == 1, 1, 0).astype(np.uint8))\n")
    result = replay_case(case, predictor, tmp_path / "work")
    assert result.extents == [10, 8]
    first, second = class_rows(result, patch=27)
    assert (first["stratum"], second["stratum"]) == ("medium", "small")  # 10 >= 27/3 > 8
    assert [first[f"DSC_{i}"] for i in range(1, 7)] == [0.0] + [1.0] * 5
    assert [second[f"DSC_{i}"] for i in range(1, 7)] == [0.0] * 6
    assert first["DSC_AUC"] == pytest.approx(4.0) and second["DSC_AUC"] == 0.0
    case_row = official_row(result)
    for i in range(1, 7):  # the evaluator's case scores are the means of the class scores, NSD's rule included
        assert case_row[f"DSC_{i}"] == pytest.approx((first[f"DSC_{i}"] + second[f"DSC_{i}"]) / 2)
        assert case_row[f"NSD_{i}"] == pytest.approx((first[f"NSD_{i}"] + second[f"NSD_{i}"]) / 2)
    assert first["NSD_2"] == 1.0  # the case's DSC 0.5 > 0.2, so NSD is computed for every class


def test_size_strata_split_at_a_third_of_the_patch_and_at_the_patch():
    assert [stratum(e, 96) for e in (1, 31, 32, 96, 97, 500)] == ["small", "small", "medium", "medium", "large", "large"]
    mask = np.zeros((20, 30, 40), bool)
    assert target_extent(mask) == 0
    mask[3:5, 2:29, 10:11] = True
    assert target_extent(mask) == 27


def test_strata_summary_groups_targets_and_applies_the_budget_rule():
    def row(modality_, size, auc_, over=False):
        return {"modality": modality_, "stratum": size, "over_budget": over, "DSC_AUC": auc_, "NSD_AUC": auc_,
                "DSC_Final": auc_ / 4, "NSD_Final": auc_ / 4}

    table = summarize_strata([row("CT", "large", 2.0), row("MR", "large", 3.0, over=True), row("MR", "small", 1.0)])
    got = {(e["modality"], e["stratum"]): (e["targets"], e["DSC_AUC"], e["scored_DSC_AUC"]) for e in table}
    assert got == {("all", "large"): (2, 2.5, 1.0), ("all", "small"): (1, 1.0, 1.0), ("CT", "large"): (1, 2.0, 2.0),
                   ("MR", "large"): (1, 3.0, 0.0), ("MR", "small"): (1, 1.0, 1.0)}


def test_cases_without_boxes_get_organiser_boxes_unless_no_box(tmp_path):
    case = small_case(boxes=False)
    path = tmp_path / "CT_small.npz"
    np.savez(path, imgs=case.imgs, gts=case.gts, spacing=case.spacing)
    boxed = load_training_case(path, seed=3)
    assert len(boxed.boxes) == 2
    assert list(boxed.boxes) == organiser_boxes(case.gts, case_rng("CT_small.npz", 3))
    assert load_training_case(path, no_box=True).boxes is None


# ----------------------------------------------------------------------------- reports and the CLI


def test_modality_comes_from_the_file_name_prefix():
    assert [modality(n) for n in ("CT_a.npz", "MR_x_y.npz", "Microscopy_1.npz", "PET_.npz", "case.npz", "XR_a.npz")] \
        == ["CT", "MR", "Microscopy", "PET", "other", "other"]


def test_summary_applies_the_budget_rule_only_to_scored_columns():
    rows = [{"modality": "CT", "over_budget": False, "error": "", "TotalRunningTime": 10.0, "DSC_AUC": 3.0,
             "NSD_AUC": 3.2, "DSC_Final": 0.8, "NSD_Final": 0.9},
            {"modality": "CT", "over_budget": True, "error": "", "TotalRunningTime": 200.0, "DSC_AUC": 2.0,
             "NSD_AUC": 2.2, "DSC_Final": 0.6, "NSD_Final": 0.7}]
    ct = summarize(rows)[0]
    assert ct["DSC_AUC"] == pytest.approx(2.5) and ct["scored_DSC_AUC"] == pytest.approx(1.5)
    assert ct["over_budget"] == 1 and ct["cases"] == 2


def run_cli(*args: str) -> int:
    return harness_main([str(a) for a in args])


def test_cli_runs_shards_that_merge_into_the_same_numbers_twice(tmp_path, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    for i, name in enumerate(("CT_a.npz", "MR_b.npz", "US_c.npz")):
        case = small_case()
        np.savez(cases / name, imgs=np.roll(case.imgs, i, axis=1), gts=np.roll(case.gts, i, axis=1),
                 spacing=case.spacing)
    body = ("segs = np.zeros(d['imgs'].shape, np.uint8)\n"
            "for i, b in enumerate(d['boxes']):\n"
            "    segs[b['z_min']:b['z_max'], b['z_mid_y_min']:b['z_mid_y_max'] + 1,"
            " b['z_mid_x_min']:b['z_mid_x_max'] + 1] = i + 1\n"
            "np.savez(out / f.name, segs=segs)\n")
    predictor = script_predictor(tmp_path, body).command
    assert run_cli("run", cases, tmp_path / "all", "--predictor", predictor) == 0
    assert run_cli("run", cases, tmp_path / "s", "--predictor", predictor, "--shard", "1/2") == 0
    assert run_cli("run", cases, tmp_path / "s", "--predictor", predictor, "--shard", "2/2") == 0
    assert run_cli("report", tmp_path / "s" / "metrics_shard1of2.csv", tmp_path / "s" / "metrics_shard2of2.csv",
                   "--out", tmp_path / "merged") == 0
    assert (tmp_path / "all" / "rounds.png").stat().st_size > 1000

    def scores(path):
        with open(path) as f:
            return {r["CaseName"]: (r["DSC_AUC"], r["NSD_AUC"], r["DSC_Final"]) for r in csv.DictReader(f)}

    whole = scores(tmp_path / "all" / "metrics.csv")
    assert set(whole) == {"CT_a.npz", "MR_b.npz", "US_c.npz"}
    assert whole == {**scores(tmp_path / "s" / "metrics_shard1of2.csv"), **scores(tmp_path / "s" / "metrics_shard2of2.csv")}
    def summary(path):
        with open(path) as f:
            return [{k: v for k, v in r.items() if k != "mean_total_time_s"} for r in csv.DictReader(f)]

    assert summary(tmp_path / "all" / "summary.csv") == summary(tmp_path / "merged" / "summary.csv")
    assert summary(tmp_path / "all" / "strata.csv") == summary(tmp_path / "merged" / "strata.csv")
    per_class = read_metrics([tmp_path / "all" / "classes.csv"])
    assert len(per_class) == 6 and {r["stratum"] for r in per_class} == {"small"}  # extents 10 and 8 < 96/3
    assert 0.0 < float(whole["CT_a.npz"][2]) < 1.0
    rows = read_metrics([tmp_path / "all" / "metrics.csv"])
    assert {r["modality"] for r in rows} == {"CT", "MR", "US"}


def test_cli_with_the_shipped_model_on_a_demo_case(tmp_path):
    """The harness command of the README and docs/harness.md on one shipped demo case, through predict.sh."""
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "CT_demo_box.npz").symlink_to(REPO / "demo" / "inputs" / "CT_demo_box.npz")
    result = subprocess.run([sys.executable, "-m", "inference.harness", "run", str(cases), str(tmp_path / "out"),
                             "--predictor", f"PYTHON={sys.executable} sh {REPO / 'predict.sh'} {{inputs}} {{outputs}}"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["num_class"] == "2" and row["error"] == ""
    assert all(float(row[f"RunningTime_{i}"]) > 0.5 for i in range(1, 7))  # whole processes were timed
    assert "all" in result.stdout
