"""nnInteractive's inference session, reproduced for its public weights: the folder layout (layout.py), the
network input around the newest prompt (view.py), refinement after a zoomed-out pass (refine.py, filters.py),
and one class end to end (segment.py)."""
