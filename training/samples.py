"""Training samples: a synthetic volume with one target structure, and its prompts as the evaluator gives them.

Boxes follow the organisers' rule (harness `organiser_box`), clicks come from the harness's
simulated user; a sample is turned into a network input by the container's own code
(`segfm.inputs.network_input` on a `Case`), so training sees exactly what inference feeds.
Volumes come from two sources through the same recipe: synthesised from label maps, or
(`Recipe.p_real`) cropped from a real labelled case (training/real_cases.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import edt
import numpy as np
import torch

from inference.case_io import Case, ClassPrompt, box_from_dict
from inference.field_of_view import FieldOfView, fit, sample_area
from inference.fusion import PatchProbability, apply_clicks, fuse_classes
from inference.harness.boxes import organiser_box
from inference.harness.simulated_user import Click, simulate_click
from inference.model import Model
from inference.autozoom import ZOOM_OUT_STEP
from inference.class_task import Effort, PreparedCase, label_regions, prepare
from inference.geometry import Region, union
from inference.pipelines import segment_class
from inference.segfm.inputs import network_input, prompt_region
from inference.segfm.tiles import coarse_answer

from .label_maps import SHAPE_KINDS, LabelSources, label_values, random_shapes
from .real_cases import RealCases
from .synthesis import crop_around, render_image, reorient, rotate_and_scale, thick_slices

LABEL = 1  # the target is always class 0 = label 1 of its case
MIN_TARGET_VOXELS = 20
FIRST_TARGET_LABEL_ABOVE = 100  # random-shape labels above this are background texture, not targets


@dataclass(frozen=True)
class Recipe:
    """How volumes are drawn (training/config.json, "data")."""

    p_atlas: float = 0.4
    p_tissue: float = 0.1
    max_side: int = 112
    min_side: int = 40
    max_thick_slices: int = 5
    p_rotate: float = 0.3
    max_angle: float = 0.5  # radians
    scale_range: tuple[float, float] = (0.75, 1.3)
    # structures of one synthesised volume that become samples: synthesis is most of a sample's cost
    targets_per_volume: int = 1
    # how often each of label_maps.SHAPE_KINDS is drawn (None: all alike)
    shape_weights: tuple[float, ...] | None = None
    # real labelled cases (`training.train --data`): the share of volumes cropped from them when there are any
    p_real: float = 0.5
    # of those, the share whose target is all the case's labels as one structure (a whole brain from its parts)
    p_real_union: float = 0.1
    validation_fraction: float = 0.1  # of the real cases, held out by a hash of their names

    def __post_init__(self) -> None:
        if self.targets_per_volume < 1:
            raise ValueError(f"targets_per_volume must be at least 1, got {self.targets_per_volume}")
        if self.shape_weights is not None and (len(self.shape_weights) != len(SHAPE_KINDS)
                                               or min(self.shape_weights) < 0 or sum(self.shape_weights) <= 0):
            raise ValueError(f"shape_weights: {len(SHAPE_KINDS)} non-negative weights for {SHAPE_KINDS}, "
                             f"not all 0, got {self.shape_weights}")

    @classmethod
    def from_config(cls, data: dict) -> "Recipe":
        """The recipe of a config's "data" block (JSON lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class TrainingVolume:
    image: np.ndarray  # uint8 (z, y, x)
    truth: np.ndarray  # bool, the target structure
    spacing: tuple[float, float, float]  # array order (z, y, x)
    source: str
    labels: np.ndarray | None = None  # the label map the target came from: its neighbours
    # normalisation -> (mean, std) of the whole case a real volume was cropped from: the container normalises
    # with the whole image's statistics, not the crop's (None: the volume is the whole image)
    intensity: dict[str, tuple[float, float]] | None = None


