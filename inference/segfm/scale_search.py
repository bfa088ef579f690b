"""Scale search for a class without a box: does the object go on beyond the view, and does a wider answer fit the click?

After one click the network's confident answer is a blob of a few percent of the patch whatever the
object's size, so it never reaches a face of the patch and AutoZoom's border rule never fires. Its
uncertain answer does: on an object larger than the view the foreground logit stays just under 0 over
much of it (a plateau the first-click offset cuts away), while around a small object with visible borders it
falls steeply. So the search reads the plateau (logit > -`plateau_offset`): where it covers more than
`min_face_cover` of a face of the patch, the object goes on there and the next view is 1.5x wider.

The plateau cannot tell a brain parcel whose borders the image does not show from the whole brain: on
both it covers the faces. The simulated user clicks the deepest voxel of the object, so a wider answer
that is the object holds the click deep inside; one that spread over the parcel's neighbours holds it off
centre. A widened answer is kept only if the newest positive click lies at least `min_click_depth` of the
answer's largest depth inside it; else the zoom-1 answer stands. A kept one is taken with the
`zoomed_click` logit offset (segfm/settings.py): there the plateau is the object.

Thresholds chosen on the tuning targets of `scripts/make_size_strata.py` (docs/scale_search.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import edt
import numpy as np
import torch


@dataclass(frozen=True)
class ScaleSearch:
    """`model.json`'s "scale_search": when a class without a box is looked at wider, and when the wider answer stands."""

    plateau_offset: float = 1.0  # logits above -plateau_offset are the network's "maybe"
    min_face_cover: float = 0.25  # share of one patch face the plateau must cover to look wider
    min_click_depth: float = 0.6  # of the widened answer's largest depth, at the newest positive click
    every_round: bool = True  # False: only for the lone first click of a case

    def __post_init__(self):
        if not (0 < self.min_face_cover <= 1 and 0 <= self.min_click_depth <= 1):
            raise ValueError(f"scale_search: needs 0 < min_face_cover <= 1 and 0 <= min_click_depth <= 1, got {self}")

    def applies(self, interactions: int) -> bool:
        """Whether a class without a box, `interactions` clicks into the case, is searched."""
        return self.every_round or interactions == 1

    def goes_on(self, probs: torch.Tensor, offset: float) -> bool:
        """Does the plateau cover enough of a face of the patch? `probs` (P, P, P) are the network's foreground
        probabilities with `offset` added to its logit: the plateau, logit > -plateau_offset, is where they
        exceed sigmoid(offset - plateau_offset)."""
        return face_cover(probs > 1 / (1 + math.exp(self.plateau_offset - offset))) > self.min_face_cover

    def holds_click(self, answer: torch.Tensor, click: np.ndarray) -> bool:
        """Does a widened answer (P, P, P mask) hold the click (continuous patch coordinates) deep enough?"""
        return click_depth(answer, click) >= self.min_click_depth


def face_cover(mask: torch.Tensor) -> float:
    """The largest share of one of the six faces of a 3D mask that the mask covers."""
    return max(float(mask.select(axis, index).float().mean()) for axis in range(3) for index in (0, mask.shape[axis] - 1))


def click_depth(mask: torch.Tensor, click: np.ndarray) -> float:
    """How deep the voxel nearest `click` lies in the mask: its distance to the background over the largest (0 outside)."""
    depth = edt.edt(np.pad(mask.numpy(), 1).astype(np.uint8), parallel=1)[1:-1, 1:-1, 1:-1]
    deepest = float(depth.max())
    voxel = tuple(np.clip(np.rint(click).astype(int), 0, np.asarray(mask.shape) - 1))
    return float(depth[voxel]) / deepest if deepest > 0 else 0.0
