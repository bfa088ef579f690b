"""NIfTI -> challenge npz conversion: axis order, intensity mapping, relabelling, the CLI and boxes."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.harness.convert_nifti import (
    ConversionError,
    convert_pair,
    main,
    parse_window,
    percentile_scale,
    relabel,
    window_ct,
)

REPO = Path(__file__).resolve().parent.parent
BOXES = "inference.harness.boxes"
BOX_KEYS = {"z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max"}


def _fake_organiser_boxes(gts: np.ndarray, rng: np.random.RandomState) -> list[dict]:
    """Stand-in while the harness's boxes module is not there: one tight box per class, no margin."""
    boxes = []
    for label in range(1, int(gts.max()) + 1):
        z, y, x = np.nonzero(gts == label)
        boxes.append({"z_min": int(z.min()), "z_max": int(z.max()), "z_mid": int(np.median(z)),
                      "z_mid_x_min": int(x.min()), "z_mid_y_min": int(y.min()),
                      "z_mid_x_max": int(x.max()), "z_mid_y_max": int(y.max())})
    return boxes


@pytest.fixture(autouse=True)
def boxes_available(monkeypatch):
    """Use the real inference.harness.boxes when it exists, else a stand-in, so conversion can run."""
    if importlib.util.find_spec(BOXES) is None:
        fake = types.ModuleType(BOXES)
        fake.organiser_boxes = _fake_organiser_boxes
        monkeypatch.setitem(sys.modules, BOXES, fake)


def write_nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0), flip_x: bool = False) -> Path:
    affine = np.diag([-zooms[0] if flip_x else zooms[0], zooms[1], zooms[2], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def ct_pair(folder: Path, name: str, shape=(5, 6, 7), image_name: str | None = None, label_shape=None,
            zooms=(1.0, 1.0, 1.0)) -> tuple[Path, Path]:
    """A CT image (air, one bright blob) and a label with two classes (values 2 and 9), in (i, j, k) order."""
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    image = np.full(shape, -1000, dtype=np.int16)
    image[1:3, 1:3, 1:4] = 60
    labels = np.zeros(label_shape or shape, dtype=np.uint8)
    labels[1:3, 1:3, 1:4] = 9
    labels[3, 4, 5] = 2
    image_path = write_nifti(folder / "images" / (image_name or f"{name}.nii.gz"), image, zooms)
    label_path = write_nifti(folder / "labels" / f"{name}.nii.gz", labels, zooms)
    return image_path, label_path


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=True) as npz:
        return {key: npz[key] for key in npz.files}


# ---------------------------------------------------------------- axis order, spacing, file format

@pytest.mark.parametrize("flip_x", [False, True])
def test_marker_voxel_lands_at_k_j_i_and_spacing_stays_x_y_z(tmp_path, flip_x):
    shape, marker, zooms = (5, 6, 7), (1, 2, 3), (0.5, 0.8, 2.5)  # (i, j, k): a distinct size per axis
    image = np.full(shape, -1000, dtype=np.int16)
    image[marker] = 1000
    labels = np.zeros(shape, dtype=np.uint8)
    labels[marker] = 4
    write_nifti(tmp_path / "img.nii.gz", image, zooms, flip_x=flip_x)
    write_nifti(tmp_path / "lab.nii.gz", labels, zooms, flip_x=flip_x)

    out = convert_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path / "out", "CT", case_name="axes")
    case = load(out)

    i, j, k = marker
    assert out.name == "CT_axes.npz"
    assert case["imgs"].shape == (7, 6, 5) and case["gts"].shape == (7, 6, 5)
    assert case["imgs"].dtype == np.uint8 and case["gts"].dtype == np.uint8
    assert case["imgs"][k, j, i] == 255 and int(case["imgs"].sum()) == 255  # only the marker is bright
    assert np.argwhere(case["gts"]).tolist() == [[k, j, i]] and case["gts"][k, j, i] == 1
    assert case["spacing"].dtype == np.float64
    np.testing.assert_allclose(case["spacing"], zooms, rtol=1e-6)  # (zoom_i, zoom_j, zoom_k), never reversed
    assert case["imgs"].flags.c_contiguous


