"""Tests for inference.case_io: reading challenge input files and writing the `segs` answer."""
from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest

from hostile_cases import box_dict
from inference.case_io import Box, CaseError, UnsupportedImage, read_case, write_segs
from scripts.synthetic_cases import case_arrays, make_volume, write_case

SHAPE = (10, 12, 14)  # (z, y, x): every axis a different length, so swapped axes show


# ----------------------------------------------------------------------------- helpers


def _image(shape=SHAPE) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)


def _write(tmp_path, name="case.npz", **arrays):
    """An npz written the way the evaluator writes it (object arrays pickled)."""
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _objects(*items) -> np.ndarray:
    """A 1-D object array holding exactly `items` (lists stay lists, never become a 2-D array)."""
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        arr[i] = item
    return arr


def _read(tmp_path, **arrays):
    arrays.setdefault("imgs", _image())
    arrays.setdefault("spacing", np.array([1.0, 1.0, 1.0]))
    return read_case(_write(tmp_path, **arrays))


def _assert_one_line_case_error(path):
    with pytest.raises(CaseError) as info:
        read_case(path)
    message = str(info.value)
    assert message.strip(), "the error message must say something"
    assert "\n" not in message and "\r" not in message
    return message


# ----------------------------------------------------------------------------- image and spacing


def test_image_is_read_unchanged(tmp_path):
    image = _image()
    case = _read(tmp_path, imgs=image)
    assert case.shape == SHAPE
    assert case.image.dtype == np.uint8
    np.testing.assert_array_equal(case.image, image)
    assert case.name == "case.npz"


def test_spacing_is_reversed_to_array_order(tmp_path):
    case = _read(tmp_path, spacing=np.array([0.8, 0.7, 3.0]))  # stored (x, y, z)
    assert case.spacing == pytest.approx((3.0, 0.7, 0.8))
    assert all(isinstance(v, float) for v in case.spacing)


def test_integer_spacing_list_is_reversed(tmp_path):
    case = _read(tmp_path, spacing=[1, 2, 5])
    assert case.spacing == (5.0, 2.0, 1.0)


@pytest.mark.parametrize(
    "spacing",
    [
        [1.0, 2.0],
        [1.0, 2.0, 3.0, 4.0],
        [0.0, 1.0, 2.0],
        [1.0, -2.0, 3.0],
        [np.nan, 1.0, 2.0],
        [1.0, np.inf, 2.0],
        np.array("abc"),
        np.array([[0.5, 0.5, 2.0, 1.0]]),
    ],
    ids=["two", "four", "zero", "negative", "nan", "inf", "string", "four-2d"],
)
def test_invalid_spacing_falls_back_to_ones(tmp_path, spacing):
    case = _read(tmp_path, spacing=spacing)
    assert case.spacing == (1.0, 1.0, 1.0)


def test_missing_spacing_falls_back_to_ones(tmp_path):
    path = _write(tmp_path, imgs=_image())
    case = read_case(path)
    assert case.spacing == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- boxes


def test_box_is_converted_to_array_order_with_closed_bounds(tmp_path):
    boxes = _objects(box_dict(z=(2, 7), y=(3, 9), x=(1, 12), z_mid=5))
    case = _read(tmp_path, boxes=boxes)
    assert len(case.prompts) == 1
    box = case.prompts[0].box
    assert isinstance(box, Box)
    assert box.lo == (2, 3, 1)  # (z, y, x): y from axis 1, x from the last axis
    assert box.hi == (7, 9, 12)  # closed: z_max stays 7, not 8
    assert box.z_mid == 5
    assert case.has_boxes


def test_box_is_clipped_to_the_volume(tmp_path):
    boxes = _objects(box_dict(z=(-3, 25), y=(-1, 11), x=(4, 100), z_mid=4))
    box = _read(tmp_path, boxes=boxes).prompts[0].box
    assert box.lo == (0, 0, 4)
    assert box.hi == (SHAPE[0] - 1, 11, SHAPE[2] - 1)
    assert box.z_mid == 4


@pytest.mark.parametrize("z, y, x", [((50, 60), (1, 3), (1, 3)), ((1, 3), (-9, -2), (1, 3)), ((1, 3), (1, 3), (999, 1000))])
def test_box_entirely_outside_the_volume_is_none(tmp_path, z, y, x):
    inside = box_dict(z=(1, 3), y=(2, 4), x=(5, 6), z_mid=2)
    case = _read(tmp_path, boxes=_objects(box_dict(z=z, y=y, x=x), inside))
    assert case.prompts[0].box is None
    assert case.prompts[1].box == Box((1, 2, 5), (3, 4, 6), 2)


