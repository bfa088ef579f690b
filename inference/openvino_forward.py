"""The network's forward pass on the CPU through OpenVINO, 2-5x faster than torch eager on 2 cores.

A model folder may carry `openvino/model.xml` (+ `.bin`): the network exported once with
`python -m inference.openvino_export MODEL_DIR`, any patch size (spatial axes are dynamic).
`openvino/source.json` records the sha256 of the weights it was made from; an IR whose weights
changed since is ignored, never used. Outputs match torch within float32 rounding (tested).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

IR_FOLDER = "openvino"
IR_FILE = "model.xml"
SOURCE_FILE = "source.json"
CACHE_FOLDER = "cache"  # OpenVINO's compiled-model cache, used only where it exists (the Docker build makes it)
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
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",  # bf16 on CPUs that have it would change the answers
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }
    cache = ir.parent / CACHE_FOLDER
    if cache.is_dir():  # a cached compile loads in ~0.1 s instead of ~0.4 s (2 cores); its key includes `threads`
        config["CACHE_DIR"] = str(cache)
    compiled = core.compile_model(ir, "CPU", config)
    request = compiled.create_infer_request()

    def forward(x: torch.Tensor) -> torch.Tensor:
        request.infer([np.ascontiguousarray(x.numpy(), dtype=np.float32)])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return forward
