"""Write a randomly initialised model folder with the default model's architecture (training/config.json).

    python -m scripts.make_random_model DIR [--seed 0] [--config training/config.json]

Useful for timing and pipeline tests; the shipped `model_weights/default/` holds trained weights.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from inference.model import create_random_model
from training.train import DEFAULT_CONFIG, model_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    args = parser.parse_args()
    spec = model_spec(json.loads(args.config.read_text())) | {"name": "random init"}
    network = create_random_model(args.folder, spec, args.seed)
    print(f"wrote {args.folder}: {sum(p.numel() for p in network.parameters()) / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
