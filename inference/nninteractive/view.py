"""The network input as nnInteractive's inference session (nninteractive 2.6.0) builds it.

The session keeps every prompt at full resolution in float16, each written at a running intensity I
that grows by 1/decay per prompt. For a forward pass it cuts a cube of side round(P f) around the
last prompt only (zero outside the image); zoomed out (f > 1) it max-filters the click channels,
area-resamples every prompt channel in float16 and resamples the normalised image trilinearly;
then it divides the prompt channels by I. This module does the same with the same torch calls, so
that the input matches it to the bit (docs/nninteractive_session.md, sections 2 and 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..autozoom import ZOOM_OUT_STEP
from ..case_io import Box, ClassPrompt
from ..field_of_view import FieldOfView
from ..geometry import Region, clip, slices
from ..prompts import ball_template, box_region, stack_channels
from .filters import dilate


@dataclass(frozen=True)
class View:
    """A prediction centre and the session's zoom f; the crop is the cube of side round(P f) from c - side//2."""

    centre: tuple[int, int, int]
    zoom: float
    patch: int

    @property
    def fov(self) -> FieldOfView:
        side = round(self.patch * self.zoom)
        return FieldOfView(tuple(c - side // 2 for c in self.centre), side, self.patch)

    def zoomed_out(self, max_zoom: float) -> "View":
        """The session's AutoZoom step: f <- min(max_zoom, 1.5 f), same centre."""
        return View(self.centre, min(max_zoom, self.zoom * ZOOM_OUT_STEP), self.patch)


@dataclass(frozen=True)
class Stamps:
    """A class's prompts in the order the session receives them (box, then clicks), each with its write intensity."""

    box: Region | None
    box_intensity: float
    clicks: list[tuple[tuple[int, int, int], bool, float]]  # (voxel, positive, intensity)
    intensity: float  # the newest prompt's: every prompt channel is divided by it before the network
    view: View | None  # around the newest prompt


def stored_box(box: Box, mode: str, shape: tuple[int, ...]) -> Region:
    """The box as the session stores it: clipped to the image, at least one voxel per axis."""
    bounds = []
    for (a, b), n in zip(box_region(box, mode), shape):
        # the session clips the start to >= 0 only; past the image's end it would store an empty box
        a, b = min(max(0, a), n - 1), min(n, b)
        if b <= a:
            a, b = (0, min(1, n)) if a == 0 else (max(a - 1, 0), b)
        bounds.append([a, b])
    return bounds


def ordered_clicks(prompt: ClassPrompt) -> list[tuple[tuple[int, int, int], bool]]:
    """Clicks in time order, from `clicks_order` (None entries add nothing); leftovers after it, fg first."""
    fg, bg = [tuple(int(v) for v in p) for p in prompt.fg], [tuple(int(v) for v in p) for p in prompt.bg]
    taken = {"fg": 0, "bg": 0}
    ordered = []
    for kind in prompt.order:
        pool = fg if kind == "fg" else bg if kind == "bg" else None
        if pool is not None and taken[kind] < len(pool):
            ordered.append((pool[taken[kind]], kind == "fg"))
            taken[kind] += 1
    ordered += [(p, True) for p in fg[taken["fg"]:]] + [(p, False) for p in bg[taken["bg"]:]]
    return ordered


def box_zoom(bounds: Region, patch: int) -> float:
    """The session's first zoom for a box: f = max(1, max over axes of (size + P//3) / P)."""
    return max(1, max((b - a + patch // 3) / patch for a, b in bounds))


def class_stamps(prompt: ClassPrompt, shape: tuple[int, ...], patch: int, box_mode: str, decay: float) -> Stamps:
    """Intensities grow by 1/decay per prompt from 1 (the previous mask resets them); the view follows the newest."""
    intensity = 1.0

    def next_intensity() -> float:
        nonlocal intensity
        if decay < 1:
            intensity *= 1 / decay
        return intensity

    box, box_intensity, view = None, 1.0, None
    if prompt.box is not None:
        box = stored_box(prompt.box, box_mode, shape)
        box_intensity = next_intensity()
        view = View(tuple(round((a + b) / 2) for a, b in box), box_zoom(box, patch), patch)
    clicks = [(point, positive, next_intensity()) for point, positive in ordered_clicks(prompt)]
    if clicks:
        view = View(clicks[-1][0], 1, patch)
    return Stamps(box, box_intensity, clicks, intensity, view)


def _inside(fov: FieldOfView, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(volume slices, crop slices) of the part of the crop inside the image."""
    inside = fov.inside(shape)
    if inside is None:
        return None
    return slices(inside), slices(inside, fov.start)


def _in_crop(region: Region, fov: FieldOfView, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Crop slices of `region` (volume coordinates) cut to the image and the crop."""
    inside = fov.inside(shape)
    cut = clip(region, inside) if inside is not None else None
    return slices(cut, fov.start) if cut is not None else None


def box_crop(stamps: Stamps, fov: FieldOfView, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The stored box channel cut to the crop: the solid box at its intensity, float16."""
    where = _in_crop(stamps.box, fov, shape) if stamps.box is not None else None
    if where is None:
        return None
    crop = torch.zeros((fov.side,) * 3, dtype=torch.float16)
    crop[where] = stamps.box_intensity
    return crop


def clicks_crop(stamps: Stamps, positive: bool, radius: float, fov: FieldOfView,
                shape: tuple[int, ...]) -> torch.Tensor | None:
    """The stored point channel cut to the crop: distance balls times their intensity, merged by max, float16."""
    strel = torch.from_numpy(ball_template(radius, "distance", np.float64))
    r = strel.shape[0] // 2
    crop = None
    for point, is_positive, intensity in stamps.clicks:
        if is_positive != positive:
            continue
        bounds = [[p - r, p + r + 1] for p in point]
        where = _in_crop(bounds, fov, shape)
        if where is None:
            continue
        ball = strel * intensity if intensity != 1.0 else strel
        part = tuple(slice(w.start + s - (p - r), w.stop + s - (p - r)) for w, s, p in zip(where, fov.start, point))
        crop = torch.zeros((fov.side,) * 3, dtype=torch.float16) if crop is None else crop
        torch.maximum(crop[where], ball[part].to(torch.float16), out=crop[where])
    return crop


def previous_crop(prev_pred: np.ndarray | None, label: int, fov: FieldOfView) -> torch.Tensor:
    """The class's previous mask cut to the crop, float16 0/1 (never scaled)."""
    crop = torch.zeros((fov.side,) * 3, dtype=torch.float16)
    where = _inside(fov, prev_pred.shape) if prev_pred is not None else None
    if where is not None:
        crop[where[1]] = torch.from_numpy(prev_pred[where[0]] == label).to(torch.float16)
    return crop


def image_crop(image: np.ndarray, mean: float, std: float, fov: FieldOfView) -> torch.Tensor:
    """The z-scored image cut to the crop, float32, 0 outside the image."""
    crop = torch.zeros((fov.side,) * 3, dtype=torch.float32)
    where = _inside(fov, image.shape)
    if where is not None:
        values = torch.from_numpy(np.ascontiguousarray(image[where[0]], dtype=np.float32))
        # the session normalises in place with float32 0-dim tensors; the same ops give the same bits
        values -= torch.tensor(mean, dtype=torch.float32)
        values /= torch.tensor(std, dtype=torch.float32)
        crop[where[1]] = values
    return crop


def odd_kernel(number: float) -> int:
    """The session's `round_to_nearest_odd`: ceil if odd, else floor if odd, else round + 1."""
    if math.ceil(number) % 2 == 1:
        return math.ceil(number)
    if math.floor(number) % 2 == 1:
        return math.floor(number)
    return round(number) + 1


def to_patch(channel: torch.Tensor, patch: int, k: int = 1) -> torch.Tensor:
    """Zoomed-out resampling of a float16 prompt channel: k^3 max filter, then area averaging in float16."""
    return F.interpolate(dilate(channel, k)[None, None], (patch,) * 3, mode="area")[0, 0]


def network_input(image: np.ndarray, mean: float, std: float, prev_pred: np.ndarray | None, label: int,
                  stamps: Stamps, view: View, layout: tuple[str, ...], point_radius: float,
                  device: torch.device, prev_crop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input (C, P, P, P) float32 on the CPU, previous mask on the patch grid for AutoZoom).

    `prev_crop` replaces the class's previous mask on the crop (refinement passes see their own).
    """
    fov, shape, patch = view.fov, image.shape, view.patch
    zoomed = fov.side != patch
    img = image_crop(image, mean, std, fov).to(device)
    prev = (previous_crop(prev_pred, label, fov) if prev_crop is None else prev_crop.to(torch.float16)).to(device)
    if zoomed:
        img = F.interpolate(img[None, None], (patch,) * 3, mode="trilinear")[0, 0]
        prev_for_zoom = F.interpolate(prev[None, None], (patch,) * 3, mode="nearest")[0, 0]
        prev = to_patch(prev, patch)
    else:
        prev_for_zoom = prev.clone()
    kernel = odd_kernel(view.zoom * 2 - 1) if zoomed else 1
    prompts = {"box": (box_crop(stamps, fov, shape), 1),
               "fg_clicks": (clicks_crop(stamps, True, point_radius, fov, shape), kernel),
               "bg_clicks": (clicks_crop(stamps, False, point_radius, fov, shape), kernel)}
    named = {"image": img.cpu(), "prev_seg": prev.float().cpu()}
    for name, (crop, k) in prompts.items():
        if crop is None:  # nothing drawn: zero at any zoom and after the division
            named[name] = torch.zeros((patch,) * 3)
            continue
        crop = crop.to(device)
        if zoomed:
            crop = to_patch(crop, patch, k)
        if stamps.intensity != 1:
            crop /= stamps.intensity
        named[name] = crop.float().cpu()
    return stack_channels(named, layout), prev_for_zoom.cpu()
