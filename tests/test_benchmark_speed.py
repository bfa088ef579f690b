"""The per-stage speed benchmark (scripts/benchmark_speed.py): its clock, and one real run on a tiny case."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.benchmark_speed import STAGE_ORDER, StageClock

REPO = Path(__file__).resolve().parent.parent


class FakeTime:
    """A clock that moves only when told: stage arithmetic tested exactly, without sleeping."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds


def test_stage_clock_counts_nested_stages_once():
    now = FakeTime()
    clock = StageClock(now)
    inner = clock.wrap(lambda: now.wait(0.5), "inner")
    outer = clock.wrap(lambda: (now.wait(0.25), inner()), "outer")
    outer()
    outer()
    assert clock.seconds == {"inner": 1.0, "outer": 0.5}  # exclusive: the outer stage's own 2 x 0.25, not 1.5
    assert clock.calls == {"inner": 2, "outer": 2}


def test_a_stage_that_raises_is_still_counted():
    now = FakeTime()
    clock = StageClock(now)

    def fail():
        now.wait(0.125)
        raise ValueError

    with pytest.raises(ValueError):
        clock.wrap(fail, "failing")()
    assert clock.seconds == {"failing": 0.125} and not clock._stack


def test_the_benchmark_times_every_stage_of_real_calls(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "-m", "scripts.benchmark_speed", "--cases", "tiny",
                             "--backend", "torch", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    columns = json.loads(out.read_text())["tiny"]
    assert set(columns) == {"default/torch box", "default/torch click"}
    for name, seconds in columns.items():
        for stage in ("imports", "model load", "npz read", "preprocessing", "forward", "fusion", "write"):
            assert seconds[stage] > 0, f"{name}: stage {stage} was not timed"
        assert seconds["imports"] > 0.2  # torch alone takes longer: the stage really is the imports
        staged = sum(seconds[s] for s in STAGE_ORDER)
        assert staged == pytest.approx(seconds["total"], abs=0.05 * seconds["total"] + 0.05)
    assert "forward" in result.stdout and "total" in result.stdout
