"""Prepare folders of labelled cases for training once (`training.train --data` also does it on first use).

    .venv/bin/python -m training.prepare DIR [DIR ...] [--config training/config.json]

Each training case becomes DIR/prepared/<case>/ (uncompressed arrays a worker crops by memory map,
per-label bounding boxes, the image's intensity statistics: training/real_cases.py); the held-out
cases (the config's data.validation_fraction, by a hash of the case name) are linked into
DIR/prepared/validation/, the folder to validate on with `python -m inference.harness run`.
Bad cases are skipped with one line on stderr; exit status 1 when no case is usable.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .real_cases import NoUsableCase, load_real_cases
from .samples import Recipe
from .train import DEFAULT_CONFIG


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="+", metavar="DIR")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="its data.validation_fraction is used")
    args = parser.parse_args(argv)
    fraction = Recipe.from_config(json.loads(args.config.read_text())["data"]).validation_fraction
    try:
        load_real_cases(args.data, fraction)
    except NoUsableCase as exc:
        raise SystemExit(f"training.prepare: {exc}") from None


if __name__ == "__main__":
    main()
