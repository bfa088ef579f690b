"""Which device runs the network: the GPU when CUDA works, else the CPU, and one line on stderr
when an NVIDIA GPU is handed to us but CUDA cannot use it (most often a driver older than this
torch build needs), so that a slow CPU run never goes unexplained."""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
# The oldest driver each CUDA major release runs on, through CUDA's minor-version compatibility
# (NVIDIA's CUDA compatibility guide); newer minor releases of a major need nothing more.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def nvidia_visible(environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> bool:
    """An NVIDIA device is handed to this process: NVIDIA_VISIBLE_DEVICES names one, or /dev/nvidia* exists."""
    visible = environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    if visible and visible not in ("void", "none"):
        return True
    return any(dev.glob("nvidia*"))


def driver_version(version_file: Path = DRIVER_VERSION_FILE) -> str | None:
    """The loaded NVIDIA kernel module's version, e.g. "535.104.05", or None without one."""
    try:
        text = version_file.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else None


def needed_driver(cuda: str | None) -> str:
    """What this torch build needs of the driver, in words."""
    if cuda is None:
        return "a CUDA build of torch (this one is CPU-only)"
    major = int(cuda.split(".")[0])
    oldest = MIN_DRIVER.get(major)
    return f"driver >= {oldest} for torch's CUDA {cuda}" if oldest else f"a driver for CUDA {cuda}"


def unusable_gpu_message(cuda_usable: bool, environ: Mapping[str, str] = os.environ, dev: Path = Path("/dev"),
                         version_file: Path = DRIVER_VERSION_FILE, cuda: str | None = torch.version.cuda) -> str | None:
    """The one line to print when a GPU is visible but CUDA cannot be used; None otherwise."""
    if cuda_usable or not nvidia_visible(environ, dev):
        return None
    found = driver_version(version_file)
    driver = f"NVIDIA driver {found}" if found else f"no NVIDIA driver version ({version_file} unreadable)"
    return f"WARNING: an NVIDIA GPU is visible but CUDA cannot use it: {driver} found, needs {needed_driver(cuda)}; " \
           "running on the CPU"


def pick_device() -> torch.device:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own warning about an old driver spans lines; ours says it once
        usable = torch.cuda.is_available()
    message = unusable_gpu_message(usable)
    if message:
        print(message, file=sys.stderr, flush=True)
    return torch.device("cuda" if usable else "cpu")
