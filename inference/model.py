"""Model folders: `model.json` (architecture, channel layout, prompt encoding, normalisation,
patch size, output head) beside the weights. One loader for our weights and nnU-Net-style ones.

`architecture` uses the schema of an nnU-Net plans configuration's "architecture" block,
or `plans` points at an nnU-Net `plans.json` and a configuration in it; either way the
network is built by nnunetv2's `get_network_from_plans`. This module knows the keys every
pipeline shares and no pipeline: `pipelines.py` reads a folder (its `model.json`, or a layout
a pipeline recognises) and has the folder's pipeline parse its own keys into `ModelSpec.settings`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .device import pick_device
from .normalisation import METHODS
from .openvino_forward import BACKENDS, Forward, compile_forward, current_ir
from .prompts import LOGICAL_CHANNELS, PromptEncoding

SPEC_FILE = "model.json"
OUTPUT_HEADS = {"sigmoid": 1, "softmax2": 2}
AUTOCAST_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    folder: Path
    architecture: dict
    channels: tuple[str, ...]
    patch_size: int
    normalisation: str
    prompts: PromptEncoding
    output: str
    weights: str
    max_zoom: float = 4.0
    pipeline: str = "segfm"
    settings: Any = None  # the pipeline's own keys, parsed by that pipeline (pipelines.py)
    autocast: str = "bfloat16"  # the CUDA autocast dtype (float16 where the GPU has no bfloat16)
    license: str | None = None  # the weights' licence, when the folder says it


def parse_spec(folder: str | os.PathLike, raw: dict, patch_size: int | None = None, box_mode: str | None = None,
               autocast: str = "bfloat16") -> ModelSpec:
    """Check the keys every pipeline shares; `patch_size` and `box_mode` override the spec's, `autocast` is the
    default when it names none. `settings` stays None: the pipeline parses its own. ValueError names a bad field."""
    folder = Path(folder)
    raw = dict(raw)
    if patch_size is not None:
        raw["patch_size"] = patch_size
    if box_mode is not None:
        raw["prompts"] = {**raw.get("prompts", {}), "box": box_mode}
    architecture, plans_patch = _architecture(folder, raw)
    channels = tuple(raw["channels"])
    unknown = [c for c in channels if c not in LOGICAL_CHANNELS]
    if unknown or "image" not in channels:
        raise ValueError(f"{SPEC_FILE}: channels must include 'image' and use {LOGICAL_CHANNELS}, got {channels}")
    patch = raw.get("patch_size", plans_patch)
    if isinstance(patch, (list, tuple)):
        if len(set(patch)) != 1:
            raise ValueError(f"{SPEC_FILE}: patch_size must be a cube, got {patch}")
        patch = patch[0]
    if raw.get("output") not in OUTPUT_HEADS:
        raise ValueError(f"{SPEC_FILE}: output must be one of {tuple(OUTPUT_HEADS)}, got {raw.get('output')!r}")
    if raw.get("normalisation") not in METHODS:
        raise ValueError(f"{SPEC_FILE}: normalisation must be one of {METHODS}, got {raw.get('normalisation')!r}")
    autocast = raw.get("autocast", autocast)
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"{SPEC_FILE}: autocast must be one of {AUTOCAST_DTYPES}, got {autocast!r}")
    return ModelSpec(
        folder=folder,
        architecture=architecture,
        channels=channels,
        patch_size=int(patch),
        normalisation=raw["normalisation"],
        prompts=PromptEncoding(**raw.get("prompts", {})),
        output=raw["output"],
        weights=raw["weights"],
        max_zoom=float(raw.get("max_zoom", 4.0)),
        pipeline=raw.get("pipeline", "segfm"),
        autocast=autocast,
        license=str(raw["license"]) if raw.get("license") else None,
    )


def _architecture(folder: Path, raw: dict) -> tuple[dict, list | None]:
    if "architecture" in raw:
        return raw["architecture"], None
    ref = raw["plans"]
    plans = json.loads((folder / ref["file"]).read_text())
    config = _resolve_configuration(plans["configurations"], ref["configuration"])
    return config["architecture"], config.get("patch_size")


def _resolve_configuration(configurations: dict, name: str) -> dict:
    """nnU-Net configurations may inherit from another one."""
    config = dict(configurations[name])
    parent = config.pop("inherits_from", None)
    return {**_resolve_configuration(configurations, parent), **config} if parent else config


@dataclass
class Model:
    spec: ModelSpec
    network: torch.nn.Module | None  # None when `cpu_forward` runs the network
    device: torch.device
    cpu_forward: Forward | None = None  # OpenVINO's, when the folder has a current IR (openvino_forward.py)

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this: the network's total downsampling."""
        strides = self.spec.architecture["arch_kwargs"]["strides"]
        return int(math.prod(s[0] if isinstance(s, (list, tuple)) else s for s in strides))

    def to_cpu(self) -> None:
        """Go on without the GPU (after it ran out of memory)."""
        self.network.to("cpu")
        self.device = torch.device("cpu")

    @torch.inference_mode()
    def foreground_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground logit (P, P, P) on the CPU for one network input (C, P, P, P): > 0 means foreground.

        For 2 logits it is logit1 - logit0, so `> 0` is exactly their argmax with ties to background.
        """
        x = x.to(self.device, non_blocking=True)[None]
        if self.device.type == "cuda":
            dtype = getattr(torch, self.spec.autocast)
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                dtype = torch.float16
            with torch.autocast("cuda", dtype=dtype):
                logits = self.network(x)[0].float()
        elif self.cpu_forward is not None:
            logits = self.cpu_forward(x)[0]
        else:
            logits = self.network(x)[0]
        return foreground_from_logits(logits, self.spec.output).cpu()

    def probability(self, x: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """Foreground probability (P, P, P) on the CPU for one network input (C, P, P, P), the logit moved by `offset`."""
        return torch.sigmoid(self.foreground_logit(x) + offset)


def foreground_from_logits(logits: torch.Tensor, output: str) -> torch.Tensor:
    """The foreground logit of a network output ((B,) C, P, P, P): the one logit, or logit1 - logit0 of two."""
    channels = logits.unbind(-4)
    return channels[0] if output == "sigmoid" else channels[1] - channels[0]


def build_network(spec: ModelSpec) -> torch.nn.Module:
    return network_from_architecture(spec.architecture, len(spec.channels), OUTPUT_HEADS[spec.output])


def network_from_architecture(arch: dict, inputs: int, outputs: int) -> torch.nn.Module:
    """A freshly initialised network from a plans "architecture" block (nnunetv2 resolves the class names)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  inputs, outputs, allow_init=True, deep_supervision=False)


