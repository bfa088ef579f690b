"""Export a model folder's network for OpenVINO (the CPU forward pass, openvino_forward.py):

    .venv/bin/python -m inference.openvino_export MODEL_DIR

writes MODEL_DIR/openvino/ (the IR, spatial axes dynamic) and the sha256 of the weights it was made from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .openvino_forward import IR_FILE, IR_FOLDER, SOURCE_FILE, weights_digest
from .pipelines import load_model


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
    parser = argparse.ArgumentParser(prog="python -m inference.openvino_export",
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