def draw_volume(rng: np.random.Generator, sources: LabelSources, recipe: Recipe, patch: int = 96,
                max_zoom: float = 4.0) -> TrainingVolume:
    """One random volume and target; retries until the target survives cropping and thick slicing.

    A real case's crop is sized for a network of `patch` and `max_zoom` (`real_region`)."""
    # no draw without real cases: the synthetic-only runs recorded before keep their random streams
    if sources.real is not None and recipe.p_real > 0 and rng.random() < recipe.p_real:
        return draw_real_volume(rng, sources.real, recipe, patch, max_zoom)
    for _ in range(20):
        u = rng.random()
        if u < recipe.p_atlas and sources.atlases:
            labels, source = sources.atlases[int(rng.integers(len(sources.atlases)))], "atlas"
        elif u < recipe.p_atlas + recipe.p_tissue and sources.tissue is not None:
            labels, source = sources.tissue, "tissue"
        else:
            side = rng.integers(recipe.min_side, recipe.max_side + 1, size=3)
            labels, source = random_shapes(rng, tuple(int(s) for s in side), recipe.shape_weights), "shapes"
        present = target_labels(label_values(labels), source)
        if len(present) == 0:
            continue
        target = int(present[rng.integers(len(present))])
        labels = crop_around(reorient(labels, rng), target, rng, recipe.max_side)
        if rng.random() < recipe.p_rotate:
            labels = rotate_and_scale(labels, rng, recipe.max_angle, recipe.scale_range)
        labels, k = thick_slices(labels, rng, recipe.max_thick_slices)
        truth = labels == target
        if truth.sum() < MIN_TARGET_VOXELS:
            continue
        return TrainingVolume(render_image(labels, rng), truth, (float(k), 1.0, 1.0), source, labels)
    raise RuntimeError("no usable target in 20 draws")


def draw_real_volume(rng: np.random.Generator, real: RealCases, recipe: Recipe, patch: int,
                     max_zoom: float) -> TrainingVolume:
    """A crop of a real case around one of its labels (or, `p_real_union`, all of them as one target),
    read from the prepared arrays: only the region the container's fields of view can reach."""
    case = real.cases[int(rng.integers(len(real.cases)))]
    labels = sorted(case.labels)
    usable = [label for label in labels if case.labels[label].voxels >= MIN_TARGET_VOXELS] or labels
    if recipe.p_real_union > 0 and len(labels) > 1 and rng.random() < recipe.p_real_union:
        chosen = labels
    else:
        chosen = [usable[int(rng.integers(len(usable)))]]
    target = union(*(case.labels[label].region for label in chosen))
    image, label_map = case.read(real_region(target, case.shape, patch, max_zoom))
    truth = np.isin(label_map, chosen) if len(chosen) > 1 else label_map == chosen[0]
    return TrainingVolume(image, truth, case.spacing, "real", label_map, case.intensity)


def real_region(target: Region, shape: tuple[int, ...], patch: int, max_zoom: float) -> Region:
    """The part of a case a sample of `target` reads: the target and a patch around it, at most the widest
    field of view (patch * max_zoom) per axis, centred on the target, so a worker's memory is bounded
    whatever the case size."""
    # not one patch more: the simulated user's distance transform of a target filling the crop costs
    # 14 bytes a voxel, and a 480^3 crop peaked at 3.5 GiB in a worker (scripts/benchmark_real_data.py)
    most = int(np.ceil(patch * max_zoom))
    region = []
    for (a, b), n in zip(target, shape):
        start, stop = a - patch, b + patch
        if stop - start > most:
            start = (a + b) // 2 - most // 2
            stop = start + most
        region.append([max(start, 0), min(stop, n)])
    return region


def target_labels(present: np.ndarray, source: str) -> np.ndarray:
    """Of the labels `present` in a `source` label map, those a sample may take as its target."""
    present = present[present > 0]
    return present[present <= FIRST_TARGET_LABEL_ABOVE] if source == "shapes" else present


def other_target(volume: TrainingVolume, rng: np.random.Generator) -> TrainingVolume:
    """The same volume with another of its structures as the target (the same one if it has no other)."""
    if volume.labels is None:
        return volume
    counts = np.bincount(volume.labels.ravel())
    current = int(volume.labels[np.unravel_index(np.argmax(volume.truth), volume.truth.shape)])
    usable = target_labels(np.flatnonzero(counts >= MIN_TARGET_VOXELS), volume.source)
    usable = usable[usable != current]
    # whole structures first: the crop was made around the first target and cuts many of the others
    whole = usable[~np.isin(usable, border_labels(volume.labels))]
    usable = whole if len(whole) else usable
    if len(usable) == 0:
        return volume
    return replace(volume, truth=volume.labels == int(usable[rng.integers(len(usable))]))


