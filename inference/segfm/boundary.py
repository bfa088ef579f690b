"""Boundary refinement: a zoomed-out answer sharpened at full resolution by the image's own intensities.

At zoom z a patch voxel spans z voxels, so the network can only place a boundary to within
about z voxels (at zoom 2 that is the challenge's 2 mm NSD tolerance). Near the upsampled
boundary the class's intensities are compared with its surroundings': voxels within `band`
patch voxels of the boundary get the log-likelihood ratio of their intensity (from histograms
of the shells just inside and just outside) added to the network's logit. Where intensities do
not tell the class from its surroundings the two histograms agree and nothing moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import edt
import numpy as np
import torch

from ..field_of_view import upsample_region
from ..fusion import BlockProbability, PatchProbability
from ..geometry import slices, start_of

P_MIN = 1e-4  # logits stay finite: the network's float16 probabilities reach 0 and (almost) 1
MIN_SHELL_VOXELS = 50
PERCENTILE_SAMPLES = 1 << 17  # the intensity range from every k-th shell voxel: sorting millions costs seconds


@dataclass(frozen=True)
class BoundaryRefinement:
    """`model.json`'s "boundary_refinement": when and how strongly intensities move a boundary."""

    min_zoom: float = 1.5  # below it the network's own boundary is fine enough
    # With a box, from this zoom on (None: `min_zoom`). Without one, refining zoom-1 answers grew
    # them into neighbours of the same intensity on the real CAT12 template (docs/shipped_model.md).
    min_zoom_with_box: float | None = None
    weight: float = 1.0  # scales the intensity log-likelihood ratio
    clip: float = 4.0  # the ratio's limit, in logits (after `weight`)
    band: float = 1.5  # voxels this many patch voxels from the boundary may change
    shell: float = 3.0  # intensities are learnt from voxels band..shell patch voxels inside and outside
    bins: int = 32

    def __post_init__(self):
        if not (self.min_zoom >= 1 and self.box_min_zoom >= 1 and self.weight > 0 and self.clip > 0
                and 0 < self.band < self.shell and self.bins >= 2):
            raise ValueError("boundary_refinement: needs min_zoom and min_zoom_with_box >= 1, weight > 0, clip > 0, "
                             f"0 < band < shell and bins >= 2, got {self}")

    @property
    def box_min_zoom(self) -> float:
        return self.min_zoom if self.min_zoom_with_box is None else self.min_zoom_with_box

    def applies(self, zoom: float, with_box: bool) -> bool:
        """Whether an answer seen at `zoom` (with or without a box prompt) is refined."""
        return zoom >= (self.box_min_zoom if with_box else self.min_zoom)


def refine_boundary(answer: PatchProbability, image: np.ndarray, settings: BoundaryRefinement, *,
                    with_box: bool = False) -> PatchProbability | BlockProbability:
    """The answer's probability at full resolution with the boundary moved by intensities (or the answer unchanged)."""
    region = answer.region(image.shape)
    if region is None or not settings.applies(answer.fov.zoom, with_box):
        return answer
    p = answer.values(region).clamp_(P_MIN, 1 - P_MIN).numpy()
    distance = upsample_region(patch_distance(answer.probs.float().numpy() > 0.5), answer.fov, region).numpy()
    crop = image[slices(region)]
    far = np.abs(distance)  # from the boundary, in patch voxels
    near = far <= settings.shell
    fg = crop[near & (distance > settings.band)]
    bg = crop[near & (distance < -settings.band)]
    if len(fg) < MIN_SHELL_VOXELS or len(bg) < MIN_SHELL_VOXELS:
        return answer
    ratio = intensity_log_ratio(fg, bg, settings)
    if ratio is None:
        return answer
    edges, log_ratio = ratio
    band = far <= settings.band
    bins = np.clip(np.searchsorted(edges, crop[band], side="right") - 1, 0, settings.bins - 1)
    q = p[band]
    p[band] = 1 / (1 + np.exp(np.log1p(-q) - np.log(q) - log_ratio[bins]))
    return BlockProbability.from_values(answer.label, start_of(region), torch.from_numpy(p))


def patch_distance(inside: np.ndarray) -> torch.Tensor:
    """Signed distance to the mask's boundary in patch voxels (positive inside), computed on the patch grid:
    upsampled, it stands for the full-resolution distance at a fraction of the cost."""
    distance = edt.sdf(inside, parallel=2)
    return torch.from_numpy(distance - np.sign(distance) * 0.5)  # boundary voxels lie half a voxel from it


def intensity_log_ratio(fg: np.ndarray, bg: np.ndarray, settings: BoundaryRefinement):
    """Histogram bin edges and log p(I | class) - log p(I | surroundings) per bin (weighted, clipped)."""
    both = np.concatenate([fg, bg])
    lo, hi = np.percentile(both[::max(1, len(both) // PERCENTILE_SAMPLES)].astype(np.float32), [0.5, 99.5])
    if not hi > lo:
        return None  # a flat image says nothing
    edges = np.linspace(lo, hi, settings.bins + 1)
    counts = [np.histogram(np.clip(v, lo, hi), edges)[0] + 1.0 for v in (fg, bg)]  # +1: unseen bins stay finite
    log_ratio = np.log(counts[0] / counts[0].sum()) - np.log(counts[1] / counts[1].sum())
    return edges, np.clip(settings.weight * log_ratio, -settings.clip, settings.clip).astype(np.float32)
