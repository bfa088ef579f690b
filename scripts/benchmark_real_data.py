"""Samples per second and peak memory of training on a large real-format case (prepared against read whole).

    .venv/bin/python -m scripts.benchmark_real_data [--shape 300 512 512] [--samples 12] [--network]

Writes one challenge training case of `--shape` (z, y, x) (a body-sized structure, organs, small
lesions; uint8), then, each in its own process so that each peak RSS is its own:
- `prepare`: `python -m training.prepare` on it (once per case);
- `prepared`: a feed worker (one thread) drawing samples from the prepared case (`data.p_real` 1),
  memory-mapped crops around the drawn target;
- `whole`: the same samples, each reading the whole compressed case first (what a worker would do
  without the preparation), run right after in the same invocation for the ratio.
Without `--network` the prompting passes use a cheap stand-in for the network, so the figures are the
data path's (on a GPU machine a pass costs milliseconds; on this CPU the network would dominate).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_large_case(path: Path, shape: tuple[int, int, int], seed: int = 0) -> None:
    """A CT-like case: a body ellipsoid over most of the volume, 4 organs inside it, 3 small lesions."""
    rng = np.random.default_rng(seed)
    gts = np.zeros(shape, dtype=np.uint8)
    image = np.empty(shape, dtype=np.uint8)
    z = np.arange(shape[0])[:, None, None]
    y = np.arange(shape[1])[None, :, None]
    x = np.arange(shape[2])[None, None, :]
    objects = [(np.asarray(shape) / 2, np.asarray(shape) * [0.55, 0.4, 0.45])]  # the body
    for _ in range(4):
        objects.append((np.asarray(shape) * rng.uniform(0.35, 0.65, 3), np.asarray(shape) * rng.uniform(0.06, 0.12, 3)))
    for _ in range(3):
        objects.append((np.asarray(shape) * rng.uniform(0.3, 0.7, 3), rng.uniform(3, 8, 3)))
    for label, (centre, radii) in enumerate(objects, start=1):
        lo = np.maximum((centre - radii).astype(int), 0)
        hi = np.minimum((centre + radii).astype(int) + 2, shape)
        block = tuple(slice(a, b) for a, b in zip(lo, hi))
        inside = ((z[block[0]] - centre[0]) / radii[0]) ** 2 + ((y[:, block[1]] - centre[1]) / radii[1]) ** 2 \
            + ((x[:, :, block[2]] - centre[2]) / radii[2]) ** 2 <= 1
        gts[block][inside] = label
    brightness = rng.integers(40, 220, size=len(objects) + 1).astype(np.uint8)
    brightness[0] = 5
    for start in range(0, shape[0], 32):  # slab by slab: no full-size float temporary
        slab = gts[start:start + 32]
        noise = rng.normal(0, 8, size=slab.shape).astype(np.float32)
        image[start:start + 32] = np.clip(brightness[slab] + noise, 0, 255)
    np.savez_compressed(path, imgs=image, gts=gts, spacing=np.asarray([0.8, 0.8, 1.5]))


def worker(mode: str, data: Path, samples: int, network: bool) -> None:
    """Draw `samples` samples as a one-thread feed worker; print one JSON line of figures."""
    import torch

    from inference.geometry import slices
    from inference.pipelines import load_model
    from inference.normalisation import intensity_stats
    from training.label_maps import LabelSources
    from training.real_cases import RealCase, label_extents, load_real_cases, read_training_npz
    from training.samples import Recipe, draw_samples
    from training.train import DEFAULT_CONFIG

    @dataclass(frozen=True)
    class WholeCase(RealCase):
        """A case read whole from its compressed file, cropped in memory."""

        arrays: tuple = ()

        def read(self, region):
            return self.arrays[0][slices(region)].copy(), self.arrays[1][slices(region)].copy()

    real = load_real_cases([data], 0.0, verbose=False)
    if mode == "prepare-only":
        print(json.dumps({"mode": mode, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
        return
    torch.set_num_threads(1)
    config = json.loads(DEFAULT_CONFIG.read_text())
    model = load_model(REPO / "model_weights" / "default", torch.device("cpu"))
    model.network.eval()
    if not network:
        model.foreground_logit = lambda x: (x[-1] - 0.5) * 4 + (x[1] - 0.5)  # a stand-in logit from box and previous mask
    recipe = Recipe.from_config(config["data"] | {"p_real": 1.0})
    seconds, volumes = [], []
    for index in range(samples):
        t0 = time.perf_counter()
        if mode == "whole":  # without the preparation: the whole case read, its target found, per sample
            imgs, gts, spacing = read_training_npz(data / f"{real.cases[0].name}.npz")
            method = model.spec.normalisation
            case = WholeCase(real.cases[0].name, data, imgs.shape, tuple(reversed(spacing)), label_extents(gts),
                             {method: intensity_stats(imgs, method)}, (imgs, gts))
            real = type(real)((case,))
            del imgs, gts, case
        sample = draw_samples(model, LabelSources(real=real), recipe, config["prompting"], 0, index, 0, 1)[0]
        seconds.append(time.perf_counter() - t0)
        volumes.append(sample.volume_seconds + (seconds[-1] - sample.seconds))  # the whole read counts as volume
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
    print(json.dumps({"mode": mode, "samples": samples, "seconds": seconds, "volume_seconds": volumes,
                      "peak_rss_gib": peak}))


def run_child(args: list[str]) -> str:
    """Run a worker in its own process (its own peak RSS); its stdout."""
    result = subprocess.run([sys.executable, "-m", "scripts.benchmark_real_data", *args], cwd=REPO, check=True,
                            capture_output=True, text=True)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], help="(z, y, x)")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--network", action="store_true", help="the real network in the prompting passes")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.samples, args.network)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        write_large_case(data / "CT_large_0.npz", tuple(args.shape))
        print(f"case {tuple(args.shape)} written in {time.perf_counter() - t0:.0f} s "
              f"({(data / 'CT_large_0.npz').stat().st_size / 2**20:.0f} MiB compressed)", flush=True)
        t0 = time.perf_counter()
        out = run_child(["--worker", "prepare-only", str(data), "--samples", "0"])
        peak = json.loads(out.strip().splitlines()[-1])["peak_rss_gib"]
        print(f"prepare (once): {time.perf_counter() - t0:.1f} s, peak RSS {peak:.2f} GiB", flush=True)
        network = ["--network"] if args.network else []
        for mode in ("prepared", "whole"):
            out = run_child(["--worker", mode, str(data), "--samples", str(args.samples), *network])
            figures = json.loads(out.strip().splitlines()[-1])
            total = sum(figures["seconds"][1:])  # the first sample pays the imports' and the first pass's warm-up
            print(f"{mode:>8}: {(args.samples - 1) / total:.2f} samples/s one worker (one thread), "
                  f"{total / (args.samples - 1):.2f} s a sample, of which the volume "
                  f"{np.mean(figures['volume_seconds'][1:]):.2f} s; peak RSS {figures['peak_rss_gib']:.2f} GiB",
                  flush=True)
    print(f"prompting passes: {'the default network' if args.network else 'a stand-in (no network)'}")


if __name__ == "__main__":
    main()
