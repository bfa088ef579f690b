"""What a model folder can answer, in the terms of nnInteractive's `/capabilities` (the client copies them
into its session's attributes), derived from the channels the model's network is fed.

No model here has a scribble channel (nnInteractive's network has one, but our reproduction of its session
feeds only the box and click channels), none a negative box: scribbles and negative boxes or lassos are
refused with 422. A lasso is given as the box around it. `approximations` says, per interaction, how an
interaction is turned into what the model takes.
"""
from __future__ import annotations

from ..model import ModelSpec

PROTOCOL_VERSION = "2.6.0"  # the nninteractive-client release whose protocol this server speaks
UNKNOWN_LICENSE = "!!MISSING!!"  # nnInteractive's word for a model whose licence is not known


def capabilities(spec: ModelSpec, trained_box: str, autozoom: bool, undo: bool) -> dict:
    """The `/capabilities` answer; `trained_box` is the box encoding the weights were trained with."""
    interaction = [c for c in spec.channels if c != "image"]
    has = set(interaction)
    boxes, points = "box" in has, {"fg_clicks", "bg_clicks"} <= has
    mapping = {}
    if "prev_seg" in has:
        mapping["prev_seg"] = interaction.index("prev_seg")
    if boxes:
        for name in ("bbox2d", "bbox3d", "lasso"):
            mapping[name] = [interaction.index("box"), None]  # positive only: no negative-box channel
    if points:
        mapping["points"] = [interaction.index("fg_clicks"), interaction.index("bg_clicks")]
    return {
        "supported_interactions": {"points": points, "bbox2d": boxes, "bbox3d": boxes, "lasso": boxes,
                                   "scribble": False},
        "channel_mapping": mapping,
        "num_interaction_channels": len(interaction),
        "supports_initial_label": "prev_seg" in has,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": [2, 2, 2],
        "interaction_decay": getattr(spec.settings, "interaction_decay", None),
        "patch_size": [spec.patch_size] * 3,
        "do_autozoom": autozoom,
        "inference_session_version": PROTOCOL_VERSION,
        "license": spec.license or UNKNOWN_LICENSE,
        "supports_undo": undo,
        "server": "segfm",
        "model": spec.folder.name,
        "pipeline": spec.pipeline,
        "approximations": approximations(trained_box, boxes, points),
    }


def approximations(trained_box: str, boxes: bool, points: bool) -> dict:
    """How each interaction reaches the model (or why it does not)."""
    notes = {"scribble": "refused (422): no scribble channel is fed",
             "initial_seg": "becomes the previous mask; the prompt starts again"}
    if boxes and trained_box == "slab":
        notes["bbox2d"] = ("trained on 3D boxes: a 2D box is made as deep (in mm, from image_properties spacing) as "
                           "its mean width, centred on its slice")
        notes["bbox3d"] = "as given"
    elif boxes:
        notes["bbox2d"] = "as given"
        notes["bbox3d"] = "trained on 2D boxes: a 3D box is drawn whole, as the challenge baseline fed it"
    if boxes:
        notes["lasso"] = "the box around the lasso, then as a box"
        notes["negative boxes and lassos"] = "refused (422): no negative-box channel"
        notes["boxes"] = "one box per object: a new box replaces the previous one"
    if points:
        notes["points"] = "as given"
    return notes
