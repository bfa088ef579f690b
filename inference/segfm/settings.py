"""The segfm pipeline's settings in `model.json`: logit offsets per prompt setting, boundary refinement, tiles,
the scale search without a box."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .boundary import BoundaryRefinement
from .scale_search import ScaleSearch

# the case has boxes / a box bigger than the patch, seen zoomed out (without its own offset it takes the "box" one) /
# it has clicks only (the challenge's --no-box) / the lone first click of a no-box case, whose extent is the least
# known (without its own offset it takes the "clicks" one) / a click answer on a view the scale search widened
# (without its own offset it takes the one the call would have had)
PROMPT_SETTINGS = ("box", "zoomed_box", "clicks", "first_click", "zoomed_click")
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
    scale_search: ScaleSearch | None = None  # without a box, look wider while the object goes on (scale_search.py)
    # without a box, a negative click is answered on the zoom-1 view around it (segment.remove_around_click)
    local_negative_click: bool = False

    @classmethod
    def from_spec(cls, raw: dict, spec_file: str) -> "SegFMSettings":
        """Parse and check the pipeline's keys of a model spec; ValueError names the bad one."""
        offsets = raw.get("logit_offset", {})
        if not isinstance(offsets, dict) or set(offsets) - set(PROMPT_SETTINGS) \
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in offsets.values()):
            raise ValueError(f"{spec_file}: logit_offset maps {PROMPT_SETTINGS} to finite numbers, got {offsets!r}")
        return cls({k: float(v) for k, v in offsets.items()},
                   _block(raw, "boundary_refinement", BoundaryRefinement, spec_file),
                   _switch(raw, "full_resolution_tiles", spec_file),
                   _block(raw, "scale_search", ScaleSearch, spec_file),
                   _switch(raw, "local_negative_click", spec_file))

    def offset(self, has_box: bool, interactions: int = 0, zoomed: bool = False) -> float:
        """The logit offset for a class prompted with (or without) a box and `interactions` clicks so far, seen
        `zoomed` out because it is bigger than the patch (a box that does not fit it, a view the scale search widened)."""
        if has_box:
            box = self.logit_offset.get("box", 0.0)
            return self.logit_offset.get("zoomed_box", box) if zoomed else box
        clicks = self.logit_offset.get("clicks", 0.0)
        clicks = self.logit_offset.get("first_click", clicks) if interactions == 1 else clicks
        return self.logit_offset.get("zoomed_click", clicks) if zoomed else clicks


def _switch(raw: dict, key: str, spec_file: str) -> bool:
    """An optional true/false of the spec (false when absent); ValueError for anything else."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{spec_file}: {key} must be true or false, got {value!r}")
    return value


def _block(raw: dict, key: str, kind: type, spec_file: str):
    """An optional object of the spec as a `kind` (None when absent or null); ValueError names a bad one."""
    block = raw.get(key)
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ValueError(f"{spec_file}: {key} must be an object or null, got {block!r}")
    try:
        return kind(**block)
    except TypeError as exc:  # an unknown key
        raise ValueError(f"{spec_file}: {key}: {exc}") from None
    except ValueError as exc:  # the class's own check names the key
        raise ValueError(f"{spec_file}: {exc}") from None
