"""Shared fixtures: the shipped default model, and a runner for `sh predict.sh`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference.pipelines import load_model
from inference.predict import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_model():
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return load_model(DEFAULT_MODEL, torch.device("cpu"))


@pytest.fixture
def run_predict_sh():
    """Run `sh predict.sh ARGS` from another folder, with this interpreter, as the evaluator would.

    The time budget is off unless asked for: these tests are about answers, and a loaded machine
    must not turn them into timing tests (tests/test_budget.py tests the budget and the watchdog).
    """

    def run(*args: str, cwd: Path | None = None, env: dict | None = None,
            budget: bool = False) -> subprocess.CompletedProcess:
        environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
        extra = [] if budget else ["--no-budget"]
        return subprocess.run(["sh", str(REPO / "predict.sh"), *map(str, args), *extra], cwd=cwd or REPO.parent,
                              env=environment, capture_output=True, text=True, timeout=600)

    return run
