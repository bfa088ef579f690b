"""Per-case CSV (the evaluator's columns plus ours), per-modality summary, the per-class CSV with each
class's size stratum and its summary per stratum, and the per-round plot."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .strata import STRATA

ROUNDS = range(1, 7)
SCORE_COLUMNS = (["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"]
                 + [f"DSC_{i}" for i in ROUNDS] + [f"NSD_{i}" for i in ROUNDS])
OFFICIAL_COLUMNS = (["CaseName", "TotalRunningTime"] + [f"RunningTime_{i}" for i in ROUNDS]
                    + SCORE_COLUMNS + ["num_class", "runtime_upperbound"])
EXTRA_COLUMNS = ["modality", "over_budget", "error"]
CLASS_COLUMNS = ["CaseName", "label", "extent", "stratum", *SCORE_COLUMNS, *EXTRA_COLUMNS]
MODALITIES = ("CT", "MR", "PET", "US", "Microscopy")
SCORES = ("DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final")


def modality(case_name: str) -> str:
    """The file-name prefix before the first '_' (CT_, MR_, PET_, US_, Microscopy_), else 'other'."""
    prefix = case_name.split("_", 1)[0]
    return prefix if prefix in MODALITIES and "_" in case_name else "other"


def write_metrics(path: Path, rows: list[dict], columns: list[str] = OFFICIAL_COLUMNS + EXTRA_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def classes_path(metrics_path: Path) -> Path:
    """The per-class CSV beside a metrics CSV (metrics.csv -> classes.csv, metrics_shard1of2.csv -> classes_shard1of2.csv)."""
    return metrics_path.with_name(metrics_path.name.replace("metrics", "classes", 1))


def read_metrics(paths: list[Path]) -> list[dict]:
    """Rows of one or more metrics CSVs (e.g. the shards of one run), numbers parsed."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                row = {k: _number(v) for k, v in raw.items()}
                row["CaseName"], row["modality"], row["error"] = raw["CaseName"], raw["modality"], raw["error"]
                row["over_budget"] = raw["over_budget"] == "True"
                rows.append(row)
    return rows


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _means(group: list[dict]) -> dict:
    """Mean scores of rows, and `scored_*` with the budget rule applied (over budget -> 0)."""
    entry = {score: float(np.mean([r[score] for r in group])) for score in SCORES}
    for score in SCORES:
        entry[f"scored_{score}"] = float(np.mean([0.0 if r["over_budget"] else r[score] for r in group]))
    return entry


def summarize(rows: list[dict]) -> list[dict]:
    """Means per modality and overall; `scored_*` applies the budget rule (over budget -> 0)."""
    groups = {m: [r for r in rows if r["modality"] == m] for m in sorted({r["modality"] for r in rows})}
    groups["all"] = rows
    summary = []
    for name, group in groups.items():
        if not group:
            continue
        entry = {"modality": name, "cases": len(group),
                 "over_budget": sum(r["over_budget"] for r in group),
                 "failed": sum(bool(r["error"]) for r in group),
                 "mean_total_time_s": float(np.mean([r["TotalRunningTime"] for r in group]))}
        entry.update(_means(group))
        summary.append(entry)
    return summary


def summarize_strata(class_rows: list[dict]) -> list[dict]:
    """Means over classes (targets) per size stratum, overall and per modality."""
    summary = []
    for name in ["all", *sorted({r["modality"] for r in class_rows})]:
        of_modality = [r for r in class_rows if name in ("all", r["modality"])]
        for size in STRATA:
            group = [r for r in of_modality if r["stratum"] == size]
            if group:
                summary.append({"modality": name, "stratum": size, "targets": len(group), **_means(group)})
    return summary


def write_summary(path: Path, summary: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


def format_strata(summary: list[dict]) -> str:
    """A fixed-width table for the terminal: one line per modality and size stratum, budget rule applied."""
    lines = [f"{'modality':<11}{'stratum':<8}{'targets':>8}{'DSC_AUC':>9}{'NSD_AUC':>9}{'DSC_Fin':>9}{'NSD_Fin':>9}"]
    for e in summary:
        lines.append(f"{e['modality']:<11}{e['stratum']:<8}{e['targets']:>8}{e['scored_DSC_AUC']:>9.3f}"
                     f"{e['scored_NSD_AUC']:>9.3f}{e['scored_DSC_Final']:>9.3f}{e['scored_NSD_Final']:>9.3f}")
    return "\n".join(lines)


def format_summary(summary: list[dict]) -> str:
    """A fixed-width table for the terminal."""
    head = f"{'modality':<11}{'cases':>6}{'DSC_AUC':>9}{'NSD_AUC':>9}{'DSC_Fin':>9}{'NSD_Fin':>9}" \
           f"{'time s':>8}{'over':>6}{'failed':>7}"
    lines = [head]
    for e in summary:
        lines.append(f"{e['modality']:<11}{e['cases']:>6}{e['DSC_AUC']:>9.3f}{e['NSD_AUC']:>9.3f}"
                     f"{e['DSC_Final']:>9.3f}{e['NSD_Final']:>9.3f}{e['mean_total_time_s']:>8.1f}"
                     f"{e['over_budget']:>6}{e['failed']:>7}")
    return "\n".join(lines)


def plot_rounds(rows: list[dict], path: Path) -> None:
    """Mean DSC and NSD per call (1 = box call, 2-6 = click rounds) per modality, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    groups = sorted({r["modality"] for r in rows}) + ["all"]
    for metric, ax in zip(("DSC", "NSD"), axes):
        for name in groups:
            group = rows if name == "all" else [r for r in rows if r["modality"] == name]
            means = [np.mean([r[f"{metric}_{i}"] for r in group]) for i in ROUNDS]
            ax.plot(list(ROUNDS), means, marker="o", label=f"{name} ({len(group)})",
                    linestyle="--" if name == "all" else "-")
        ax.set_title(f"mean {metric} per call")
        ax.set_xlabel("call (1 = box, 2-6 = clicks 1-5)")
        ax.set_xticks(list(ROUNDS))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