def load_state_dict(path: Path) -> dict:
    """A plain state dict, or the `network_weights` of an nnU-Net checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # nnU-Net checkpoints also pickle training bookkeeping
        state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("network_weights", state)


def resenc_architecture(features: list[int], blocks_per_stage: list[int]) -> dict:
    """The plans "architecture" block of a 3D residual-encoder U-Net as nnU-Net builds them:
    3x3x3 convolutions, stride 2 after the first stage, InstanceNorm, LeakyReLU, one decoder conv per stage."""
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_blocks_per_stage": list(blocks_per_stage),
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def create_random_model(folder: str | os.PathLike, spec: dict, seed: int = 0) -> torch.nn.Module:
    """Write a model folder for `spec` with freshly initialised weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    torch.manual_seed(seed)
    network = build_network(parse_spec(folder, spec))
    save_model(folder, spec, network)
    return network


def save_model(folder: str | os.PathLike, spec: dict, network: torch.nn.Module) -> None:
    """Write a model folder: `model.json` and the weights (fp16, half the size, loaded back as fp32)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    halves = {}  # the state dict repeats tensors (decoder.encoder.*); keep them shared on disk
    state = {}
    for key, value in network.state_dict().items():
        if value.is_floating_point():
            value = halves.setdefault(value.data_ptr(), value.half())
        state[key] = value
    torch.save(state, folder / spec["weights"])
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def _cpu_forward(spec: ModelSpec, backend: str) -> Forward | None:
    if backend == "torch":
        return None
    ir = current_ir(spec.folder, spec.folder / spec.weights)
    if ir is None:
        if backend == "openvino":
            raise FileNotFoundError(f"{spec.folder}: no OpenVINO IR made from these weights "
                                    f"(python -m inference.openvino_export {spec.folder})")
        return None
    try:
        return compile_forward(ir, torch.get_num_threads())
    except Exception as exc:  # not installed, or this CPU/IR refused: torch does the work instead
        if backend == "openvino":
            raise
        print(f"OpenVINO unavailable ({type(exc).__name__}: {exc}); using torch", file=sys.stderr)
        return None


def load_network(spec: ModelSpec, device: torch.device | None = None, backend: str = "torch") -> Model:
    """Build and load the network a spec describes (`pipelines.load_model` reads the spec from a folder).

    `backend` runs the forward pass on the CPU: "torch"; "openvino" (the folder's IR, an error if it has
    none or it is stale); "auto" (OpenVINO when the IR is current and the package installed, else torch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = device or pick_device()
    cpu_forward = _cpu_forward(spec, backend) if device.type == "cpu" else None
    network = None
    if cpu_forward is None:  # the IR holds the weights: building the torch network too would cost ~0.1 s a call
        network = build_network(spec)
        network.load_state_dict(load_state_dict(spec.folder / spec.weights))
        network.eval().to(device)
    model = Model(spec, network, device, cpu_forward)
    if spec.patch_size % model.divisor:
        raise ValueError(f"patch size {spec.patch_size} is not a multiple of the network's downsampling {model.divisor}")
    return model
