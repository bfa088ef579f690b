"""Candidate model sizes side by side: forward pass (inference) and training step time on this machine.

    .venv/bin/python -m scripts.benchmark_model_sizes [--patches 64 96 128] [--repeats 3]

Prints one row per (network, patch): parameters, median seconds per forward pass (batch 1, the
container's case) and per training step (batch 2, forward + backward). All candidates run in one
process, interleaved, so their ratios hold even on a noisy machine. The default model must keep a
1-class case's 6 calls under 45 s on the 2-core CI machine: ~2 s process start per call plus
one pass per call with a box (up to 5 AutoZoom passes without one).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from inference.model import create_random_model
from training.train import DEFAULT_CONFIG, model_spec

CANDIDATES = {
    "tiny 8..128, blocks 1,1,2,2,2": ([8, 16, 32, 64, 128], [1, 1, 2, 2, 2]),
    "small 16..192, blocks 1,2,2,2,2,2": ([16, 32, 64, 128, 192, 192], [1, 2, 2, 2, 2, 2]),
}


def network(features, blocks) -> torch.nn.Module:
    """The default model's configuration (training/config.json) with another width and depth."""
    config = json.loads(DEFAULT_CONFIG.read_text())
    config["model"].update(features=features, blocks=blocks)
    with tempfile.TemporaryDirectory() as tmp:
        return create_random_model(tmp, model_spec(config))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    nets = {name: network(*cfg) for name, cfg in CANDIDATES.items()}
    results = {(name, p): ([], []) for name in nets for p in args.patches}
    for _ in range(args.repeats):
        for (name, patch), (fwd, step) in results.items():
            net = nets[name]
            x1 = torch.randn(1, 5, patch, patch, patch)
            x2 = torch.randn(2, 5, patch, patch, patch)
            with torch.inference_mode():
                fwd.append(timed(lambda net=net, x1=x1: net(x1)))
            step.append(timed(lambda net=net, x2=x2: net(x2).mean().backward()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'network':<36}{'params':>9}{'patch':>7}{'forward s':>11}{'train step s':>14}")
    for (name, patch), (fwd, step) in results.items():
        params = sum(p.numel() for p in nets[name].parameters()) / 1e6
        print(f"{name:<36}{params:>8.1f}M{patch:>7}{statistics.median(fwd):>11.2f}{statistics.median(step):>14.2f}")


if __name__ == "__main__":
    main()
