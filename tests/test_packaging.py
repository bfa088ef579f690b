"""The install paths agree with each other and with the README: Docker, setup.sh, CI."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    first_block = re.search(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in first_block.strip().splitlines()]


def test_readme_first_screen_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    assert readme.find("```sh") < 1500  # on the first screen
    run_demo, run_tests = readme_commands()
    assert "scripts/setup.sh" in run_demo and "predict.sh demo/inputs" in run_demo
    assert (REPO / "demo" / "inputs").is_dir() and any((REPO / "demo" / "inputs").glob("*.npz"))
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert run_tests in ci_lines
    assert "sh scripts/setup.sh" in ci_lines


def test_docker_and_setup_install_the_same_requirement_files_the_same_way():
    dockerfile = (REPO / "Dockerfile").read_text()
    setup = (REPO / "scripts" / "setup.sh").read_text()
    for text in (dockerfile, setup):
        assert re.search(r"install (-c \S+ )?-r \S*requirements\.txt", text)
        assert re.search(r"install (-c \S+ )?--no-deps -r \S*requirements-nodeps\.txt", text)
    assert "WORKDIR /workspace" in dockerfile
    for path in ("predict.sh", "inference", "model_weights"):
        assert re.search(rf"^COPY {path} ", dockerfile, re.M), path
        assert (REPO / path).exists()
    assert "PIP_NO_CACHE_DIR=1" in dockerfile
    assert re.search(r"^FROM python:[\d.]+-slim AS build$", dockerfile, re.M)


def test_no_cuda_torch_and_no_timm_chain_in_this_environment():
    assert torch.version.cuda is None or torch.cuda.is_available()  # CI must stay on the CPU wheel
    assert importlib.util.find_spec("torchvision") is None
    assert importlib.util.find_spec("timm") is None


def test_requirements_pin_every_package():
    for name in ("requirements.txt", "requirements-nodeps.txt", "requirements-dev.txt", "requirements-parity.txt"):
        lines = [s.strip() for s in (REPO / name).read_text().splitlines() if s.strip() and not s.startswith("#")]
        assert lines and all("==" in line for line in lines), name


def test_default_model_is_small_and_loads_without_download(default_model):
    folder = REPO / "model_weights" / "default"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 50 * 2**20
    assert default_model.spec.patch_size == 96  # what it was trained at (training/config.json)
    assert next(default_model.network.parameters()).dtype == torch.float32
