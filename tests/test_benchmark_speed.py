"""The per-stage speed benchmark (scripts/benchmark_speed.py): its clock, and one real run on a tiny case."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from benchmark_speed import STAGE_ORDER, StageClock  # noqa: E402


def test_stage_clock_counts_nested_stages_once():
    clock = StageClock()
    inner = clock.wrap(lambda: time.sleep(0.05), "inner")
    outer = clock.wrap(lambda: (time.sleep(0.05), inner()), "outer")
    outer()
    outer()
    assert clock.seconds["inner"] == pytest.approx(0.10, abs=0.04)
    assert clock.seconds["outer"] == pytest.approx(0.10, abs=0.04)  # exclusive: not 0.2


def test_a_stage_that_raises_is_still_counted():
    clock = StageClock()

    def fail():
        time.sleep(0.02)
        raise ValueError

    with pytest.raises(ValueError):
        clock.wrap(fail, "failing")()
    assert clock.seconds["failing"] >= 0.015 and not clock._stack


def test_the_benchmark_times_every_stage_of_real_calls(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_speed.py"), "--cases", "tiny",
                             "--backend", "torch", "--json", str(out)], capture_output=True, text=True, timeout=600)
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
