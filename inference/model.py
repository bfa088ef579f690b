"""Model folders: `model.json` (architecture, channel layout, prompt encoding, normalisation,
patch size, output head) beside the weights. One loader for our weights and nnU-Net-style ones.

`architecture` uses the schema of an nnU-Net plans configuration's "architecture" block,
or `plans` points at an nnU-Net `plans.json` and a configuration in it; either way the
network is built by nnunetv2's `get_network_from_plans`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .normalisation import METHODS
from .prompts import LOGICAL_CHANNELS, PromptEncoding

SPEC_FILE = "model.json"
OUTPUT_HEADS = {"sigmoid": 1, "softmax2": 2}


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


def read_spec(folder: str | os.PathLike) -> ModelSpec:
    """Parse and check `model.json`; raises ValueError naming the bad field."""
    folder = Path(folder)
    raw = json.loads((folder / SPEC_FILE).read_text())
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
    network: torch.nn.Module
    device: torch.device

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
    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground probability (P, P, P) on the CPU for one network input (C, P, P, P)."""
        x = x.to(self.device, non_blocking=True)[None]
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                logits = self.network(x)[0].float()
        else:
            logits = self.network(x)[0]
        fg = logits[0] if self.spec.output == "sigmoid" else logits[1] - logits[0]
        return torch.sigmoid(fg).cpu()


def build_network(spec: ModelSpec) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = spec.architecture
    return get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        len(spec.channels),
        OUTPUT_HEADS[spec.output],
        allow_init=True,
        deep_supervision=False,
    )


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
    network = build_network(read_spec(folder))
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


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(folder: str | os.PathLike, device: torch.device | None = None) -> Model:
    spec = read_spec(folder)
    device = device or pick_device()
    network = build_network(spec)
    network.load_state_dict(load_state_dict(spec.folder / spec.weights))
    network.eval().to(device)
    return Model(spec, network, device)
