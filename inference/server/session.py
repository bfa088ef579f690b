"""One client's session: its image, the object being segmented (a `ClassPrompt` and its mask, the client's
target buffer mirrored), and the one step undo can take back.

One object at a time: every interaction adds to the object's prompt, and a prediction answers the whole
prompt over the current mask as the previous mask, by the model folder's pipeline (the batch predictor's
answer for a one-class case with that prompt and previous prediction). The answer goes back as the block
of the mask that changed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..case_io import ClassPrompt
from ..class_task import Effort
from ..geometry import Region, nonzero_block, slices
from ..model import Model
from ..segmenter import Segmenter
from . import inputs
from .wire import ClientError

LABEL = 1  # the object's label in the pipelines' terms


@dataclass(frozen=True)
class Rules:
    """What the server decided for every session."""

    autozoom: bool = True
    undo: bool = True
    extend_2d_boxes: bool = True  # the model was trained on 3D boxes: a 2D box is made 3D (inputs.prompt_box)


@dataclass(frozen=True)
class Block:
    """A block of the mask: where it lies and what it holds."""

    region: Region
    content: np.ndarray


@dataclass(frozen=True)
class Change:
    """What a call did to the mask: whether a prediction (or undo) ran, and the block that changed, as it is now."""

    ran: bool
    block: Block | None = None


@dataclass
class Step:
    """What undo restores: the prompt before the last interaction and the block of the mask it overwrote."""

    prompt: ClassPrompt
    pending: bool
    overwritten: Block | None = None


@dataclass
class Session:
    model: Model
    rules: Rules
    on_worker: Callable  # runs a function on the server's one inference worker and returns its result
    segmenter: Segmenter = field(init=False)
    image_shape: tuple[int, ...] | None = None  # as uploaded: (channels, X, Y, Z)
    mask: np.ndarray | None = None  # uint8 0/1, the client's target buffer
    prompt: ClassPrompt = field(default_factory=lambda: ClassPrompt(LABEL))
    pending: bool = False  # interactions added without a prediction
    autozoom: bool = True
    last: Step | None = None

    def __post_init__(self):
        self.segmenter = Segmenter(self.model)
        self.autozoom = self.rules.autozoom

    @property
    def shape(self) -> tuple[int, int, int]:
        if self.mask is None:
            raise ClientError(409, "no image: call set_image first")
        return self.mask.shape

    # ------------------------------------------------------------------------- image and object

    def set_image(self, array: np.ndarray, properties) -> tuple[int, ...]:
        """A new image (channels, X, Y, Z): everything of the previous one goes."""
        volume = inputs.image_volume(array)
        spacing = inputs.spacing_of(properties, volume.shape)
        self.mask = self.image_shape = None  # a failure below leaves no half-set image
        self.segmenter.set_image(volume, spacing)
        self.image_shape = tuple(array.shape)
        self.mask = np.zeros(volume.shape, np.uint8)
        self._new_object()
        return self.image_shape

    def set_target_buffer(self, payload: dict) -> None:
        """The client's buffer for a new object: its shape must be the image's, its dtype bool or integer."""
        shape = payload.get("shape")
        if not isinstance(shape, list) or len(shape) != 3 or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise ClientError(400, f"shape must be a list of 3 integers, got {inputs.shown(shape)}")
        dtype = payload.get("dtype")
        try:
            kind = np.dtype(dtype).kind if isinstance(dtype, str) else None
        except (TypeError, ValueError):
            kind = None
        if kind not in ("b", "i", "u"):
            raise ClientError(400, f"dtype must name a bool or integer type, got {inputs.shown(dtype)}")
        if tuple(shape) != self.shape:
            raise ClientError(400, f"target buffer shape {shape} differs from the image's {list(self.shape)}")
        self.mask[...] = 0
        self._new_object()

    def reset(self) -> None:
        """Start the object again: no prompt, an empty mask, nothing to undo."""
        if self.mask is not None:
            self.mask[...] = 0
        self._new_object()

    def _new_object(self) -> None:
        self.prompt, self.pending, self.last = ClassPrompt(LABEL), False, None

    # ------------------------------------------------------------------------- interactions

    def add_box(self, payload: dict) -> Change:
        include, run = inputs.flag(payload, "include_interaction"), inputs.flag(payload, "run_prediction", True)
        region = inputs.box_region(payload.get("bbox_coords"), self.shape)
        self._positive_only(include, "box")
        box = inputs.prompt_box(region, self.segmenter.prepared.case.spacing, self.shape, self.rules.extend_2d_boxes)
        return self._add(replace(self.prompt, box=box), run)

    def add_point(self, payload: dict) -> Change:
        include, run = inputs.flag(payload, "include_interaction"), inputs.flag(payload, "run_prediction", True)
        point = np.array([inputs.voxel(payload.get("coordinates"), self.shape)], dtype=np.int64)
        kind = "fg" if include else "bg"
        fg, bg = (np.concatenate([self.prompt.fg, point]), self.prompt.bg) if include \
            else (self.prompt.fg, np.concatenate([self.prompt.bg, point]))
        return self._add(replace(self.prompt, fg=fg, bg=bg, order=(*self.prompt.order, kind)), run)

    def add_lasso(self, meta: dict, mask: np.ndarray) -> Change:
        """A lasso is given to the model as the box around it (no model here has a lasso channel)."""
        include, run = inputs.flag(meta, "include_interaction"), inputs.flag(meta, "run_prediction", True)
        inside, start = inputs.placed_mask(mask, meta.get("interaction_bbox"), self.shape, "lasso")
        self._positive_only(include, "lasso")
        region = inputs.mask_region(inside, start, "lasso")
        if sum(hi - lo == 1 for lo, hi in region) > 1:
            raise ClientError(400, f"lasso spans {region}: it needs an extent along at least two axes")
        box = inputs.prompt_box(region, self.segmenter.prepared.case.spacing, self.shape, self.rules.extend_2d_boxes)
        return self._add(replace(self.prompt, box=box), run)

    def add_initial_seg(self, meta: dict, seg: np.ndarray) -> Change:
        """The client's segmentation becomes the mask, the prompt starts again (as the session does)."""
        run = inputs.flag(meta, "run_prediction", False)
        inside, _ = inputs.placed_mask(seg, None, self.shape, "initial segmentation")
        self._remember(self.prompt, self.pending)
        if self.last is not None:
            self.last.overwritten = Block([[0, n] for n in self.shape], self.mask.copy())
        self.mask[...] = inside
        self.prompt, self.pending = ClassPrompt(LABEL), run
        return self._answer(replace_last=False) if run else Change(False)

    def _positive_only(self, include: bool, what: str) -> None:
        if not include:
            raise ClientError(422, f"a negative {what} cannot be given to this model (no negative-box channel): "
                                   "use negative points")

    def _add(self, prompt: ClassPrompt, run: bool) -> Change:
        self._remember(self.prompt, self.pending)
        self.prompt, self.pending = prompt, True
        return self._answer() if run else Change(False)

    def _remember(self, prompt: ClassPrompt, pending: bool) -> None:
        self.last = Step(prompt, pending) if self.rules.undo else None

    # ------------------------------------------------------------------------- answers

    def predict(self) -> Change:
        """Answer the prompt so far (after interactions added without a prediction); nothing when none is pending."""
        self.shape  # noqa: B018 -- 409 without an image
        return self._answer() if self.pending else Change(False)

    def undo(self) -> Change:
        """Take the last interaction back: its prompt and the block of the mask it changed."""
        self.shape  # noqa: B018 -- 409 without an image
        step, self.last = self.last, None
        if step is None:
            return Change(False)
        self.prompt, self.pending = step.prompt, step.pending
        if step.overwritten is None:
            return Change(True)
        region = step.overwritten.region
        self.mask[slices(region)] = step.overwritten.content
        return Change(True, Block(region, self.mask[slices(region)].copy()))

    def _answer(self, replace_last: bool = True) -> Change:
        """Run the pipeline on the worker; the block that changed goes into the mask (its old content into undo)."""
        effort = Effort(self.model.spec.patch_size, max_passes=5 if self.autozoom else 1)
        prompt, previous = self.prompt, self.mask
        new = self.on_worker(lambda: self.segmenter.mask(prompt, previous=previous, effort=effort))
        self.pending = False
        block = nonzero_block(new != self.mask)
        if block is None:
            return Change(True)
        region = [[s.start, s.stop] for s in block]
        if self.last is not None and replace_last:
            self.last.overwritten = Block(region, self.mask[block].copy())
        self.mask[block] = new[block]
        return Change(True, Block(region, self.mask[block].copy()))
