"""A GPU that is handed to the container but that CUDA cannot use is said once on stderr, and the run
goes on on the CPU (simulated: no GPU is needed)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from inference.device import driver_version, needed_driver, nvidia_visible, unusable_gpu_message

REPO = Path(__file__).resolve().parent.parent
# /proc/driver/nvidia/version as the proprietary and the open kernel modules write it
PROPRIETARY = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n" \
              "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
OPEN = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)\n"


def test_visible_by_environment_or_device_node(tmp_path):
    assert not nvidia_visible({}, tmp_path)
    assert not nvidia_visible({"NVIDIA_VISIBLE_DEVICES": "void"}, tmp_path)
    assert nvidia_visible({"NVIDIA_VISIBLE_DEVICES": "0"}, tmp_path)
    (tmp_path / "nvidiactl").touch()
    assert nvidia_visible({}, tmp_path)


def test_driver_version_from_both_module_kinds(tmp_path):
    version = tmp_path / "version"
    assert driver_version(version) is None
    version.write_text(PROPRIETARY)
    assert driver_version(version) == "535.104.05"
    version.write_text(OPEN)
    assert driver_version(version) == "570.86.15"


def test_message_names_the_driver_found_and_the_one_needed(tmp_path):
    version = tmp_path / "version"
    version.write_text(PROPRIETARY)
    gpu = {"NVIDIA_VISIBLE_DEVICES": "all"}
    message = unusable_gpu_message(False, gpu, tmp_path, version, cuda="13.0")
    assert "535.104.05" in message and ">= 580.65.06" in message and "CPU" in message
    assert "\n" not in message
    assert ">= 525.60.13" in unusable_gpu_message(False, gpu, tmp_path, version, cuda="12.8")
    assert unusable_gpu_message(True, gpu, tmp_path, version, cuda="12.8") is None  # CUDA works: nothing to say
    assert unusable_gpu_message(False, {}, tmp_path, version, cuda="12.8") is None  # no GPU here: nothing to say
    assert "CPU-only" in needed_driver(None)


def test_predict_sh_says_it_once_and_answers_on_the_cpu(tmp_path, run_predict_sh):
    """The CPU torch of this environment cannot use the GPU that NVIDIA_VISIBLE_DEVICES claims."""
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    shutil.copy(REPO / "demo" / "inputs" / "MR_demo_nobox.npz", inputs)
    result = run_predict_sh(inputs, outputs, env={"NVIDIA_VISIBLE_DEVICES": "0"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "CUDA cannot use it" in line]
    assert len(lines) == 1, result.stderr
    assert "found, needs" in lines[0] and "running on the CPU" in lines[0]
    assert "on cpu" in result.stderr
    with np.load(outputs / "MR_demo_nobox.npz") as answer, np.load(inputs / "MR_demo_nobox.npz") as case:
        assert answer["segs"].shape == case["imgs"].shape
    quiet = run_predict_sh(inputs, tmp_path / "quiet", env={"NVIDIA_VISIBLE_DEVICES": "void"})
    assert quiet.returncode == 0 and "CUDA cannot use it" not in quiet.stderr