def test_reversed_box_bounds_are_swapped(tmp_path):
    boxes = _objects(box_dict(z=(7, 2), y=(9, 3), x=(12, 1), z_mid=4))
    box = _read(tmp_path, boxes=boxes).prompts[0].box
    assert box.lo == (2, 3, 1)
    assert box.hi == (7, 9, 12)
    assert box.z_mid == 4


def test_missing_z_mid_is_the_middle_of_the_z_range(tmp_path):
    boxes = _objects(box_dict(z=(2, 7), y=(3, 9), x=(1, 12)))
    box = _read(tmp_path, boxes=boxes).prompts[0].box
    assert box.z_mid == 4


def test_z_mid_outside_the_z_range_is_clipped_into_it(tmp_path):
    boxes = _objects(box_dict(z=(2, 5), y=(3, 9), x=(1, 12), z_mid=9),
                     box_dict(z=(3, 6), y=(3, 9), x=(1, 12), z_mid=0))
    prompts = _read(tmp_path, boxes=boxes).prompts
    assert prompts[0].box.z_mid == 5
    assert prompts[1].box.z_mid == 3


def test_box_with_missing_keys_is_none_and_others_survive(tmp_path):
    broken = box_dict(z=(2, 7), y=(3, 9), x=(1, 12), z_mid=5)
    del broken["z_mid_x_max"]
    good = box_dict(z=(1, 3), y=(2, 4), x=(5, 6), z_mid=2)
    case = _read(tmp_path, boxes=_objects(broken, None, good))
    assert [p.label for p in case.prompts] == [1, 2, 3]
    assert case.prompts[0].box is None
    assert case.prompts[1].box is None
    assert case.prompts[2].box == Box((1, 2, 5), (3, 4, 6), 2)


def test_boxes_as_written_by_the_synthetic_generator(tmp_path):
    image, labels = make_volume((16, 24, 28), n_objects=2, seed=3)
    path = write_case(tmp_path / "CT_synth.npz", case_arrays(image, labels, spacing_xyz=(0.5, 0.6, 2.0)))
    case = read_case(path)
    assert case.spacing == pytest.approx((2.0, 0.6, 0.5))
    assert [p.label for p in case.prompts] == [1, 2]
    for prompt in case.prompts:
        mask = labels == prompt.label
        z = np.nonzero(mask.any(axis=(1, 2)))[0]
        assert (prompt.box.lo[0], prompt.box.hi[0]) == (z.min(), z.max())
        ys, xs = np.nonzero(mask[prompt.box.z_mid])
        assert (prompt.box.lo[1], prompt.box.hi[1]) == (ys.min(), ys.max())
        assert (prompt.box.lo[2], prompt.box.hi[2]) == (xs.min(), xs.max())
        assert prompt.order == () and len(prompt.clicks) == 0


# ----------------------------------------------------------------------------- first call, no-box call


def test_first_call_has_no_clicks_and_no_previous_prediction(tmp_path):
    boxes = _objects(box_dict(z=(2, 7), y=(3, 9), x=(1, 12), z_mid=5),
                     box_dict(z=(0, 1), y=(0, 1), x=(0, 1), z_mid=0))
    case = _read(tmp_path, boxes=boxes)
    assert [p.label for p in case.prompts] == [1, 2]
    for p in case.prompts:
        assert p.fg.shape == (0, 3) and p.bg.shape == (0, 3) and p.clicks.shape == (0, 3)
        assert p.order == ()
        assert not p.done
    assert case.prev_pred is None
    assert case.round == 0


def test_no_box_case_takes_the_number_of_classes_from_clicks(tmp_path):
    clicks = _objects({"fg": [[1, 2, 3]], "bg": []}, {"fg": [[4, 5, 6]], "bg": []}, {"fg": [[7, 8, 9]], "bg": []})
    case = _read(tmp_path, clicks=clicks, clicks_order=np.array([["fg"], ["fg"], ["fg"]]),
                 prev_pred=np.zeros(SHAPE, np.uint8))
    assert [p.label for p in case.prompts] == [1, 2, 3]
    assert not case.has_boxes
    assert all(p.box is None for p in case.prompts)
    np.testing.assert_array_equal(case.prompts[2].fg, [[7, 8, 9]])
    assert case.round == 1


# ----------------------------------------------------------------------------- clicks and their order