def test_trailing_singleton_dimension_is_squeezed(tmp_path):
    image = np.zeros((4, 5, 6, 1), dtype=np.float32)
    image[1, 2, 3, 0] = 10.0
    labels = (image > 0).astype(np.uint8)
    write_nifti(tmp_path / "img.nii.gz", image)
    write_nifti(tmp_path / "lab.nii.gz", labels)
    case = load(convert_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path, "MR", case_name="c"))
    assert case["imgs"].shape == (6, 5, 4) and case["gts"][3, 2, 1] == 1


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6, 2)], ids=["2D", "4D"])
def test_2d_and_4d_images_are_refused(tmp_path, shape):
    write_nifti(tmp_path / "img.nii.gz", np.ones(shape, dtype=np.float32))
    write_nifti(tmp_path / "lab.nii.gz", np.ones(shape, dtype=np.uint8))
    with pytest.raises(ConversionError, match="3D volume"):
        convert_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path, "MR")


def test_shape_mismatch_is_refused(tmp_path):
    image, label = ct_pair(tmp_path, "c", shape=(5, 6, 7), label_shape=(5, 6, 8))
    with pytest.raises(ConversionError, match=r"shape \(5, 6, 7\).*shape \(5, 6, 8\)"):
        convert_pair(image, label, tmp_path / "out", "CT")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_more_than_255_classes_are_refused(tmp_path):
    labels = np.arange(256, dtype=np.int16).reshape(4, 8, 8) + 1  # 256 distinct nonzero values
    write_nifti(tmp_path / "img.nii.gz", np.ones(labels.shape, dtype=np.float32))
    write_nifti(tmp_path / "lab.nii.gz", labels)
    with pytest.raises(ValueError, match="256 classes"):
        convert_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path, "MR")


def test_unknown_modality_is_refused_and_case_is_normalised(tmp_path):
    image, label = ct_pair(tmp_path, "c")
    with pytest.raises(ValueError, match="modality"):
        convert_pair(image, label, tmp_path, "XR")
    assert convert_pair(image, label, tmp_path, "microscopy").name == "Microscopy_c.npz"


# ---------------------------------------------------------------- intensities

def test_ct_window_arithmetic():
    level, width = 40.0, 400.0  # [-160, 240]
    values = np.array([-160, 240, 40, -161, -3000, 241, 3000, -60], dtype=np.float32)
    out = window_ct(values, level, width)
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[1] == 255
    assert out[2] in (127, 128)
    assert out[3] == 0 and out[4] == 0 and out[5] == 255 and out[6] == 255  # clipped outside the window
    assert out[7] == int(100 / 400 * 255)  # 63.75 -> 63 (truncated like the organisers' np.uint8)


@pytest.mark.parametrize("name, level_width", [("soft", (40, 400)), ("lung", (-600, 1500)),
                                               ("bone", (400, 1800)), ("brain", (40, 80)),
                                               ("-500,1000", (-500, 1000)), (" 50, 350 ", (50, 350))])
def test_named_and_explicit_windows(name, level_width):
    assert parse_window(name) == level_width


@pytest.mark.parametrize("bad", ["liver", "40", "40,0", "40,-5", "a,b"])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError, match="window"):
        parse_window(bad)


def test_convert_pair_uses_the_chosen_window(tmp_path):
    image, label = ct_pair(tmp_path, "c")  # blob at 60 HU, air at -1000
    soft = load(convert_pair(image, label, tmp_path / "soft", "CT", window="soft"))["imgs"]
    brain = load(convert_pair(image, label, tmp_path / "brain", "CT", window=(40, 80)))["imgs"]
    assert soft.max() == int(220 / 400 * 255) and brain.max() == int(60 / 80 * 255)
    assert soft.min() == brain.min() == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-4000, 4000, allow_nan=False), min_size=2, max_size=50),
       st.floats(-1000, 1000), st.floats(1, 3000))
