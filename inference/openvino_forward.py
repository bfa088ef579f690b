"""The network's forward pass on the CPU through OpenVINO, 2-5x faster than torch eager on 2 cores.

A model folder may carry `openvino/model.xml` (+ `.bin`): the network exported once with
`python -m inference.openvino_forward MODEL_DIR`, any patch size (spatial axes are dynamic).
`openvino/source.json` records the sha256 of the weights it was made from; an IR whose weights
changed since is ignored, never used. Outputs match torch within float32 rounding (tested).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

IR_FOLDER = "openvino"
IR_FILE = "model.xml"
SOURCE_FILE = "source.json"
BACKENDS = ("auto", "torch", "openvino")  # auto: OpenVINO on the CPU when the folder has a current IR

Forward = Callable[[torch.Tensor], torch.Tensor]


def weights_digest(weights: Path) -> str:
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def current_ir(folder: Path, weights: Path) -> Path | None:
    """The folder's IR if it was exported from exactly these weights, else None."""
    ir = folder / IR_FOLDER / IR_FILE
    try:
        source = json.loads((folder / IR_FOLDER / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return ir if ir.is_file() and source.get("weights_sha256") == weights_digest(weights) else None


def compile_forward(ir: Path, threads: int) -> Forward:
    """A function (1, C, P, P, P) float32 -> logits (1, K, P, P, P), running the IR on the CPU."""
    import openvino  # ~0.2 s: only imported when an IR is used

    core = openvino.Core()
    compiled = core.compile_model(core.read_model(ir), "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",  # bf16 on CPUs that have it would change the answers
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()

    def forward(x: torch.Tensor) -> torch.Tensor:
        request.infer([np.ascontiguousarray(x.numpy(), dtype=np.float32)])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return forward


def export(network: torch.nn.Module, channels: int, patch: int, folder: Path, weights: Path) -> Path:
    """Write `folder/openvino/`: the IR of `network` (traced at `patch`^3, spatial axes dynamic) and the digest of `weights`."""
    import openvino

    network = network.eval().cpu()
    example = torch.zeros(1, channels, patch, patch, patch)
    with torch.inference_mode():
        ir = openvino.convert_model(network, example_input=example,
                                    input=[openvino.PartialShape([1, channels, -1, -1, -1])])
    # half-precision storage only when it is exact: our weights are saved as float16 already
    exact_in_half = all(torch.equal(p, p.half().float()) for p in network.state_dict().values() if p.is_floating_point())
    out = folder / IR_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    openvino.save_model(ir, out / IR_FILE, compress_to_fp16=exact_in_half)
    (out / SOURCE_FILE).write_text(json.dumps({"weights": weights.name, "weights_sha256": weights_digest(weights),
                                               "openvino": openvino.__version__}, indent=2) + "\n")
    return out / IR_FILE


def main(argv: list[str] | None = None) -> int:
    from .model import load_model  # model.py imports this module

    parser = argparse.ArgumentParser(prog="python -m inference.openvino_forward",
                                     description="Export a model folder's network for OpenVINO (CPU inference).")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    model = load_model(args.folder, torch.device("cpu"), backend="torch")
    # traced on a small input (fast even for ResEnc-L): the IR's spatial axes are dynamic anyway
    ir = export(model.network, len(model.spec.channels), 2 * model.divisor, args.folder,
                model.spec.folder / model.spec.weights)
    print(f"wrote {ir} ({sum(f.stat().st_size for f in ir.parent.iterdir()) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