def test_accumulated_clicks_keep_their_order_and_kind(tmp_path):
    clicks = _objects({"fg": [[1, 2, 3], [4, 5, 6]], "bg": [[7, 8, 9]]})
    case = _read(tmp_path, clicks=clicks, clicks_order=np.array([["fg", "bg", "fg"]]))
    p = case.prompts[0]
    assert p.fg.dtype.kind == "i" and p.bg.dtype.kind == "i"
    np.testing.assert_array_equal(p.fg, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(p.bg, [[7, 8, 9]])
    np.testing.assert_array_equal(p.clicks, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert p.order == ("fg", "bg", "fg")
    assert case.round == 3


def test_clicks_outside_the_volume_are_dropped(tmp_path):
    fg = [[-1, 0, 0], [SHAPE[0], 0, 0], [0, SHAPE[1], 0], [0, 0, SHAPE[2]], [0, -1, 5],
          [SHAPE[0] - 1, SHAPE[1] - 1, SHAPE[2] - 1], [0, 0, 0]]
    case = _read(tmp_path, clicks=_objects({"fg": fg, "bg": [[3, 3, -2]]}),
                 clicks_order=np.array([["fg"] * 8]))
    p = case.prompts[0]
    np.testing.assert_array_equal(p.fg, [[SHAPE[0] - 1, SHAPE[1] - 1, SHAPE[2] - 1], [0, 0, 0]])
    assert p.bg.shape == (0, 3)


def test_labels_are_class_index_plus_one(tmp_path):
    clicks = _objects(*({"fg": [[i % SHAPE[0], 1, 1]], "bg": []} for i in range(5)))
    case = _read(tmp_path, clicks=clicks, clicks_order=np.array([["fg"]] * 5))
    assert [p.label for p in case.prompts] == [1, 2, 3, 4, 5]
    for i, p in enumerate(case.prompts):
        np.testing.assert_array_equal(p.fg, [[i % SHAPE[0], 1, 1]])


def _two_class_clicks():
    return _objects({"fg": [[1, 2, 3]], "bg": [[2, 3, 4]]}, {"fg": [[3, 3, 3]], "bg": []})


def test_object_array_order_with_none_entries(tmp_path):
    orders = np.array([["fg", "bg"], ["fg", None]], dtype=object)
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=orders)
    first, second = case.prompts
    assert first.order == ("fg", "bg")
    assert second.order == ("fg", None)
    assert not first.done
    assert second.done
    assert all(type(k) is str for k in first.order)  # numpy string scalars become plain str
    assert case.round == 2


def test_string_array_order(tmp_path):
    orders = np.array([["fg", "bg"], ["bg", "fg"]])
    assert orders.dtype.kind == "U"
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=orders)
    assert case.prompts[0].order == ("fg", "bg")
    assert case.prompts[1].order == ("bg", "fg")
    assert not any(p.done for p in case.prompts)


def test_ragged_order_lists(tmp_path):
    orders = _objects(["fg", "bg", "fg"], ["fg"])
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=orders)
    assert case.prompts[0].order == ("fg", "bg", "fg")
    assert case.prompts[1].order == ("fg",)
    assert case.round == 3  # the longest order, not the first or the last


def test_ragged_order_as_per_class_numpy_arrays(tmp_path):
    orders = _objects(np.array(["fg", "bg"]), np.array(["fg", None, None], dtype=object))
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=orders)
    assert case.prompts[0].order == ("fg", "bg")
    assert case.prompts[1].order == ("fg", None, None)
    assert case.prompts[1].done
    assert case.round == 3


def test_done_only_when_the_last_entry_is_none(tmp_path):
    clicks = _objects(*({"fg": [[1, 1, 1]], "bg": []} for _ in range(4)))
    orders = _objects(["fg", None], [None, "fg"], [None], ["fg", "fg"])
    case = _read(tmp_path, clicks=clicks, clicks_order=orders)
    assert [p.done for p in case.prompts] == [True, False, True, False]
    assert case.prompts[1].order == (None, "fg")


def test_missing_order_means_not_done(tmp_path):
    case = _read(tmp_path, clicks=_objects({"fg": [[1, 1, 1]], "bg": []}))
    assert case.prompts[0].order == ()
    assert not case.prompts[0].done
    assert case.round == 0


# ----------------------------------------------------------------------------- previous prediction


def test_prev_pred_of_the_right_shape_is_kept_as_uint8(tmp_path):
    prev = np.zeros(SHAPE, dtype=np.int64)
    prev[2:5, 3:6, 4:7] = 2
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=np.array([["fg"], ["fg"]]), prev_pred=prev)
    assert case.prev_pred.dtype == np.uint8
    np.testing.assert_array_equal(case.prev_pred, prev)


@pytest.mark.parametrize("shape", [(SHAPE[0], SHAPE[2], SHAPE[1]), (1, 1, 1), SHAPE[:2], SHAPE + (1,)])
def test_prev_pred_of_the_wrong_shape_is_ignored(tmp_path, shape):
    prev = np.ones(shape, dtype=np.uint8)
    case = _read(tmp_path, clicks=_two_class_clicks(), clicks_order=np.array([["fg"], ["fg"]]), prev_pred=prev)
    assert case.prev_pred is None


# ----------------------------------------------------------------------------- unreadable files


