"""GPU figures: forward-pass time of ResEnc-L at 192^3 and of the 13.5 M network at 96^3, then per-call stages.

    python -m scripts.benchmark_gpu [MODEL_DIR ...]     # on a machine with a CUDA GPU

Random weights (time does not depend on them), batch 1, float16 and bfloat16 autocast, cuDNN autotuning
on, median of 20 passes after 3 warm-ups. Then `benchmark_speed.py --cases mr c100 --calls box` with the
given model folders (default: the shipped one): process start to answer, on the GPU, stage by stage.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from inference.model import network_from_architecture, resenc_architecture

REPO = Path(__file__).resolve().parent.parent

NETWORKS = {  # name: (features, blocks per stage, input channels, output channels, patch)
    "ResEnc-L (nnInteractive v1.0)": ([32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6], 8, 2, 192),
    "13.5 M (features 16..192)": ([16, 32, 64, 128, 192, 192], [1, 2, 2, 2, 2, 2], 5, 1, 96),
}


def seconds_per_forward(net: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype, repeats: int = 20) -> float:
    x = torch.randn(*shape, device="cuda")
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for i in range(3 + repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("benchmark_gpu: no CUDA GPU here, nothing to measure", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for name, (features, blocks, inputs, outputs, patch) in NETWORKS.items():
        net = network_from_architecture(resenc_architecture(features, blocks), inputs, outputs).cuda().eval()
        for dtype in (torch.float16, torch.bfloat16):
            ms = 1000 * seconds_per_forward(net, (1, inputs, patch, patch, patch), dtype)
            print(f"{name} {patch}^3 {dtype}: {ms:.1f} ms/forward", flush=True)
        del net
        torch.cuda.empty_cache()
    return subprocess.run([sys.executable, "-m", "scripts.benchmark_speed", "--cases", "mr", "c100",
                           "--calls", "box", "--model", *(argv or ["default"])], check=False, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