def border_labels(labels: np.ndarray) -> np.ndarray:
    """The labels on the volume's six faces."""
    faces = [labels.take(end, axis=axis).ravel() for axis in range(3) for end in (0, -1)]
    return np.unique(np.concatenate(faces))


def first_prompt(volume: TrainingVolume, rng: np.random.Generator, with_box: bool) -> ClassPrompt:
    """The box the organisers would draw (random widening), or without one the evaluator's first click."""
    if with_box:
        box = box_from_dict(organiser_box(volume.truth, np.random.RandomState(int(rng.integers(2**31)))),
                            volume.truth.shape)
        return ClassPrompt(LABEL, box=box)
    return add_click(ClassPrompt(LABEL), simulate_click(np.zeros_like(volume.truth), volume.truth))


def add_click(prompt: ClassPrompt, click: Click | None) -> ClassPrompt:
    """The prompt after one more round: the click appended, or `None` in the order when nothing was left to fix."""
    if click is None:
        return replace(prompt, order=prompt.order + (None,))
    point = np.asarray([click.voxel], dtype=np.int64)
    if click.kind == "fg":
        return replace(prompt, fg=np.concatenate([prompt.fg, point]), order=prompt.order + ("fg",))
    return replace(prompt, bg=np.concatenate([prompt.bg, point]), order=prompt.order + ("bg",))


def as_case(volume: TrainingVolume, prompt: ClassPrompt, prev_pred: np.ndarray | None) -> Case:
    return Case("train", volume.image, volume.spacing, [prompt], prev_pred)


def prepared_volume(model: Model, volume: TrainingVolume, prompt: ClassPrompt,
                    prev_pred: np.ndarray | None) -> PreparedCase:
    """The container's `prepare` of the volume as a case; a real crop keeps its whole case's intensity statistics."""
    case = as_case(volume, prompt, prev_pred)
    stats = volume.intensity.get(model.spec.normalisation) if volume.intensity else None
    if stats is None:
        return prepare(case, model)
    return PreparedCase(case, *stats, label_regions(prev_pred))


def training_pair(model: Model, volume: TrainingVolume, prompt: ClassPrompt,
                  prev_pred: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input (C, P, P, P), soft target (P, P, P)) on the field of view the container would choose."""
    prepared = prepared_volume(model, volume, prompt, prev_pred)
    fov = fit(prompt_region(prepared, prompt), model.spec.patch_size)
    return network_input(model, prepared, prompt, fov), patch_target(volume.truth, fov)


def tile_pair(model: Model, volume: TrainingVolume, prompt: ClassPrompt, prev_pred: np.ndarray | None,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(network input, soft target) on one of the zoom-1 tiles the container predicts a zoomed-out box
    answer again in (`segfm.tiles.predict_in_tiles`), fed the model's own coarse answer as its previous mask.

    None when there is no box, the field of view is not zoomed out, or the coarse answer is empty.
    """
    if prompt.box is None:
        return None
    prepared = prepared_volume(model, volume, prompt, prev_pred)
    patch = model.spec.patch_size
    if fit(prompt_region(prepared, prompt), patch).zoom <= 1:
        return None
    with evaluating(model):
        outcome = segment_class(model, prepared, prompt, Effort.one_pass(patch))
    if not isinstance(outcome.probability, PatchProbability):
        return None
    answer = coarse_answer(outcome.probability, volume.truth.shape)
    if answer is None:
        return None
    fov = answer.tiles[int(rng.integers(len(answer.tiles)))]
    return network_input(model, prepared, prompt, fov, previous=answer.previous(fov)), patch_target(volume.truth, fov)