def test_ct_window_is_monotone_and_in_range(values, level, width):
    values = np.sort(np.asarray(values, dtype=np.float32))
    out = window_ct(values, level, width)
    assert out.dtype == np.uint8 and np.all(np.diff(out.astype(int)) >= 0)


def test_percentile_scaling_clips_outliers_of_the_nonzero_voxels():
    image = np.zeros(20000, dtype=np.float32)  # a large zero background must not move the percentiles
    image[:1000] = np.arange(1, 1001)
    image[1000] = 1e6  # one hot outlier
    out = percentile_scale(image)
    # nonzero: 1..1000 and 1e6 (1001 values) -> 0.5 % = 6, 99.5 % = 996 (linear interpolation)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out[1000] == 255 and out[995] == 255 and out[999] == 255
    assert out[0] == 0 and out[5] == 0 and out[1001] == 0  # low values and the background clip to 0
    assert 126 <= out[500] <= 128  # 501 sits mid-range; without clipping the outlier it would be ~0


def test_percentile_scaling_ignores_zero_background():
    rng = np.random.default_rng(0)
    image = np.zeros((10, 10, 10), dtype=np.float32)
    image[:2] = rng.uniform(100, 200, size=(2, 10, 10))
    out = percentile_scale(image)
    assert out[:2].min() <= 2 and out[:2].max() == 255  # over all voxels, 100 would map to ~127


def test_percentile_scaling_constant_and_empty_images_give_zeros():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by zero
        for image in (np.full((3, 4, 5), 7.0), np.zeros((3, 4, 5)), np.full((3, 4, 5), -2, dtype=np.int16)):
            out = percentile_scale(image)
            assert out.dtype == np.uint8 and out.shape == image.shape and not out.any()


def test_percentile_scaling_falls_back_to_all_voxels_when_none_is_nonzero():
    assert not percentile_scale(np.zeros(10)).any()
    image = np.zeros(1000)
    image[0] = 5.0  # a single nonzero voxel: its percentiles coincide -> zeros, no error
    assert not percentile_scale(image).any()


# ---------------------------------------------------------------- labels

def test_relabel_maps_to_consecutive_classes_in_ascending_order():
    labels = np.array([[0, 7, 3], [3, 0, 7]], dtype=np.int16)
    out, mapping = relabel(labels)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 2, 1], [1, 0, 2]]
    assert mapping == {0: 0, 3: 1, 7: 2}


def test_relabel_rounds_floats_and_handles_large_values_and_fortran_order():
    out, mapping = relabel(np.array([0.0, 2.9999, 3.0001, 6.2], dtype=np.float32))
    assert out.tolist() == [0, 1, 1, 2] and mapping == {0: 0, 3: 1, 6: 2}
    out, mapping = relabel(np.array([100000, 0, 70000], dtype=np.int32))
    assert out.tolist() == [2, 0, 1] and mapping == {0: 0, 70000: 1, 100000: 2}
    labels = np.asfortranarray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10)
    out, _ = relabel(labels)
    np.testing.assert_array_equal(out, np.arange(24).reshape(2, 3, 4))


def test_relabel_refuses_too_many_classes_and_negative_labels():
    relabel(np.arange(256))  # 0 + 255 classes: the most that fits
    with pytest.raises(ValueError, match="256 classes"):
        relabel(np.arange(257))
    with pytest.raises(ValueError, match="negative"):
        relabel(np.array([0, -1, 2]))


def test_empty_label_image_is_refused(tmp_path):
    write_nifti(tmp_path / "img.nii.gz", np.ones((4, 5, 6), dtype=np.float32))
    write_nifti(tmp_path / "lab.nii.gz", np.zeros((4, 5, 6), dtype=np.uint8))
    with pytest.raises(ConversionError, match="no foreground"):
        convert_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", tmp_path, "MR")


