"""Replay the official SegFM3D protocol locally and score it.

    python -m inference.harness run CASES_DIR OUT_DIR [--predictor "CMD {inputs} {outputs}"]
                                   [--docker IMAGE] [--no-box] [--shard I/N] [--seed S] [--physical-spacing] [--patch P]
    python -m inference.harness report OUT_DIR/metrics*.csv --out DIR

`run` writes OUT_DIR/metrics.csv (metrics_shardIofN.csv with --shard), classes.csv (every scored class
with its size stratum: small < P/3, large > P voxels of bounding-box extent, P the patch, 96 by default),
summary.csv, strata.csv and rounds.png, and prints the summaries. `report` merges shards into one.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .protocol import DEFAULT_COMMAND, Predictor, ProtocolError, class_rows, docker_predictor, load_training_case
from .protocol import official_row, replay_case
from .report import CLASS_COLUMNS, classes_path, format_strata, format_summary, modality, plot_rounds, read_metrics
from .report import summarize, summarize_strata, write_metrics, write_summary
from .strata import DEFAULT_PATCH


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("--shard takes I/N with 1 <= I <= N, e.g. 2/4") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError("--shard takes I/N with 1 <= I <= N, e.g. 2/4")
    return index, count


def _predictor(args) -> Predictor:
    if args.docker is None:
        return Predictor(args.predictor)
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        sys.exit("--docker needs a running Docker engine (docker info failed)")
    gpu = not args.cpu and shutil.which("nvidia-smi") is not None
    return docker_predictor(args.docker, gpu)


def run(args) -> int:
    cases = sorted(p for p in Path(args.cases).iterdir() if p.suffix == ".npz")
    index, count = args.shard
    cases = cases[index - 1::count]
    if not cases:
        sys.exit(f"no .npz cases in {args.cases}" + (f" for shard {index}/{count}" if count > 1 else ""))
    predictor = _predictor(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "metrics.csv" if count == 1 else f"metrics_shard{index}of{count}.csv"
    rows, per_class = [], []
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="segfm-harness-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for path in tqdm(cases, desc="cases", unit="case", file=sys.stderr):
            try:
                case = load_training_case(path, args.no_box, args.seed)
                result = replay_case(case, predictor, workdir, args.physical_spacing)
            except (ProtocolError, OSError, ValueError) as exc:
                tqdm.write(f"[{path.name}] ERROR: {exc}", file=sys.stderr)
                continue
            if result.error:
                tqdm.write(f"[{path.name}] ERROR: {result.error}", file=sys.stderr)
            extra = {"modality": modality(path.name), "over_budget": result.over_budget, "error": result.error or ""}
            rows.append({**official_row(result), **extra})
            per_class += [{**row, **extra} for row in class_rows(result, args.patch)]
            write_metrics(out / name, rows)  # after every case: a long run can be inspected or resumed
            write_metrics(classes_path(out / name), per_class, CLASS_COLUMNS)
    if not rows:
        return 1
    report_to(read_metrics([out / name]), read_metrics([classes_path(out / name)]), out)
    return 0


def report_to(rows: list[dict], per_class: list[dict], out: Path) -> None:
    summary = summarize(rows)
    write_summary(out / "summary.csv", summary)
    plot_rounds(rows, out / "rounds.png")
    print(format_summary(summary))
    written = [out / "summary.csv", out / "rounds.png"]
    if per_class:
        strata = summarize_strata(per_class)
        write_summary(out / "strata.csv", strata)
        print("\nper size stratum (targets = scored classes; budget rule applied):")
        print(format_strata(strata))
        written.append(out / "strata.csv")
    print("wrote " + ", ".join(str(p) for p in written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="replay the protocol on a folder of cases with ground truth")
    p.add_argument("cases", help="folder of .npz cases in training format (imgs, gts, spacing, optional boxes)")
    p.add_argument("out", help="folder for metrics.csv, summary.csv and rounds.png")
    p.add_argument("--predictor", default=DEFAULT_COMMAND,
                   help="shell command with {inputs} and {outputs} (default: this repo's predict.sh)")
    p.add_argument("--docker", metavar="IMAGE", help="run IMAGE with the evaluator's docker flags instead")
    p.add_argument("--cpu", action="store_true", help="with --docker: no --gpus flag")
    p.add_argument("--no-box", action="store_true", help="drop boxes: 5 click calls only, as for no-box cases")
    p.add_argument("--shard", type=_shard, default=(1, 1), metavar="I/N", help="run every N-th case from the I-th")
    p.add_argument("--seed", type=int, default=0, help="seed of the boxes made for cases without boxes")
    p.add_argument("--physical-spacing", action="store_true",
                   help="NSD with spacing in array order (the evaluator passes it as stored: x, y, z)")
    p.add_argument("--workdir", help="keep the per-case workspaces (inputs, outputs, predictor.log) here")
    p.add_argument("--patch", type=int, default=DEFAULT_PATCH,
                   help="the patch side the size strata are measured against (default: %(default)s)")
    r = sub.add_parser("report", help="merge metrics CSVs (e.g. shards) into one summary and plot")
    r.add_argument("csvs", nargs="+", type=Path)
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    per_class = [classes_path(p) for p in args.csvs if classes_path(p).is_file()]
    report_to(read_metrics(args.csvs), read_metrics(per_class), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