def autozoom_pair(model: Model, volume: TrainingVolume, prompt: ClassPrompt, prev_pred: np.ndarray | None,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input, soft target) of a no-box prompt on one of the fields of view the container's AutoZoom
    passes through (`autozoom_views`): large objects from one click are learnt at every zoom the container
    would see them at, the target running up to the border of the zoom-1 view."""
    prepared = prepared_volume(model, volume, prompt, prev_pred)
    first = fit(prompt_region(prepared, prompt), model.spec.patch_size)
    views = autozoom_views(first, volume.truth, model.spec.max_zoom)
    fov = views[int(rng.integers(len(views)))]
    return network_input(model, prepared, prompt, fov), patch_target(volume.truth, fov)


def autozoom_views(first: FieldOfView, truth: np.ndarray, max_zoom: float) -> list[FieldOfView]:
    """`first` and the views AutoZoom zooms out to (`autozoom.auto_zoom`) if the answer were the truth:
    it zooms out while the answer reaches a face of the view, up to `max_zoom`."""
    target = label_regions(truth.view(np.uint8))[1]
    views = [first]
    while views[-1].zoom < max_zoom - 1e-6 and touches_a_face(views[-1], target):
        views.append(views[-1].zoomed_out(ZOOM_OUT_STEP, max_zoom))
    return views


def touches_a_face(fov: FieldOfView, target: Region) -> bool:
    """Does a structure spanning `target` reach a face of `fov`? (A face outside the volume never does.)"""
    return any(a <= s < b or a <= s + fov.side - 1 < b for (a, b), s in zip(target, fov.start))


@contextmanager
def evaluating(model: Model) -> Iterator[None]:
    """The network in eval mode (its hardened answers are prompts, not training passes), then as it was."""
    was_training = model.network.training
    model.network.eval()
    try:
        yield
    finally:
        model.network.train(was_training)


def patch_target(truth: np.ndarray, fov: FieldOfView) -> torch.Tensor:
    """The target's area fraction in each patch voxel."""
    where = np.nonzero(truth)
    lo = [int(w.min()) for w in where]
    hi = [int(w.max()) + 1 for w in where]
    return sample_area(truth[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], tuple(lo), fov).clamp_(0, 1)  # cumsum rounding


@dataclass
class Sample:
    """One network input with its soft target, and how it was prompted."""

    x: torch.Tensor  # (C, P, P, P)
    target: torch.Tensor  # (P, P, P)
    no_box: bool
    rounds: int
    # where drawing it went, in seconds: the feed's log shows what limits a worker-fed run
    volume_seconds: float = 0.0  # label map, augmentation and image synthesis
    passes_seconds: float = 0.0  # the prompting passes (the network's forward passes and their inputs)
    seconds: float = 0.0  # the whole sample
    tile: bool = False  # a zoom-1 tile of a zoomed-out box answer (`tile_pair`)


def corrupted_previous(volume: TrainingVolume, rng: np.random.Generator) -> np.ndarray:
    """A wrong previous segmentation of the target, as a model gets it wrong: leaked into a neighbouring
    structure, too thick, or too thin (bool mask)."""
    truth, spacing = volume.truth, volume.spacing
    kind = rng.choice(["leak", "dilate", "erode"], p=[0.5, 0.3, 0.2])
    if kind == "erode":
        eroded = edt.edt(truth, anisotropy=spacing, black_border=True) > rng.uniform(1.0, 3.0)
        if eroded.any():
            return eroded
    outside = edt.edt(~truth, anisotropy=spacing, black_border=False)  # mm to the target
    if kind == "leak" and volume.labels is not None:
        touching = np.unique(volume.labels[(outside > 0) & (outside <= 2.0)])
        if len(touching):
            chosen = rng.choice(touching, size=min(len(touching), int(rng.integers(1, 3))), replace=False)
            reach = rng.uniform(3.0, 40.0)  # how far the leak runs into its neighbours, in mm
            return truth | (np.isin(volume.labels, chosen) & (outside <= reach))
    return outside <= rng.uniform(1.0, 6.0)