def test_gts_classes_follow_original_label_order(tmp_path):
    image, label = ct_pair(tmp_path, "c")  # label 9 on the blob, label 2 on one voxel at (3, 4, 5)
    case = load(convert_pair(image, label, tmp_path, "CT"))
    assert case["gts"][5, 4, 3] == 1 and case["gts"][1, 1, 1] == 2
    assert sorted(np.unique(case["gts"]).tolist()) == [0, 1, 2]


# ---------------------------------------------------------------- CLI

def test_cli_converts_good_pairs_reports_bad_ones_and_exits_1(tmp_path, capsys):
    ct_pair(tmp_path, "good")
    ct_pair(tmp_path, "bad", shape=(5, 6, 7), label_shape=(5, 6, 9))
    ct_pair(tmp_path, "nnu", image_name="nnu_0000.nii.gz")
    write_nifti(tmp_path / "images" / "nnu_0001.nii.gz", np.zeros((5, 6, 7), dtype=np.float32))  # extra channel

    code = main(["--modality", "CT", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "out"), "--window", "soft"])

    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CT_good.npz", "CT_nnu.npz"]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "bad" in errors[0] and "shape" in errors[0]
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("CT_good.npz") and lines[1].startswith("CT_nnu.npz")


def test_cli_all_good_exits_0_and_label_without_image_fails(tmp_path, capsys):
    ct_pair(tmp_path, "a")
    args = ["--modality", "mr", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["MR_a.npz"]
    assert capsys.readouterr().err == ""

    write_nifti(tmp_path / "labels" / "orphan.nii.gz", np.ones((5, 6, 7), dtype=np.uint8))
    assert main(args) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "orphan" in errors[0]


def test_cli_refuses_bad_options(tmp_path, capsys):
    (tmp_path / "i").mkdir()
    base = ["--images", str(tmp_path / "i"), "--labels", str(tmp_path / "i"), "--out", str(tmp_path / "o")]
    for extra in (["--modality", "XR"], ["--modality", "CT", "--window", "liver"]):
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_cli_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "inference.harness.convert_nifti", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--window" in result.stdout


# ---------------------------------------------------------------- boxes

def test_boxes_get_relabelled_gts_and_a_per_case_seed(tmp_path, monkeypatch):
    calls = []

    def recording_boxes(gts, rng):
        calls.append((gts.copy(), rng.randint(0, 2**31 - 1)))
        return [{"z_min": c} for c in range(1, int(gts.max()) + 1)]

    fake = types.ModuleType(BOXES)
    fake.organiser_boxes = recording_boxes
    monkeypatch.setitem(sys.modules, BOXES, fake)
    image, label = ct_pair(tmp_path, "c")
    for name in ("case_a", "case_a", "case_b"):
        case = load(convert_pair(image, label, tmp_path / "out", "CT", case_name=name))
        np.testing.assert_array_equal(calls[-1][0], case["gts"])  # boxes are drawn on the stored (z, y, x) gts
        assert case["boxes"].dtype == object and case["boxes"].shape == (2,)
        assert [b["z_min"] for b in case["boxes"]] == [1, 2]
    draws = [draw for _, draw in calls]
    assert draws[0] == draws[1] != draws[2]
    assert draws[0] == np.random.RandomState(zlib.crc32(b"case_a")).randint(0, 2**31 - 1)


def test_real_organiser_boxes_one_per_class(tmp_path):
    pytest.importorskip(BOXES)
    image, label = ct_pair(tmp_path, "c")
    first = load(convert_pair(image, label, tmp_path / "one", "CT"))
    second = load(convert_pair(image, label, tmp_path / "two", "CT"))
    boxes = first["boxes"]
    assert boxes.dtype == object and len(boxes) == int(first["gts"].max()) == 2
    for box in boxes:
        assert isinstance(box, dict) and BOX_KEYS <= set(box)
    assert list(boxes) == list(second["boxes"])  # the per-case seed makes the margins reproducible
