"""How much time one call may take: a share of the case's budget, 90 s x classes over all its calls.

The evaluator starts a fresh container per call, and times `docker run` (container start
included). A case with boxes gets 6 calls (box, then 5 click rounds), one without 5. A call
knows its round from `clicks_order`; what the earlier calls spent it learns from a ledger
kept in the output folder, which the evaluator does not clear between calls. Earlier calls
missing from the ledger are assumed to have used their fair share.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

SECONDS_PER_CLASS = 90.0
LEDGER_FILE = ".segfm-budget.json"
SAFETY = 0.85  # of the share actually planned for: machines are noisy
CONTAINER_START_ENV = "SEGFM_CONTAINER_START_S"
DEFAULT_CONTAINER_START_S = 4.0  # docker run before our process starts: not visible from inside


@dataclass(frozen=True)
class CallBudget:
    """This call's time: `seconds` from `started` (monotonic clock)."""

    started: float
    seconds: float

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def container_start_seconds() -> float:
    try:
        return max(float(os.environ.get(CONTAINER_START_ENV, DEFAULT_CONTAINER_START_S)), 0.0)
    except ValueError:
        return DEFAULT_CONTAINER_START_S


def process_started() -> float:
    """Monotonic time at which this process (predict.sh exec's into python) started."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.monotonic() - max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def calls_in_protocol(has_boxes: bool) -> int:
    return 6 if has_boxes else 5


def call_index(round_: int, has_boxes: bool) -> int:
    """0-based position of this call: the box call is call 0; without boxes click round 1 is."""
    return round_ if has_boxes else max(round_ - 1, 0)


def share_seconds(n_classes: int, has_boxes: bool, round_: int, spent_before: dict[int, float]) -> float:
    """Seconds this call may take, from process start, given what earlier calls spent (by index)."""
    total = SECONDS_PER_CLASS * max(n_classes, 1)
    calls = calls_in_protocol(has_boxes)
    index = min(call_index(round_, has_boxes), calls - 1)
    fair = total / calls
    start = container_start_seconds()
    spent = sum(spent_before.get(i, fair - start) + start for i in range(index))
    return (total - spent) / (calls - index) * SAFETY - start


def read_ledger(folder: Path, case_name: str, fingerprint: str) -> dict[int, float]:
    """Seconds spent by earlier calls of this case (by call index); empty if unknown or stale."""
    try:
        entry = json.loads((folder / LEDGER_FILE).read_text()).get(case_name, {})
    except (OSError, ValueError, AttributeError):
        return {}
    if entry.get("fingerprint") != fingerprint:
        return {}
    return {int(k): float(v) for k, v in entry.get("calls", {}).items()}


def record_call(folder: Path, case_name: str, fingerprint: str, index: int, seconds: float) -> None:
    """Add this call's time to the ledger; a new run of the case (index 0) starts a fresh entry."""
    path = folder / LEDGER_FILE
    try:
        ledger = json.loads(path.read_text())
        if not isinstance(ledger, dict):
            ledger = {}
    except (OSError, ValueError):
        ledger = {}
    entry = ledger.get(case_name)
    if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint or index == 0:
        entry = {"fingerprint": fingerprint, "calls": {}}
    calls = {k: v for k, v in entry.get("calls", {}).items() if int(k) < index}  # later calls are stale
    calls[str(index)] = round(seconds, 3)
    entry["calls"] = calls
    ledger[case_name] = entry
    tmp = path.with_name(f"{LEDGER_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(ledger))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the ledger is a help, never a reason to fail