def prompted_sample(model: Model, volume: TrainingVolume, rng: np.random.Generator, prompting: dict) -> Sample:
    """Dynamic prompt generation: clicks sampled from the model's own errors, as the evaluator places them.

    A share of samples (`p_corrupt_prev`) instead starts from a corrupted previous segmentation and the
    click that fixes its largest error: the corrections a model's own early errors rarely teach
    (pulling a leak back with a background click)."""
    no_box = bool(rng.random() < prompting["p_no_box"])
    prompt = first_prompt(volume, rng, with_box=not no_box)
    prev, rounds, passes_seconds = None, 0, 0.0
    # no draw when the share is absent or 0: the runs recorded before it keep their random streams
    if prompting.get("p_corrupt_prev", 0) > 0 and rng.random() < prompting["p_corrupt_prev"]:
        wrong = corrupted_previous(volume, rng)
        prev = np.where(wrong, LABEL, 0).astype(np.uint8)
        click = simulate_click(wrong, volume.truth)
        if click is not None:
            prompt, rounds = add_click(prompt, click), 1
    elif rng.random() >= prompting["p_single_pass"]:
        weights = np.asarray(prompting["click_round_weights"], dtype=np.float64)
        wanted = int(rng.choice(prompting["click_rounds"], p=weights / weights.sum()))
        with evaluating(model):
            for _ in range(wanted):
                t0 = time.perf_counter()
                prepared = prepared_volume(model, volume, prompt, prev)
                # one pass per round (no AutoZoom): the hardened prediction is only a prompt here
                outcome = segment_class(model, prepared, prompt, Effort(model.spec.patch_size, max_passes=1))
                passes_seconds += time.perf_counter() - t0
                classes = [outcome.probability] if outcome.probability is not None else []
                prev = apply_clicks(fuse_classes(volume.truth.shape, classes), [prompt])
                click = simulate_click(prev == LABEL, volume.truth)
                if click is None:
                    break
                prompt = add_click(prompt, click)
                rounds += 1
    # no draw when the share is absent or 0, as above
    pair = None
    if prompting.get("p_tile", 0) > 0 and rng.random() < prompting["p_tile"]:
        t0 = time.perf_counter()
        pair = tile_pair(model, volume, prompt, prev, rng)
        passes_seconds += time.perf_counter() - t0
    tile = pair is not None
    # no draw when the share is absent or 0, as above
    if (pair is None and prompt.box is None and prompting.get("p_autozoom", 0) > 0
            and rng.random() < prompting["p_autozoom"]):
        pair = autozoom_pair(model, volume, prompt, prev, rng)
    x, target = pair if pair is not None else training_pair(model, volume, prompt, prev)
    return Sample(x, target, no_box, rounds, passes_seconds=passes_seconds, tile=tile)


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The random stream of one sample: the same (seed, step, index) draws the same volume and prompts."""
    return np.random.default_rng([seed, step, index])


def draw_samples(model: Model, sources: LabelSources, recipe: Recipe, prompting: dict,
                 seed: int, step: int, first: int, count: int = 1) -> list[Sample]:
    """Samples `first` .. `first + count - 1` of training step `step`: one fresh volume, and as
    many of its structures as targets, each prompted against `model`'s own errors."""
    t0 = time.perf_counter()
    rng = sample_rng(seed, step, first)
    volume = draw_volume(rng, sources, recipe, model.spec.patch_size, model.spec.max_zoom)
    volume_seconds = time.perf_counter() - t0
    samples = []
    for k in range(count):
        t1 = time.perf_counter()
        volume = other_target(volume, rng) if k else volume
        sample = prompted_sample(model, volume, rng, prompting)
        shared = volume_seconds if k == 0 else 0.0  # the volume's cost is counted once, on its first sample
        samples.append(replace(sample, volume_seconds=shared, seconds=shared + time.perf_counter() - t1))
    return samples


def volume_groups(size: int, per_volume: int) -> list[tuple[int, int]]:
    """A batch of `size` samples as (first sample, count) per volume drawn."""
    return [(first, min(per_volume, size - first)) for first in range(0, size, per_volume)]