def test_non_npz_file_is_a_case_error(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a zip file\nsecond line\n")
    _assert_one_line_case_error(path)


def test_empty_file_is_a_case_error(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    _assert_one_line_case_error(path)


def test_plain_npy_file_is_a_case_error(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, _image())
    _assert_one_line_case_error(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_npz_is_a_case_error(tmp_path, fraction):
    full = _write(tmp_path, "full.npz", imgs=_image(), spacing=np.array([1.0, 1.0, 1.0]))
    data = full.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(len(data) * fraction)])
    message = _assert_one_line_case_error(path)
    assert "cut.npz" in message


def test_corrupted_npz_member_is_a_case_error(tmp_path):
    full = _write(tmp_path, "full.npz", imgs=_image())
    data = bytearray(full.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the stored image bytes: the CRC check fails on read
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    _assert_one_line_case_error(path)


def test_missing_imgs_is_a_case_error(tmp_path):
    path = _write(tmp_path, gts=_image(), spacing=np.array([1.0, 1.0, 1.0]))
    message = _assert_one_line_case_error(path)
    assert "imgs" in message


@pytest.mark.parametrize("shape", [(2, 10, 12, 14), (0, 12, 14), (14,), (1, 1, 1, 14), (1, 0, 12, 14), ()])
def test_images_that_are_not_non_empty_3d_are_unsupported_with_their_shape(tmp_path, shape):
    path = _write(tmp_path, imgs=np.zeros(shape, dtype=np.uint8))
    message = _assert_one_line_case_error(path)
    assert "imgs" in message
    with pytest.raises(UnsupportedImage) as info:  # the caller still answers zeros of the stored shape
        read_case(path)
    assert info.value.file_shape == shape


@pytest.mark.parametrize("shape, segmented", [((12, 14), (1, 12, 14)), ((1, 10, 12, 14), (10, 12, 14)),
                                               ((10, 1, 12, 14, 1), (10, 12, 14)), ((1, 1, 12, 14), (1, 12, 14))])
def test_images_with_singleton_axes_are_segmented_in_3d_and_keep_their_file_shape(tmp_path, shape, segmented):
    image = (np.arange(np.prod(shape)) % 200).astype(np.uint8).reshape(shape)
    case = read_case(_write(tmp_path, imgs=image))
    assert case.shape == segmented
    assert case.file_shape == shape
    np.testing.assert_array_equal(case.image.reshape(shape), image)


# ----------------------------------------------------------------------------- write_segs


def _segs(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4, size=shape, dtype=np.uint8)


def test_write_segs_round_trip_leaves_only_the_answer(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    segs = _segs()
    write_segs(out / "CT_case.npz", segs)
    assert sorted(os.listdir(out)) == ["CT_case.npz"]  # no temporary file left behind
    with np.load(out / "CT_case.npz") as npz:  # no pickle needed
        assert npz.files == ["segs"]
        loaded = npz["segs"]
    assert loaded.dtype == np.uint8
    assert loaded.shape == SHAPE
    np.testing.assert_array_equal(loaded, segs)


def test_write_segs_replaces_an_existing_answer(tmp_path):
    target = tmp_path / "case.npz"
    write_segs(target, np.zeros(SHAPE, np.uint8))
    write_segs(target, np.full(SHAPE, 3, np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["case.npz"]
    with np.load(target) as npz:
        assert (npz["segs"] == 3).all()


def test_write_segs_file_is_readable_by_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        write_segs(tmp_path / "case.npz", _segs())
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "case.npz").st_mode)
    assert mode & 0o044 == 0o044, oct(mode)  # not mkstemp's 0600
    assert mode & 0o600 == 0o600, oct(mode)


def _failing_savez(exc):
    def savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial data")  # something was already written when it fails
        raise exc

    return savez


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupt"])
def test_failed_write_leaves_no_file(tmp_path, monkeypatch, exc):
    monkeypatch.setattr(np, "savez", _failing_savez(exc))
    with pytest.raises(type(exc)):
        write_segs(tmp_path / "case.npz", _segs())
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_answer_intact(tmp_path, monkeypatch):
    target = tmp_path / "case.npz"
    write_segs(target, np.full(SHAPE, 2, np.uint8))
    before = target.read_bytes()
    monkeypatch.setattr(np, "savez", _failing_savez(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        write_segs(target, _segs())
    assert os.listdir(tmp_path) == ["case.npz"]
    assert target.read_bytes() == before


def test_unsaveable_segs_leave_no_file(tmp_path):
    segs = np.empty(3, dtype=object)
    segs[:] = [lambda: 0, 1, 2]  # pickling a lambda fails half-way through the write
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local lambda cannot be pickled
        write_segs(tmp_path / "case.npz", segs)
    assert os.listdir(tmp_path) == []


def test_write_into_a_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(OSError):
        write_segs(tmp_path / "missing" / "case.npz", _segs())
    assert os.listdir(tmp_path) == []
