"""Stress `predict.sh` with hostile inputs: the fixed corpus plus N randomly malformed cases.

    python -m scripts.stress_hostile [--cases 200] [--seed 0] [--model DIR] [--per-case] [--keep DIR]

Writes the cases into a temporary folder, runs `sh predict.sh IN OUT [--model DIR]` once over
all of them (with --per-case also once per case, each alone in its input folder as the
evaluator does), then checks every answer against the image shape stored in its input.
Prints the figures; exit status 1 when a file with a readable image got no answer (a crash)
or an answer of the wrong shape, else 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.hostile_cases import hostile_cases, named_malformed_case, stored_image_shape, write_content
from inference.case_io import CaseError, read_case

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Expectation:
    shape: tuple[int, ...] | None  # the stored image shape, None when the image is unreadable
    n_classes: int | None  # None when read_case refuses the file


@dataclass
class Report:
    mode: str
    cases: int = 0
    answered: int = 0
    crashes: list[str] = field(default_factory=list)  # readable image, no answer
    wrong_shapes: list[str] = field(default_factory=list)
    wrong_dtypes: list[str] = field(default_factory=list)
    unexpected_answers: list[str] = field(default_factory=list)  # an answer for a file without an image
    tracebacks: int = 0
    stray_lines: list[str] = field(default_factory=list)  # stderr lines naming no file
    leftovers: list[str] = field(default_factory=list)  # temporary files in the output folder
    exit_codes: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0

    def print(self) -> None:
        codes = ", ".join(f"{code}: {n}x" for code, n in sorted(self.exit_codes.items()))
        print(f"== {self.mode}")
        print(f"cases                   {self.cases}")
        print(f"answered                {self.answered}")
        print(f"crashes without output  {len(self.crashes)}  {self.crashes[:5]}")
        print(f"wrong shapes            {len(self.wrong_shapes)}  {self.wrong_shapes[:5]}")
        print(f"wrong dtypes            {len(self.wrong_dtypes)}  {self.wrong_dtypes[:5]}")
        print(f"answers without image   {len(self.unexpected_answers)}  {self.unexpected_answers[:5]}")
        print(f"tracebacks in stderr    {self.tracebacks}")
        print(f"stray stderr lines      {len(self.stray_lines)}  {self.stray_lines[:3]}")
        print(f"temporary files left    {len(self.leftovers)}  {self.leftovers[:5]}")
        print(f"exit code               {codes}")
        print(f"wall time               {self.wall_s:.1f} s")

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.wrong_shapes)


def write_inputs(folder: Path, n_random: int, seed: int) -> dict[str, Expectation]:
    rng = np.random.default_rng(seed)
    entries = [(name, content) for name, content in hostile_cases(rng) if name.endswith(".npz")]
    for i in range(n_random):  # random_malformed_case, named after its mutations
        mutations, arrays = named_malformed_case(rng)
        entries.append((f"random_{i:04d}_{'+'.join(mutations)}.npz", arrays))
    expected = {}
    for name, content in entries:
        path = folder / name
        write_content(path, content)
        try:
            with open(os.devnull, "w") as quiet:  # the reader's warnings belong to predict.sh's stderr
                stderr, sys.stderr = sys.stderr, quiet
                try:
                    n_classes = len(read_case(path).prompts)
                finally:
                    sys.stderr = stderr
        except CaseError:
            n_classes = None
        expected[name] = Expectation(stored_image_shape(path), n_classes)
    return expected


def predict_sh(inputs: Path, outputs: Path, model: str | None, log) -> int:
    command = ["sh", str(REPO / "predict.sh"), str(inputs), str(outputs)] + (["--model", model] if model else [])
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    return subprocess.run(command, cwd=REPO.parent, env=env, stdout=log, stderr=log).returncode


def check(report: Report, expected: dict[str, Expectation], outputs: Path, stderr: str) -> None:
    report.cases = len(expected)
    for name, want in expected.items():
        path = outputs / name
        if not path.exists():
            if want.shape is not None:
                report.crashes.append(name)
            continue
        if want.shape is None:
            report.unexpected_answers.append(name)
            continue
        report.answered += 1
        try:
            with np.load(path) as npz:
                segs = npz["segs"]
        except Exception as exc:
            report.wrong_shapes.append(f"{name}: unreadable answer ({type(exc).__name__})")
            continue
        if segs.shape != want.shape:
            report.wrong_shapes.append(f"{name}: {segs.shape} != {want.shape}")
        allowed = {np.dtype(np.uint8)} | ({np.dtype(np.uint16)} if (want.n_classes or 0) > 255 else set())
        if segs.dtype not in allowed:
            report.wrong_dtypes.append(f"{name}: {segs.dtype}")
    report.tracebacks += stderr.count("Traceback (most recent call last)")
    names = set(expected)
    for line in stderr.splitlines():
        if line.startswith("["):
            if line[1:].split("] ", 1)[0] not in names:
                report.stray_lines.append(line[:120])
        elif not line.startswith("model "):
            report.stray_lines.append(line[:120])
    report.leftovers += [p.name for p in outputs.iterdir()
                         if p.name.endswith(".tmp") or (p.name.startswith(".") and not p.name.endswith(".json"))]


def run_batch(work: Path, expected: dict[str, Expectation], model: str | None) -> Report:
    report = Report("one predict.sh over all cases")
    outputs = work / "out-batch"
    log_path = work / "batch.stderr"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        code = predict_sh(work / "in", outputs, model, log)
    report.wall_s = time.perf_counter() - t0
    report.exit_codes[code] = 1
    check(report, expected, outputs, log_path.read_text())
    return report


def run_per_case(work: Path, expected: dict[str, Expectation], model: str | None) -> Report:
    report = Report("one predict.sh per case")
    outputs = work / "out-per-case"
    single = work / "single"
    log_path = work / "per-case.stderr"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        for name in expected:
            shutil.rmtree(single, ignore_errors=True)
            single.mkdir()
            shutil.copy(work / "in" / name, single / name)
            code = predict_sh(single, outputs, model, log)
            report.exit_codes[code] = report.exit_codes.get(code, 0) + 1
    report.wall_s = time.perf_counter() - t0
    check(report, expected, outputs, log_path.read_text())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="randomly malformed cases besides the fixed corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="model folder for predict.sh (default: its own default)")
    parser.add_argument("--per-case", action="store_true", help="also run one predict.sh per case")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (inputs, outputs, stderr)")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="stress-hostile-"))
    try:
        (work / "in").mkdir(exist_ok=True)
        expected = write_inputs(work / "in", args.cases, args.seed)
        unreadable = sum(e.shape is None for e in expected.values())
        refused = sum(e.shape is not None and e.n_classes is None for e in expected.values())
        print(f"{len(expected)} inputs ({args.cases} random, seed {args.seed}): {unreadable} without a readable "
              f"image, {refused} with an image read_case refuses (answered empty)")
        reports = [run_batch(work, expected, args.model)]
        if args.per_case:
            reports.append(run_per_case(work, expected, args.model))
        for report in reports:
            report.print()
        if args.keep:
            print(f"kept in {work}")
        return 1 if any(r.failed for r in reports) else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
