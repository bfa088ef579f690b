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


def lock_pins(name: str = "requirements-image.lock") -> dict[str, str]:
    text = (REPO / name).read_text()
    return {m.group(1): m.group(2)
            for m in re.finditer(r"^([a-z0-9-]+)==(\S+) \\\n    --hash=sha256:[0-9a-f]{64}(  # from \S+)?$", text, re.M)}


def requirement_pins(name: str) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (REPO / name).read_text().splitlines()]
    return dict(line.lower().replace("_", "-").split("==") for line in lines if line)


def test_docker_installs_the_lock_with_hashes_and_setup_the_same_requirement_files():
    dockerfile = (REPO / "Dockerfile").read_text()
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r"install (-c \S+ )?-r \S*requirements\.txt", setup)
    assert re.search(r"install (-c \S+ )?--no-deps -r \S*requirements-nodeps\.txt", setup)
    assert re.search(r"pip install --no-deps --require-hashes .*-r \"\$lock\"", dockerfile)
    assert re.search(r"cuda\) lock=\S*requirements-image\.lock ;; cpu\) lock=\S*requirements-image-cpu\.lock ;;", dockerfile)
    assert "WORKDIR /workspace" in dockerfile
    for path in ("predict.sh", "inference", "model_weights"):
        assert re.search(rf"^COPY {path}", dockerfile, re.M), path
        assert (REPO / path).exists()
    assert "PIP_NO_CACHE_DIR=1" in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS build$", dockerfile, re.M)


def test_image_lock_pins_every_package_with_a_hash_and_matches_the_tested_versions():
    lock = lock_pins()
    entries = [line for line in (REPO / "requirements-image.lock").read_text().splitlines() if "==" in line]
    assert len(lock) == len(entries) > 20
    assert "triton" not in lock  # torch.compile's code generator: never called
    for dropped in ("acvl-utils", "simpleitk", "pandas", "scikit-learn", "scikit-image", "timm", "torchvision"):
        assert dropped not in lock, dropped
    assert any(name.endswith("-cu12") for name in lock)  # torch's CUDA 12 build: drivers >= 525
    tested = {**requirement_pins("requirements.txt"), **requirement_pins("requirements-nodeps.txt")}
    for name, version in lock.items():
        if name in tested and name != "torch":  # torch differs on purpose: scripts/check_image.sh compares the scores
            assert tested[name] == version, name
    for name in requirement_pins("requirements-image.in"):
        assert name in lock, name


def test_the_cpu_image_lock_has_the_cpu_torch_and_no_cuda_library():
    cpu, cuda = lock_pins("requirements-image-cpu.lock"), lock_pins()
    entries = [line for line in (REPO / "requirements-image-cpu.lock").read_text().splitlines() if "==" in line]
    assert len(cpu) == len(entries) > 20
    assert cpu["torch"].endswith("+cpu")
    assert not [name for name in cpu if name.startswith(("nvidia-", "cuda-")) or name == "triton"]
    for name in requirement_pins("requirements-image.in"):
        assert cpu[name] == cuda[name], name  # the images differ in torch and its dependencies only
    differ = {name for name in set(cpu) | set(cuda) if cpu.get(name) != cuda.get(name)}
    torch_and_its_own = {"torch", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx", "setuptools", "sympy",
                         "typing-extensions"}
    assert "torch" in differ and all(name.startswith(("nvidia-", "cuda-")) or name in torch_and_its_own for name in differ)


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
