"""Write a randomly initialised model folder (the placeholder default until trained weights land).

    python scripts/make_random_model.py model_weights/default [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inference.model import create_random_model, resenc_architecture  # noqa: E402

# 2.4 M parameters; one forward at 128^3 takes ~1.7 s on 2 CPU cores.
FEATURES = [8, 16, 32, 64, 128]
BLOCKS = [1, 1, 2, 2, 2]


def default_spec() -> dict:
    return {
        "name": "segfm-resenc-tiny (random init)",
        "architecture": resenc_architecture(FEATURES, BLOCKS),
        "channels": ["image", "box", "fg_clicks", "bg_clicks", "prev_seg"],
        "patch_size": 128,
        "normalisation": "zscore_nonzero_bbox",
        "prompts": {"box": "slab", "points": "binary", "point_radius": 4},
        "output": "sigmoid",
        "weights": "weights.pt",
        "max_zoom": 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    network = create_random_model(args.folder, default_spec(), args.seed)
    print(f"wrote {args.folder}: {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
