"""matplotlib for files, and the training-curves figure that training writes into every artifact.

Shared by the training side (the artifact's training_curves.png, lr-find's plot) and the reports
(report/plots.py draws the rest on the same backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vehicle_ray.recipe import HISTORY_FIELDS


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display (workers, CI, servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: pd.DataFrame, path: Path) -> None:
    """Train/valid loss and every metric per epoch, with the stage boundaries marked."""
    plt = pyplot()
    metrics = [c for c in history.columns if c not in (*HISTORY_FIELDS, "train_loss", "valid_loss")]
    x = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(x, history["train_loss"], marker="o", label="train_loss")
    axes[0].plot(x, history["valid_loss"], marker="o", label="valid_loss")
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    for m in metrics:
        axes[1].plot(x, history[m], marker="o", label=m)
    axes[1].set_title("metrics (validation)")
    starts = x[history["stage"].ne(history["stage"].shift()).to_numpy()][1:]
    for ax in axes:
        for s in starts:
            ax.axvline(s - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (all stages; dashed: stage boundary)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
