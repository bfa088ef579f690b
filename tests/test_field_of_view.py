"""Tests for inference.field_of_view: the zoom rule, crop placement, and resampling against torch."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.geometry import region_of
from inference.field_of_view import (
    FieldOfView,
    around,
    fit,
    sample_area,
    sample_linear,
    tiles,
    upsample_region,
    zoom_for_extent,
)

VOLUME_SHAPE = (20, 23, 26)
P = 16

# ----------------------------------------------------------------------------- helpers


def _volume(shape=VOLUME_SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _crop_centre(fov: FieldOfView) -> np.ndarray:
    return np.asarray(fov.start, dtype=np.float64) + (fov.side - 1) / 2


def _expected_side(extent, patch: int) -> int:
    """ceil(P z) with z = max((extent + P/3) / P, 1), in exact arithmetic."""
    return max(math.ceil(Fraction(int(max(extent))) + Fraction(patch, 3)), patch)


def _reference_linear(volume: np.ndarray, fov: FieldOfView, pad: float) -> torch.Tensor:
    crop = crop_and_pad_nd(volume, fov.region, pad_value=pad)
    assert crop.shape == (fov.side,) * 3
    t = torch.from_numpy(np.ascontiguousarray(crop))[None, None].float()
    return F.interpolate(t, size=(fov.patch,) * 3, mode="trilinear", align_corners=False)[0, 0]


def _reference_area(full_mask: np.ndarray, fov: FieldOfView) -> torch.Tensor:
    crop = crop_and_pad_nd(full_mask.astype(np.float32), fov.region, pad_value=0)
    t = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    return F.adaptive_avg_pool3d(t, fov.patch)[0, 0]


def _reference_upsample(probs: torch.Tensor, fov: FieldOfView) -> torch.Tensor:
    return F.interpolate(probs[None, None].float(), size=(fov.side,) * 3, mode="trilinear", align_corners=False)[0, 0]


def _crop_slices(region, fov: FieldOfView):
    return tuple(slice(a - s, b - s) for (a, b), s in zip(region, fov.start))


# ----------------------------------------------------------------------------- zoom rule


@pytest.mark.parametrize("extent", [(1, 1, 1), (10, 3, 7), (P * 2 // 3, P * 2 // 3, 1), (0, 0, 0)])
def test_zoom_is_one_for_small_extents(extent):
    assert zoom_for_extent(np.array(extent), P) == 1.0


@pytest.mark.parametrize(
    "extent, patch",
    [((101, 37, 5), 64), ((5, 37, 101), 64), ((11, 12, 13), 16), ((17, 3, 3), 16), ((3, 999, 3), 48), ((33, 1, 1), 48)],
)
def test_zoom_uses_the_largest_axis(extent, patch):
    expected = (max(extent) + patch / 3) / patch
    assert expected > 1.0
    assert zoom_for_extent(np.array(extent), patch) == pytest.approx(expected, rel=1e-12)


def test_zoom_for_odd_numbers_exact_values():
    assert zoom_for_extent([101, 37, 5], 64) == pytest.approx(1.9114583333333333, rel=1e-12)
    assert zoom_for_extent([11, 12, 13], 16) == pytest.approx(1.1458333333333333, rel=1e-12)
    assert zoom_for_extent([33, 1, 1], 48) == pytest.approx(1.0208333333333333, rel=1e-12)


# ----------------------------------------------------------------------------- fit and around


BOUNDS = [
    ((5, 7, 9), (14, 20, 9)),  # extents 10, 14, 1: even, even, odd
    ((4, 4, 4), (6, 8, 10)),  # extents 3, 5, 7: all odd
    ((0, 0, 0), (0, 0, 0)),  # one voxel in the corner of the volume
    ((0, 3, 0), (22, 3, 9)),  # at the volume edge, odd extent 23 -> zoom > 1
    ((0, 0, 0), (29, 11, 40)),  # at the edge, even extent 41 (largest on x)
    ((0, 0, 0), (99, 5, 5)),  # huge: zoom (100 + P/3) / P > 4
    ((-3, 2, 1), (400, 2, 1)),  # huge and odd
]


@pytest.mark.parametrize("bounds", BOUNDS)
def test_fit_side_and_centre(bounds):
    lo, hi = np.asarray(bounds[0]), np.asarray(bounds[1])
    fov = fit(region_of(*bounds), P)
    extent = hi - lo + 1
    assert fov.patch == P
    assert fov.side == _expected_side(extent, P)
    assert fov.side >= P
    assert fov.zoom == fov.side / P
    centre = (lo + hi) / 2
    assert np.all(np.abs(_crop_centre(fov) - centre) <= 0.5), (fov, centre)
    # the prompts are inside the crop
    assert np.all(np.asarray(fov.start) <= lo) and np.all(np.asarray(fov.start) + fov.side - 1 >= hi)


def test_fit_at_the_volume_edge_starts_before_the_volume():
    fov = fit(region_of((0, 0, 0), (0, 0, 0)), P)
    assert fov.side == P
    assert all(s < 0 for s in fov.start)
    assert np.all(np.abs(_crop_centre(fov)) <= 0.5)


def test_fit_allows_zoom_above_four_for_huge_boxes():
    fov = fit(region_of((0, 0, 0), (99, 5, 5)), P)
    assert fov.zoom > 4
    assert fov.side == math.ceil(100 + P / 3)


def test_fit_with_a_given_zoom():
    fov = fit(region_of((10, 10, 10), (12, 12, 12)), P, zoom=2.5)
    assert fov.side == 40
    assert np.all(np.abs(_crop_centre(fov) - 11) <= 0.5)


@pytest.mark.parametrize(
    "centre, zoom, side",
    [
        ((10, 10.5, 0), 45 / 16, 45),
        ((3, 4, 5), 1.0, 16),
        ((3, 4, 5), 0.5, 16),  # never smaller than the patch
        ((7.5, 7.5, 7.5), 1.0625, 17),
        ((100, 0, -4), 3.0, 48),
        ((1, 2, 3), 1.1, 18),  # 16 * 1.1 = 17.6
    ],
)
def test_around_side_and_centre(centre, zoom, side):
    fov = around(np.array(centre, dtype=np.float64), P, zoom)
    assert fov.side == side
    assert np.all(np.abs(_crop_centre(fov) - np.asarray(centre)) <= 0.5)


def test_around_side_is_not_inflated_by_float_rounding():
    # 30 * (31 / 30) is 31.000000000000004 in floating point; the crop must still be 31, not 32
    assert 30 * (31 / 30) > 31
    assert around(np.array([50.0, 50.0, 50.0]), 30, 31 / 30).side == 31
    # the same through the zoom rule: extent 21 with patch 30 gives zoom (21 + 10) / 30
    assert fit(region_of((0, 0, 0), (20, 4, 4)), 30).side == 31


# ----------------------------------------------------------------------------- FieldOfView.inside and zoomed_out


def test_inside_clips_to_the_volume():
    fov = FieldOfView((-5, 3, 10), 16, P)
    assert fov.region == [[-5, 11], [3, 19], [10, 26]]
    assert fov.inside((20, 30, 20)) == [[0, 11], [3, 19], [10, 20]]
    assert fov.inside((100, 100, 100)) == [[0, 11], [3, 19], [10, 26]]


@pytest.mark.parametrize("start", [(20, 0, 0), (-16, 0, 0), (0, 30, 0), (0, 0, -40)])
def test_inside_is_none_when_disjoint(start):
    assert FieldOfView(start, 16, P).inside((20, 30, 20)) is None


@pytest.mark.parametrize("start, side", [((3, 4, 5), 16), ((3, 4, 5), 17), ((-9, 0, 40), 25)])
@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_zoomed_out_multiplies_zoom_and_keeps_the_centre(start, side, factor):
    fov = FieldOfView(start, side, P)
    wider = fov.zoomed_out(factor, max_zoom=8.0)
    assert wider.patch == P
    assert wider.side == math.ceil(side * factor - 1e-9)
    assert wider.zoom == pytest.approx(fov.zoom * factor, abs=1 / P)
    assert np.all(np.abs(_crop_centre(wider) - _crop_centre(fov)) <= 0.5)


def test_zoomed_out_is_capped_at_max_zoom():
    fov = FieldOfView((0, 0, 0), 48, P)  # zoom 3
    wider = fov.zoomed_out(2.0, max_zoom=4.0)
    assert wider.zoom == 4.0 and wider.side == 64
    assert np.all(np.abs(_crop_centre(wider) - _crop_centre(fov)) <= 0.5)


def test_zoomed_out_never_zooms_in_beyond_the_cap():
    fov = FieldOfView((0, 0, 0), 80, P)  # zoom 5 (from a huge box), above max_zoom
    wider = fov.zoomed_out(1.5, max_zoom=4.0)
    assert wider.side == 80


# ----------------------------------------------------------------------------- sample_linear


def test_sample_linear_at_zoom_one_is_the_exact_crop():
    volume = _volume()
    fov = FieldOfView((2, 3, 4), P, P)
    out = sample_linear(volume, fov)
    assert out.dtype == torch.float32 and out.shape == (P, P, P)
    assert torch.equal(out, torch.from_numpy(volume[2:18, 3:19, 4:20]))


def test_sample_linear_at_zoom_one_over_the_border_pads():
    volume = _volume()
    fov = FieldOfView((-3, 10, 14), P, P)
    out = sample_linear(volume, fov, pad_value=-7.0)
    assert torch.equal(out[3:, :13, :12], torch.from_numpy(volume[0:13, 10:23, 14:26]))
    assert (out[:3] == -7.0).all() and (out[:, 13:] == -7.0).all() and (out[:, :, 12:] == -7.0).all()


@pytest.mark.parametrize(
    "start, side",
    [
        ((2, 3, 4), P),  # zoom 1, inside
        ((-3, 10, 14), P),  # zoom 1 over three borders
        ((0, 0, 0), 17),  # zoom 1.0625
        ((-10, -12, -9), 45),  # zoom 2.8125, hanging over every border on both sides
        ((5, -3, 14), 20),  # low y, high z and x
        ((-30, 10, -5), 37),
        ((-20, -20, -20), 64),  # integer zoom 4
        ((1, 2, 3), 23),
    ],
)
@pytest.mark.parametrize("pad", [0.0, 0.37])
def test_sample_linear_matches_torch_trilinear_on_the_padded_crop(start, side, pad):
    volume = _volume()
    fov = FieldOfView(start, side, P)
    out = sample_linear(volume, fov, pad_value=pad)
    expected = _reference_linear(volume, fov, pad)
    assert out.shape == (P, P, P) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("start, side", [((-10, -12, -9), 45), ((3, -4, 9), 29)])
def test_sample_linear_of_a_uint8_image(start, side):
    volume = (_volume(seed=2) * 255).astype(np.uint8)
    fov = FieldOfView(start, side, P)
    out = sample_linear(volume, fov, pad_value=7.0)
    expected = _reference_linear(volume, fov, 7)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-5)


def test_sample_linear_entirely_outside_the_volume_is_the_pad_value():
    out = sample_linear(_volume(), FieldOfView((100, 0, 0), 30, P), pad_value=3.5)
    assert out.shape == (P, P, P)
    assert (out == 3.5).all()


def test_sample_linear_of_a_constant_volume_is_constant():
    volume = np.full(VOLUME_SHAPE, 0.25, dtype=np.float32)
    out = sample_linear(volume, FieldOfView((-9, -9, -9), 45, P), pad_value=0.25)
    torch.testing.assert_close(out, torch.full((P, P, P), 0.25), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- sample_area


def _mask_block(seed=1):
    start = (4, 5, 6)
    block = np.random.default_rng(seed).random((7, 9, 11)) > 0.5
    full = np.zeros(VOLUME_SHAPE, dtype=bool)
    full[4:11, 5:14, 6:17] = block
    return block, start, full


@pytest.mark.parametrize(
    "start, side",
    [
        ((0, 0, 0), P),  # zoom 1
        ((5, 6, 7), P),  # zoom 1, cutting through the block
        ((-10, -12, -9), 45),
        ((5, -3, 14), 20),  # the crop cuts the block
        ((-30, 10, -5), 37),
        ((-20, -20, -20), 64),
        ((0, 0, 0), 17),
    ],
)
def test_sample_area_matches_adaptive_avg_pool_on_the_padded_crop(start, side):
    block, mask_start, full = _mask_block()
    fov = FieldOfView(start, side, P)
    out = sample_area(block, mask_start, fov)
    expected = _reference_area(full, fov)
    assert out.shape == (P, P, P)
    assert expected.sum() > 0  # the crop does meet the mask
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_sample_area_at_zoom_one_is_the_crop():
    block, mask_start, full = _mask_block()
    fov = FieldOfView((1, 2, 3), P, P)
    out = sample_area(block, mask_start, fov)
    assert torch.equal(out, torch.from_numpy(full[1:17, 2:18, 3:19].astype(np.float32)))


def test_sample_area_of_a_mask_outside_the_crop_is_zero():
    block, mask_start, _ = _mask_block()
    out = sample_area(block, mask_start, FieldOfView((11, 0, 0), P, P))  # the block ends at z = 10
    assert out.shape == (P, P, P)
    assert not out.any()


def test_thin_plane_survives_area_sampling_at_zoom_three():
    shape = (30, 30, 30)
    plane = np.ones((1, 30, 30), dtype=bool)
    full = np.zeros(shape, dtype=bool)
    full[10] = True
    fov = FieldOfView((0, 0, 0), 48, P)  # zoom 3
    out = sample_area(plane, (10, 0, 0), fov)
    assert out.max() > 0
    z_planes = torch.nonzero(out.sum(dim=(1, 2))).flatten().tolist()
    assert z_planes == [3]  # patch slice 3 covers z 9..11
    torch.testing.assert_close(out[3, :10, :10], torch.full((10, 10), 1 / 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, _reference_area(full, fov), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- upsample_region


@pytest.mark.parametrize(
    "start, side",
    [((-7, 3, 12), 45), ((0, 0, 0), 17), ((-2, -2, 5), 37), ((-20, -20, -20), 64), ((4, 5, 6), 23)],
)
def test_upsample_region_matches_torch_on_the_part_inside_the_volume(start, side):
    fov = FieldOfView(start, side, P)
    probs = torch.rand((P, P, P), generator=torch.Generator().manual_seed(0))
    region = fov.inside(VOLUME_SHAPE)
    out = upsample_region(probs, fov, region)
    expected = _reference_upsample(probs, fov)[_crop_slices(region, fov)]
    assert out.shape == tuple(b - a for a, b in region)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "region",
    [
        [[2, 9], [10, 11], [30, 40]],
        [[-7, -6], [3, 48], [56, 57]],  # the first and the last crop voxel on some axes
        [[20, 38], [40, 48], [12, 13]],
    ],
)
def test_upsample_region_of_sub_blocks(region):
    fov = FieldOfView((-7, 3, 12), 45, P)
    probs = torch.rand((P, P, P), generator=torch.Generator().manual_seed(1))
    out = upsample_region(probs, fov, region)
    expected = _reference_upsample(probs, fov)[_crop_slices(region, fov)]
    assert out.shape == tuple(b - a for a, b in region)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_upsample_of_the_whole_crop_matches_torch():
    fov = FieldOfView((-7, 3, 12), 45, P)
    probs = torch.rand((P, P, P), generator=torch.Generator().manual_seed(2))
    out = upsample_region(probs, fov, fov.region)
    torch.testing.assert_close(out, _reference_upsample(probs, fov), atol=1e-5, rtol=0)


def test_upsample_at_zoom_one_is_the_identity():
    fov = FieldOfView((3, -2, 1), P, P)
    probs = torch.rand((P, P, P), generator=torch.Generator().manual_seed(3))
    assert torch.equal(upsample_region(probs, fov, fov.region), probs)
    assert torch.equal(upsample_region(probs, fov, [[5, 8], [0, 4], [1, 17]]), probs[2:5, 2:6, 0:16])


@pytest.mark.parametrize("side", [P, 17, 45, 64])
def test_constant_patch_upsamples_to_a_constant(side):
    fov = FieldOfView((-3, 0, 2), side, P)
    out = upsample_region(torch.full((P, P, P), 0.7), fov, fov.inside(VOLUME_SHAPE))
    torch.testing.assert_close(out, torch.full(out.shape, 0.7), atol=1e-6, rtol=0)


def test_round_trip_at_zoom_one_returns_the_crop():
    volume = _volume()
    fov = FieldOfView((2, 3, 4), P, P)
    patch = sample_linear(volume, fov)
    region = fov.inside(VOLUME_SHAPE)
    back = upsample_region(patch, fov, region)
    assert torch.equal(back, torch.from_numpy(volume[2:18, 3:19, 4:20]))


# ----------------------------------------------------------------------------- properties over random crops

_starts = st.tuples(*(st.integers(-40, 30) for _ in range(3)))
_sides = st.integers(P, 3 * P + 5)
_settings = settings(max_examples=25, deadline=None, derandomize=True, database=None)


@_settings
@given(start=_starts, side=_sides, pad=st.sampled_from([0.0, -1.5, 0.6]))
def test_property_sample_linear_matches_torch(start, side, pad):
    volume = _volume(seed=5)
    fov = FieldOfView(start, side, P)
    if fov.inside(VOLUME_SHAPE) is None:  # acvl-utils returns zeros, not pad, for a disjoint crop
        return
    torch.testing.assert_close(sample_linear(volume, fov, pad), _reference_linear(volume, fov, pad), atol=1e-4, rtol=0)


@_settings
@given(start=_starts, side=_sides)
def test_property_sample_area_matches_adaptive_avg_pool(start, side):
    block, mask_start, full = _mask_block(seed=6)
    fov = FieldOfView(start, side, P)
    torch.testing.assert_close(sample_area(block, mask_start, fov), _reference_area(full, fov), atol=1e-5, rtol=0)


@_settings
@given(start=_starts, side=_sides, data=st.data())
def test_property_upsample_region_matches_torch(start, side, data):
    fov = FieldOfView(start, side, P)
    region = []
    for s in start:
        a = data.draw(st.integers(s, s + side - 1))
        b = data.draw(st.integers(a + 1, s + side))
        region.append([a, b])
    probs = torch.rand((P, P, P), generator=torch.Generator().manual_seed(7))
    expected = _reference_upsample(probs, fov)[_crop_slices(region, fov)]
    torch.testing.assert_close(upsample_region(probs, fov, region), expected, atol=1e-5, rtol=0)


@_settings
@given(lo=st.tuples(*(st.integers(-5, 50) for _ in range(3))),
       extent=st.tuples(*(st.integers(1, 120) for _ in range(3))),
       patch=st.sampled_from([16, 24, 30, 48]))
def test_property_fit_is_centred_and_holds_the_prompts(lo, extent, patch):
    lo = np.asarray(lo)
    hi = lo + np.asarray(extent) - 1
    fov = fit(region_of(tuple(lo), tuple(hi)), patch)
    assert fov.side == _expected_side(extent, patch)
    assert np.all(np.abs(_crop_centre(fov) - (lo + hi) / 2) <= 0.5)
    assert np.all(np.asarray(fov.start) <= lo) and np.all(np.asarray(fov.start) + fov.side - 1 >= hi)


# ----------------------------------------------------------------------------- full-resolution tiles


@given(lo=st.tuples(*[st.integers(-5, 40)] * 3), extent=st.tuples(*[st.integers(1, 130)] * 3),
       patch=st.sampled_from([8, 16, 24, 96]))
@settings(max_examples=200, deadline=None)
def test_property_tiles_are_zoom_one_cover_the_bounds_and_overlap_by_a_third(lo, extent, patch):
    hi = tuple(a + e - 1 for a, e in zip(lo, extent))
    found = tiles(region_of(lo, hi), patch)
    assert all(t.zoom == 1 and t.side == patch for t in found)
    for axis in range(3):
        starts = sorted({t.start[axis] for t in found})
        if extent[axis] <= patch:  # one tile, centred on the side
            assert len(starts) == 1 and abs((starts[0] + (patch - 1) / 2) - (lo[axis] + hi[axis]) / 2) <= 0.5
        else:  # from end to end, each step at most 2/3 of a patch
            assert starts[0] == lo[axis] and starts[-1] + patch - 1 == hi[axis]
            assert all(0 < b - a <= math.ceil(patch * 2 / 3) for a, b in zip(starts, starts[1:]))
    # every voxel of the bounds lies in some tile: the grid is the product of the per-axis starts
    assert len(found) == math.prod(len({t.start[a] for t in found}) for a in range(3))
