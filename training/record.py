"""A run's record: the loss curve as a PNG from RUN_DIR/log.csv.

    .venv/bin/python -m training.record RUN_DIR     # writes RUN_DIR/loss.png
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np


def plot_loss(run_dir: Path, window: int = 50) -> Path:
    """Loss per step (faint) and its moving average, split by Dice and BCE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    step = np.array([int(r["step"]) for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, colour in (("loss", "k"), ("dice", "tab:blue"), ("bce", "tab:orange")):
        values = np.array([float(r[key]) for r in rows])
        ax.plot(step, values, colour, alpha=0.15, lw=0.5)
        if len(values) >= window:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(step[window - 1:], smooth, colour, label=f"{key} ({window}-step mean)")
    hours = sum(float(r["seconds"]) for r in rows) / 3600
    ax.set(xlabel="step", ylabel="loss", title=f"{run_dir.name}: {len(rows)} steps, {hours:.2f} h of steps")
    if len(rows) >= window:
        ax.legend()
    ax.grid(alpha=0.3)
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot_loss(Path(sys.argv[1])))
