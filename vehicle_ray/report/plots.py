"""PNG figures for people: training curves, confusion matrix, top losses (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def confusion_matrix_plot(matrix: np.ndarray, classes: Sequence[str], path: Path) -> None:
    plt = pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * n + 3), max(4, 0.6 * n + 3)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > threshold else "black",
            )
    ax.set_title("confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def top_losses_plot(rows: pd.DataFrame, load_image, path: Path, columns: int = 3) -> None:
    """A grid like fastai's plot_top_losses: image, then predicted/actual/loss/probability of actual."""
    plt = pyplot()
    k = max(1, len(rows))
    n_rows = -(-k // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, 3.4 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    # more axes than rows: the rest stay blank
    for ax, (_, row) in zip(axes.flat, rows.iterrows(), strict=False):
        ax.imshow(load_image(row["path"]))
        ax.set_title(f"{row['label']}/{row['actual']} / {row['loss']:.2f} / {row['p_actual']:.2f}", fontsize=9)
    fig.suptitle("prediction/actual/loss/probability of actual")
    if rows.empty:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
