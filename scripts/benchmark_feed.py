"""What one training sample costs a feed worker, for several structures drawn per synthesised volume.

    python -m scripts.benchmark_feed [--config training/records/small-gpu-v3/config.json] [--volumes 12]
                                     [--per-volume 1 2 4] [--network]

One thread, as a feed worker runs. The settings are interleaved volume by volume, so that a noisy machine
slows them alike; the same seeds are used for every setting. Without `--network` the prompting passes use a
cheap stand-in for the network (on the GPU machine a pass costs milliseconds; on this CPU it would dominate).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from inference.pipelines import load_model
from training.label_maps import LabelSources
from training.samples import Recipe, draw_samples

REPO = Path(__file__).resolve().parent.parent


def stand_in_logit(x: torch.Tensor) -> torch.Tensor:
    """A plausible foreground logit from the box and previous-segmentation channels, at no cost."""
    return (x[-1] - 0.5) * 4 + (x[1] - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "training/records/small-gpu-v3/config.json"))
    parser.add_argument("--model", default=str(REPO / "model_weights/default"))
    parser.add_argument("--volumes", type=int, default=12, help="volumes per setting")
    parser.add_argument("--per-volume", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--network", action="store_true", help="run the real network in the prompting passes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    config = json.loads(Path(args.config).read_text())
    model = load_model(args.model, torch.device("cpu"), backend="torch")
    if not args.network:
        model.foreground_logit = stand_in_logit
    sources = LabelSources.load()
    totals = {k: {"samples": 0, "seconds": 0.0, "volume": 0.0, "passes": 0.0} for k in args.per_volume}
    for v in range(args.volumes):
        for k in args.per_volume:
            recipe = Recipe.from_config(dict(config["data"], targets_per_volume=k))
            t0 = time.perf_counter()
            group = draw_samples(model, sources, recipe, config["prompting"], 12345, v, 0, k)
            total = totals[k]
            total["seconds"] += time.perf_counter() - t0
            total["samples"] += len(group)
            total["volume"] += sum(s.volume_seconds for s in group)
            total["passes"] += sum(s.passes_seconds for s in group)
    base = totals[args.per_volume[0]]
    base_rate = base["samples"] / base["seconds"]
    print(f"{args.volumes} volumes per setting, one thread, network {'real' if args.network else 'stand-in'}")
    print("| structures per volume | samples | s per sample | of it synthesis | of it prompting passes | samples/s | vs first |")
    print("|---|---|---|---|---|---|---|")
    for k, total in totals.items():
        n = total["samples"]
        rate = n / total["seconds"]
        print(f"| {k} | {n} | {total['seconds'] / n:.3f} | {total['volume'] / n:.3f} | {total['passes'] / n:.3f} "
              f"| {rate:.2f} | {rate / base_rate:.2f}x |")


if __name__ == "__main__":
    main()
