"""What a training step of nnInteractive's ResEnc-L holds in memory, per patch size: counted, not guessed.

    .venv/bin/python -m scripts.benchmark_training_memory [--patch 64 96 192] [--batch 2] [--check-cpu]

Activations: the bytes of every tensor autograd saves for backward in one forward pass (what a training step
keeps until backward), counted on the `meta` device, where nothing is computed, so patch 192 counts in seconds
on a CPU. `--check-cpu` runs patch 64 for real on the CPU (fp32, and bfloat16 autocast) and prints its count
beside the meta one. Weights, gradients and AdamW's two moments are 4 bytes a parameter each. On a CUDA
machine, `--cuda` also runs a real step (bf16 autocast, as training/train.py does) at each patch and prints
torch.cuda.max_memory_allocated beside the count.
"""
from __future__ import annotations

import argparse
import contextlib
import copy

import torch

from inference.model import network_from_architecture, resenc_architecture
from inference.nninteractive.layout import CHANNELS
from scripts.make_nninteractive_layout import RESENC_L_BLOCKS, RESENC_L_FEATURES

GIB = 2**30


def saved_bytes(network: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> int:
    """Bytes of the tensors one forward pass saves for backward (parameters themselves not counted)."""
    params = {id(p) for p in network.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params:
            saved[id(t)] = t.numel() * t.element_size()
        return t

    cast = (torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        network(x)
    return sum(saved.values())


def resenc_l() -> torch.nn.Module:
    return network_from_architecture(resenc_architecture(RESENC_L_FEATURES, RESENC_L_BLOCKS), len(CHANNELS), 2)


def cuda_step_peak(network: torch.nn.Module, patch: int, batch: int) -> int:
    """Peak bytes allocated by one bf16-autocast training step (forward, backward, AdamW) on the GPU."""
    network = network.cuda().train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x = torch.randn(batch, len(CHANNELS), patch, patch, patch, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step holds AdamW's moments
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = network(x)
        (logits[:, 1] - logits[:, 0]).float().sigmoid().mean().backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 96, 128, 192])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--check-cpu", action="store_true", help="count patch 64 for real on the CPU too")
    parser.add_argument("--cuda", action="store_true", help="measure a real step on the GPU too")
    args = parser.parse_args()
    torch.manual_seed(0)
    network = resenc_l()
    params = sum(p.numel() for p in network.parameters())
    state = 4 * 4 * params  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    print(f"ResEnc-L, {len(CHANNELS)} inputs, 2 logits: {params:,} parameters; weights + gradients + AdamW "
          f"{state / GIB:.2f} GiB")
    if args.check_cpu:
        x = torch.randn(1, len(CHANNELS), 64, 64, 64)
        real = saved_bytes(network, x)
        real_bf16 = saved_bytes(network, x, torch.bfloat16)
        meta = saved_bytes(copy.deepcopy(network).to("meta"), x.to("meta"))
        print(f"check, patch 64, one sample: CPU fp32 {real / GIB:.3f} GiB, meta fp32 {meta / GIB:.3f} GiB, "
              f"CPU bf16 autocast {real_bf16 / GIB:.3f} GiB")
    on_meta = copy.deepcopy(network).to("meta")
    in_bf16 = copy.deepcopy(network).to("meta", torch.bfloat16)
    print("| patch | saved activations per sample, fp32 | same, bf16 | step at batch "
          f"{args.batch}, bf16 activations + fp32 state |" + (" measured on the GPU |" if args.cuda else ""))
    print("|---|---|---|---|" + ("---|" if args.cuda else ""))
    for patch in args.patch:
        x = torch.empty(1, len(CHANNELS), patch, patch, patch, device="meta")
        fp32 = saved_bytes(on_meta, x)
        bf16 = saved_bytes(in_bf16, x.to(torch.bfloat16))
        row = (f"| {patch} | {fp32 / GIB:.2f} GiB | {bf16 / GIB:.2f} GiB | "
               f"{(args.batch * bf16 + state) / GIB:.1f} GiB |")
        if args.cuda:
            row += f" {cuda_step_peak(copy.deepcopy(network), patch, args.batch) / GIB:.1f} GiB |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
