"""Tests for inference.prompts: boxes and clicks drawn on the patch grid of a field of view."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.case_io import Box, ClassPrompt
from inference.field_of_view import FieldOfView
from inference.prompts import (
    LOGICAL_CHANNELS,
    PromptEncoding,
    ball_template,
    box_channel,
    click_channel,
    prompt_channels,
    stack_channels,
)

# ----------------------------------------------------------------------------- helpers


def _touched(lo: int, hi: int, start: int, side: int, patch: int) -> tuple[int, int]:
    """Half-open range of patch voxels that the closed voxel range lo..hi touches (exact integer arithmetic).

    Patch voxel k covers crop voxels [k side / P, (k + 1) side / P).
    """
    first = ((lo - start) * patch) // side
    last = -((-(hi + 1 - start) * patch) // side)
    return min(max(first, 0), patch), min(max(last, 0), patch)


def _nonzero_ranges(channel: torch.Tensor) -> list[tuple[int, int]]:
    """Per axis, the half-open index range that holds nonzero values."""
    idx = torch.nonzero(channel)
    return [(int(idx[:, a].min()), int(idx[:, a].max()) + 1) for a in range(3)]


def _expected_box(box_lo, box_hi, fov: FieldOfView) -> torch.Tensor:
    out = torch.zeros((fov.patch,) * 3)
    ranges = [_touched(lo, hi, s, fov.side, fov.patch) for lo, hi, s in zip(box_lo, box_hi, fov.start)]
    if all(b > a for a, b in ranges):
        out[tuple(slice(a, b) for a, b in ranges)] = 1.0
    return out


def _ball_mask(patch: int, centres, radius: float) -> np.ndarray:
    """Patch voxels within `radius` (Euclidean, voxel units) of any of the integer `centres`."""
    grid = np.indices((patch,) * 3)
    out = np.zeros((patch,) * 3, dtype=bool)
    for c in centres:
        out |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= radius ** 2
    return out


def _fov(start=(10, 20, 30), side=24, patch=24) -> FieldOfView:
    return FieldOfView(tuple(start), side, patch)


BINARY = PromptEncoding(box="slab", points="binary", point_radius=4.0)
DISTANCE = PromptEncoding(box="slab", points="distance", point_radius=4.0)


# ----------------------------------------------------------------------------- box_channel


def test_slab_box_at_zoom_one_covers_exactly_the_box():
    fov = _fov(start=(10, 20, 30), side=16, patch=16)
    box = Box(lo=(12, 25, 31), hi=(15, 28, 40), z_mid=13)
    channel = box_channel(box, fov, "slab")
    assert channel.shape == (16, 16, 16)
    assert channel.dtype == torch.float32
    assert set(torch.unique(channel).tolist()) == {0.0, 1.0}
    assert int(channel.sum()) == 4 * 4 * 10
    assert _nonzero_ranges(channel) == [(2, 6), (5, 9), (1, 11)]
    assert torch.equal(channel[2:6, 5:9, 1:11], torch.ones(4, 4, 10))


def test_mid_slice_box_at_zoom_one_is_exactly_one_slice():
    fov = _fov(start=(10, 20, 30), side=16, patch=16)
    box = Box(lo=(12, 25, 31), hi=(15, 28, 40), z_mid=13)
    channel = box_channel(box, fov, "mid_slice")
    assert int(channel.sum()) == 1 * 4 * 10
    assert _nonzero_ranges(channel) == [(3, 4), (5, 9), (1, 11)]


@pytest.mark.parametrize("z_mid", [0, 1, 2, 3, 22, 23, 46, 47])
def test_mid_slice_box_survives_zoom_three(z_mid):
    fov = _fov(start=(0, 0, 0), side=48, patch=16)  # zoom 3
    box = Box(lo=(0, 4, 7), hi=(47, 10, 7), z_mid=z_mid)  # also only one voxel wide in x
    channel = box_channel(box, fov, "mid_slice")
    assert channel.sum() > 0
    z_planes = torch.nonzero(channel.sum(dim=(1, 2))).flatten().tolist()
    assert z_planes == [z_mid // 3]  # the one patch slice holding the box's slice
    ranges = _nonzero_ranges(channel)
    assert ranges[1] == (1, 4)  # y 4..10 -> patch voxels 1, 2, 3
    assert ranges[2] == (2, 3)  # x 7 -> patch voxel 2
    assert torch.equal(channel, _expected_box((z_mid, 4, 7), (z_mid, 10, 7), fov))


@pytest.mark.parametrize(
    "fov, lo, hi",
    [
        (FieldOfView((0, 0, 0), 45, 16), (3, 10, 20), (30, 17, 21)),  # zoom 2.8125
        (FieldOfView((-7, 4, 11), 45, 16), (0, 4, 11), (5, 48, 12)),
        (FieldOfView((5, 5, 5), 40, 16), (7, 9, 44), (7, 9, 44)),  # a single voxel at zoom 2.5
        (FieldOfView((0, 0, 0), 17, 16), (1, 2, 3), (15, 16, 4)),  # zoom 1.0625
    ],
)
def test_slab_box_covers_every_touched_patch_voxel(fov, lo, hi):
    channel = box_channel(Box(lo, hi, lo[0]), fov, "slab")
    assert torch.equal(channel, _expected_box(lo, hi, fov))


@pytest.mark.parametrize(
    "fov, lo, hi",
    [
        (FieldOfView((0, 0, 0), 56, 24), (35, 35, 35), (40, 40, 40)),  # first index off by one
        (FieldOfView((0, 0, 0), 104, 24), (50, 50, 50), (64, 64, 64)),  # last index off by one
    ],
)
def test_slab_box_does_not_cover_untouched_voxels_at_exact_patch_boundaries(fov, lo, hi):
    channel = box_channel(Box(lo, hi, lo[0]), fov, "slab")
    assert torch.equal(channel, _expected_box(lo, hi, fov))


def test_box_partly_outside_the_field_of_view_is_clipped():
    fov = _fov(start=(10, 10, 10), side=16, patch=16)
    box = Box(lo=(5, 12, 20), hi=(12, 14, 40), z_mid=8)
    channel = box_channel(box, fov, "slab")
    assert _nonzero_ranges(channel) == [(0, 3), (2, 5), (10, 16)]
    assert int(channel.sum()) == 3 * 3 * 6


@pytest.mark.parametrize(
    "lo, hi",
    [((30, 12, 12), (40, 14, 14)), ((0, 0, 0), (9, 30, 30)), ((12, 26, 12), (14, 30, 14)), ((12, 12, 0), (14, 14, 9))],
    ids=["after-z", "before-z", "after-y", "before-x"],
)
def test_box_fully_outside_the_field_of_view_gives_zeros(lo, hi):
    fov = _fov(start=(10, 10, 10), side=16, patch=16)
    channel = box_channel(Box(lo, hi, lo[0]), fov, "slab")
    assert channel.shape == (16, 16, 16)
    assert not channel.any()


def test_mid_slice_outside_the_field_of_view_gives_zeros_even_if_the_slab_meets_it():
    fov = _fov(start=(10, 10, 10), side=16, patch=16)
    box = Box(lo=(0, 12, 12), hi=(20, 14, 14), z_mid=4)
    assert box_channel(box, fov, "slab").any()
    assert not box_channel(box, fov, "mid_slice").any()


def test_no_box_gives_zeros():
    channel = box_channel(None, _fov(), "slab")
    assert channel.shape == (24, 24, 24)
    assert not channel.any()


# ----------------------------------------------------------------------------- ball_template


def test_binary_ball_of_radius_four():
    ball = ball_template(4.0, "binary")
    assert ball.shape == (9, 9, 9)
    assert int(ball.sum()) == 257
    assert set(np.unique(ball).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(ball, ball[::-1])
    np.testing.assert_array_equal(ball, ball.transpose(2, 0, 1))
    assert ball[4, 4, 0] == 1 and ball[4, 4, 8] == 1  # the rim along an axis is inside
    assert ball[0, 0, 0] == 0 and ball[4, 0, 0] == 0


@pytest.mark.parametrize("radius, side, count", [(1.0, 3, 7), (4.0 / 3.0, 3, 7), (2.0, 5, 33), (2.5, 5, 81)])
def test_binary_ball_sizes(radius, side, count):
    ball = ball_template(radius, "binary")
    assert ball.shape == (side,) * 3
    assert int(ball.sum()) == count


def test_distance_ball_is_one_at_the_centre_and_falls_to_the_rim():
    ball = ball_template(4.0, "distance")
    binary = ball_template(4.0, "binary").astype(bool)
    assert ball.shape == (9, 9, 9)
    assert ball[4, 4, 4] == pytest.approx(1.0)
    inside = binary.copy()
    inside[4, 4, 4] = False
    assert (ball[inside] > 0).all() and (ball[inside] < 1).all()
    assert (ball[~binary] == 0).all()
    for profile in (ball[4, 4, 4:], ball[4, 4, 4::-1], ball[4:, 4, 4], ball[4::-1, 4, 4], ball[4, 4:, 4],
                    np.array([ball[i, i, i] for i in range(4, 9)])):
        assert (np.diff(profile) <= 1e-7).all(), profile
    assert ball[4, 4, 8] < ball[4, 4, 5]  # it really falls, not flat


# ----------------------------------------------------------------------------- click_channel


def test_click_at_zoom_one_is_the_257_voxel_ball_on_its_patch_coordinate():
    fov = _fov(start=(10, 20, 30), side=24, patch=24)
    channel = click_channel(np.array([[22, 31, 40]]), fov, BINARY)  # patch (12, 11, 10)
    assert channel.shape == (24, 24, 24) and channel.dtype == torch.float32
    assert int(channel.sum()) == 257
    np.testing.assert_array_equal(channel.numpy(), _ball_mask(24, [(12, 11, 10)], 4.0).astype(np.float32))


@pytest.mark.parametrize("patch_centre", [(1, 12, 12), (0, 0, 0), (23, 22, 12), (12, 0, 23), (3, 20, 2)])
def test_click_near_the_patch_border_is_clipped(patch_centre):
    fov = _fov(start=(10, 20, 30), side=24, patch=24)
    click = np.array([[c + s for c, s in zip(patch_centre, fov.start)]])
    channel = click_channel(click, fov, BINARY)
    expected = _ball_mask(24, [patch_centre], 4.0)
    assert 0 < int(channel.sum()) < 257
    np.testing.assert_array_equal(channel.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("offset", [(-20, 12, 12), (12, 40, 12), (12, 12, -5), (30, 30, 30)])
def test_click_outside_the_field_of_view_draws_nothing(offset):
    fov = _fov(start=(10, 20, 30), side=24, patch=24)
    click = np.array([[o + s for o, s in zip(offset, fov.start)]])
    channel = click_channel(click, fov, BINARY)
    assert channel.shape == (24, 24, 24)
    assert not channel.any()


def test_no_clicks_draw_nothing():
    channel = click_channel(np.zeros((0, 3), dtype=np.int64), _fov(), BINARY)
    assert channel.shape == (24, 24, 24)
    assert not channel.any()


@pytest.mark.parametrize("encoding", [BINARY, DISTANCE], ids=["binary", "distance"])
@pytest.mark.parametrize("click", [(33, 33, 33), (2, 61, 40), (0, 0, 0), (63, 63, 63)])
def test_click_at_zoom_four_keeps_its_centre_voxel(encoding, click):
    fov = _fov(start=(0, 0, 0), side=64, patch=16)  # zoom 4: radius 4 shrinks to 1 patch voxel
    channel = click_channel(np.array([click]), fov, encoding)
    centre = tuple(int((c + 0.5 - s) * fov.patch // fov.side) for c, s in zip(click, fov.start))
    assert channel[centre] == 1.0
    assert 1 <= int((channel > 0).sum()) <= 7  # at most the centre and its 6 face neighbours
    assert float(channel.max()) == 1.0


@pytest.mark.parametrize("side", [64, 128])
def test_click_radius_does_not_shrink_below_one_patch_voxel(side):
    fov = _fov(start=(0, 0, 0), side=side, patch=16)  # zoom 4 and 8: radius 4 / zoom <= 1
    click = np.array([[side // 2 + 1, side // 2 + 1, side // 2 + 1]])
    centre = tuple(int((c + 0.5) * fov.patch // fov.side) for c in click[0])
    channel = click_channel(click, fov, BINARY)
    np.testing.assert_array_equal(channel.numpy(), _ball_mask(16, [centre], 1.0).astype(np.float32))
    assert int(channel.sum()) == 7


def test_overlapping_binary_balls_merge_with_max():
    fov = _fov(start=(0, 0, 0), side=24, patch=24)
    channel = click_channel(np.array([[10, 10, 10], [10, 10, 13]]), fov, BINARY)
    assert float(channel.max()) == 1.0
    assert set(torch.unique(channel).tolist()) == {0.0, 1.0}
    expected = _ball_mask(24, [(10, 10, 10), (10, 10, 13)], 4.0)
    np.testing.assert_array_equal(channel.numpy(), expected.astype(np.float32))
    assert 257 < int(channel.sum()) < 2 * 257


def test_overlapping_distance_balls_merge_with_max():
    fov = _fov(start=(0, 0, 0), side=24, patch=24)
    a, b = np.array([[10, 10, 10]]), np.array([[10, 11, 12]])
    both = click_channel(np.concatenate([a, b]), fov, DISTANCE)
    single_a, single_b = click_channel(a, fov, DISTANCE), click_channel(b, fov, DISTANCE)
    assert float(both.max()) <= 1.0
    assert torch.equal(both, torch.maximum(single_a, single_b))
    assert both[10, 10, 10] == 1.0 and both[10, 11, 12] == 1.0
    # the same click twice does not add up
    assert torch.equal(click_channel(np.concatenate([a, a]), fov, DISTANCE), single_a)


def test_distance_click_at_zoom_one_matches_the_template():
    fov = _fov(start=(10, 20, 30), side=24, patch=24)
    channel = click_channel(np.array([[22, 31, 40]]), fov, DISTANCE).numpy()
    template = ball_template(4.0, "distance")
    np.testing.assert_allclose(channel[8:17, 7:16, 6:15], template)
    assert channel.sum() == pytest.approx(template.sum())


def test_prompt_channels_use_the_class_prompts():
    fov = _fov(start=(0, 0, 0), side=24, patch=24)
    prompt = ClassPrompt(label=1, box=Box((2, 3, 4), (5, 6, 7), 3), fg=np.array([[12, 12, 12]]),
                         bg=np.zeros((0, 3), dtype=np.int64))
    channels = prompt_channels(prompt, fov, PromptEncoding(box="mid_slice"))
    assert set(channels) == {"box", "fg_clicks", "bg_clicks"}
    assert int(channels["box"].sum()) == 1 * 4 * 4
    assert int(channels["fg_clicks"].sum()) == 257
    assert not channels["bg_clicks"].any()


# ----------------------------------------------------------------------------- stack_channels and encoding


def test_stack_channels_follows_the_layout_and_fills_zero():
    named = {name: torch.full((4, 4, 4), float(i + 1)) for i, name in enumerate(LOGICAL_CHANNELS) if name != "zero"}
    layout = ("prev_seg", "zero", "image", "bg_clicks", "zero", "box", "fg_clicks")
    stacked = stack_channels(named, layout)
    assert stacked.shape == (7, 4, 4, 4)
    expected = [float(LOGICAL_CHANNELS.index(n) + 1) if n != "zero" else 0.0 for n in layout]
    assert [float(stacked[i].unique().item()) for i in range(7)] == expected
    assert expected[0] == 5.0 and expected[1] == 0.0  # the layout really is reordered


def test_stack_channels_with_an_unknown_name_fails():
    named = {"image": torch.ones(2, 2, 2)}
    with pytest.raises(KeyError):
        stack_channels(named, ("image", "scribbles"))


@pytest.mark.parametrize(
    "kwargs",
    [{"box": "slabs"}, {"box": "2d"}, {"points": "gaussian"}, {"points": "Binary"}, {"point_radius": 0.0},
     {"point_radius": -1.0}, {"point_radius": float("nan")}],
)
def test_prompt_encoding_rejects_unknown_modes(kwargs):
    with pytest.raises(ValueError):
        PromptEncoding(**kwargs)


@pytest.mark.parametrize("box", ["slab", "mid_slice"])
@pytest.mark.parametrize("points", ["binary", "distance"])
def test_prompt_encoding_accepts_the_known_modes(box, points):
    encoding = PromptEncoding(box=box, points=points, point_radius=2.5)
    assert (encoding.box, encoding.points, encoding.point_radius) == (box, points, 2.5)
