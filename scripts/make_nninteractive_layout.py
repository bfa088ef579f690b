"""Write a folder in the official nnInteractive v1.0 layout with randomly initialised weights.

    python scripts/make_nninteractive_layout.py DIR [--seed 0] [--patch 64]

Same files as the download (plans.json with ResEnc-L `3d_fullres_ps192_bs24`, dataset.json,
inference_session_class.json, fold_0/checkpoint_final.pth as an nnU-Net checkpoint, ~410 MB), so
the loader, the container and the benchmarks can be tried without the CC BY-NC-SA weights.
`--patch P` adds a configuration `3d_fullres_psP` (the same network) and names it in the checkpoint,
so that both our loader and the nninteractive package's session run ResEnc-L at P^3 (CPU benchmarks).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inference.model import resenc_architecture  # noqa: E402
from inference.nninteractive_layout import (  # noqa: E402
    DEFAULT_CONFIGURATION,
    RESENC_L_BLOCKS,
    RESENC_L_FEATURES,
    official_plans,
    write_layout,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, default=None, help="a smaller patch than v1.0's 192, e.g. 64 on a CPU")
    args = parser.parse_args()
    configuration, extra = DEFAULT_CONFIGURATION, None
    if args.patch:
        configuration = f"3d_fullres_ps{args.patch}"
        extra = {configuration: {"inherits_from": "3d_fullres", "patch_size": [args.patch] * 3}}
    plans = official_plans(resenc_architecture(RESENC_L_FEATURES, RESENC_L_BLOCKS), extra)
    network = write_layout(args.folder, plans, configuration, args.seed)
    print(f"wrote {args.folder}: {sum(p.numel() for p in network.parameters()):,} parameters (random)")


if __name__ == "__main__":
    main()
