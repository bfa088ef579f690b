"""AutoZoom, for both pipelines: while the object goes on beyond the patch, look again 1.5x wider (up to
the model's max zoom, within the class's effort).

Each pipeline says when the object goes on. nnInteractive's session: the answer changed on a face of the
patch, with absolute voxel counts on a 192^2 face (`SESSION_BORDER`); the segfm pipeline scales the same
counts to its own patch face and compares the change with the previous mask instead (`SEGFM_BORDER`), and
without a box also reads the network's uncertain answer on the faces (segfm/scale_search.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch

from .class_task import Effort

ZOOM_OUT_STEP = 1.5
SESSION_FACE = 192 ** 2  # the session's patch face, where its thresholds were set


@dataclass(frozen=True)
class BorderRule:
    """When a face of the patch counts as changed: more than `absolute` voxels differ, or more than `minimum`
    with a relative change above `relative`. Counts are voxels of a 192^2 face; `per_face_area` scales them
    to the patch's own face. `relative_to_previous`: the change over the previous mask's voxels on the face
    (segfm); else the larger over the smaller of the face's before and after counts, minus 1 (the session)."""

    absolute: float = 1500
    minimum: float = 100
    relative: float = 0.2
    per_face_area: bool = False
    relative_to_previous: bool = False

    def changed(self, pred: torch.Tensor, prev: torch.Tensor) -> bool:
        """Did the prediction change on one of the six faces of the patch (so the object goes on)?"""
        absolute, minimum = self.absolute, self.minimum
        if self.per_face_area:  # as (count / 192^2) * face: the rounding the recorded figures were measured with
            face = pred.shape[0] * pred.shape[1]
            absolute, minimum = absolute / SESSION_FACE * face, minimum / SESSION_FACE * face
        for axis in range(3):
            for index in (0, pred.shape[axis] - 1):
                old, new = prev.select(axis, index), pred.select(axis, index)
                changed = int((new != old).sum())
                if changed > absolute:
                    return True
                if changed > minimum and self._relative_change_above(changed, old, new):
                    return True
        return False

    def goes_on(self, look: "Look") -> bool:
        """The border rule on one look: its foreground against the previous mask."""
        return self.changed(look.foreground, look.previous)

    def _relative_change_above(self, changed: int, old: torch.Tensor, new: torch.Tensor) -> bool:
        if self.relative_to_previous:
            return changed > self.relative * int(old.sum())
        before, after = float(old.float().sum()), float(new.float().sum())
        return max(before, after) / max(min(before, after), 1e-5) - 1 > self.relative


SESSION_BORDER = BorderRule()
SEGFM_BORDER = BorderRule(per_face_area=True, relative_to_previous=True)


class View(Protocol):
    @property
    def zoom(self) -> float: ...


V = TypeVar("V", bound=View)
A = TypeVar("A")


@dataclass
class Look(Generic[V, A]):
    """One forward pass on a view: the pipeline's `answer`, its foreground and the previous mask on the patch grid."""

    view: V
    answer: A
    foreground: torch.Tensor
    previous: torch.Tensor


@dataclass
class Zoomed(Generic[V, A]):
    first: Look[V, A]
    last: Look[V, A]
    passes: int
    pass_seconds: float  # what the first pass took: the price of each further one


def auto_zoom(view: V, look: Callable[[V], Look[V, A]], widen: Callable[[V], V], goes_on: Callable[[Look[V, A]], bool],
              max_zoom: float, effort: Effort, zoom: bool = True) -> Zoomed[V, A]:
    """Look at `view`, then (when `zoom`) at ever wider views while `goes_on` sees the object go on past the patch,
    the zoom stays under `max_zoom`, passes remain and another pass still ends before `effort.stop_zooming_at`."""
    t0 = time.monotonic()
    first = last = look(view)
    passes, pass_seconds = 1, time.monotonic() - t0
    while (zoom and last.view.zoom < max_zoom and passes < effort.max_passes
           and time.monotonic() + pass_seconds < effort.stop_zooming_at
           and goes_on(last)):
        last = look(widen(last.view))
        passes += 1
    return Zoomed(first, last, passes, pass_seconds)
