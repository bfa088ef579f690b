"""The segfm pipeline's settings in `model.json`: logit offsets per prompt setting, boundary refinement, tiles."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .boundary import BoundaryRefinement

# the case has boxes / a box bigger than the patch, seen zoomed out (without its own offset it takes the "box" one) /
# it has clicks only (the challenge's --no-box) / the lone first click of a no-box case, whose extent is the least
# known (without its own offset it takes the "clicks" one)
PROMPT_SETTINGS = ("box", "zoomed_box", "clicks", "first_click")
BOX_SETTINGS = ("box", "zoomed_box")  # the settings of cases that have boxes


@dataclass(frozen=True)
class SegFMSettings:
    autocast: ClassVar[str] = "bfloat16"  # CUDA autocast: bf16 has float32's range

    # logits added to the network's foreground logit per prompt setting: the weights' calibration, chosen on
    # tuning cases by training/calibrate.py
    logit_offset: dict[str, float] = field(default_factory=dict)
    boundary: BoundaryRefinement | None = None  # sharpen zoomed-out answers (boundary.py)
    # a box answer seen zoomed out is predicted again in zoom-1 tiles (tiles.py); only for weights trained on
    # such tiles (training prompting "p_tile"): others lost DSC with it (docs/shipped_model.md)
    full_resolution_tiles: bool = False

    @classmethod
    def from_spec(cls, raw: dict, spec_file: str) -> "SegFMSettings":
        """Parse and check the pipeline's keys of a model spec; ValueError names the bad one."""
        offsets = raw.get("logit_offset", {})
        if not isinstance(offsets, dict) or set(offsets) - set(PROMPT_SETTINGS) \
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in offsets.values()):
            raise ValueError(f"{spec_file}: logit_offset maps {PROMPT_SETTINGS} to finite numbers, got {offsets!r}")
        boundary = raw.get("boundary_refinement")
        if boundary is not None and not isinstance(boundary, dict):
            raise ValueError(f"{spec_file}: boundary_refinement must be an object or null, got {boundary!r}")
        try:
            boundary = BoundaryRefinement(**boundary) if boundary is not None else None
        except TypeError as exc:
            raise ValueError(f"{spec_file}: boundary_refinement: {exc}") from None
        tiled = raw.get("full_resolution_tiles", False)
        if not isinstance(tiled, bool):
            raise ValueError(f"{spec_file}: full_resolution_tiles must be true or false, got {tiled!r}")
        return cls({k: float(v) for k, v in offsets.items()}, boundary, tiled)

    def offset(self, has_box: bool, interactions: int = 0, zoomed: bool = False) -> float:
        """The logit offset for a class prompted with (or without) a box and `interactions` clicks so far,
        on a field of view that is `zoomed` out or not."""
        if has_box:
            box = self.logit_offset.get("box", 0.0)
            return self.logit_offset.get("zoomed_box", box) if zoomed else box
        clicks = self.logit_offset.get("clicks", 0.0)
        return self.logit_offset.get("first_click", clicks) if interactions == 1 else clicks
