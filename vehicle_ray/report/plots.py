"""PNG figures for people: training curves, confusion matrix, top losses, calibration and decision
curves, scoring runs over time (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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


def reliability_plot(table: list[dict[str, float]], ece: float, path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin (bar width: the bin),
    the diagonal a perfectly calibrated model would follow, ECE in the title."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    lows = [r["low"] for r in table]
    widths = [r["high"] - r["low"] for r in table]
    ax.bar(lows, [r["accuracy"] for r in table], width=widths, align="edge", edgecolor="black", label="accuracy")
    ax.plot(
        [r["confidence"] for r in table],
        [r["accuracy"] for r in table],
        "o",
        color="C1",
        label="(mean confidence, accuracy)",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decision_curves_plot(curves: dict[str, Any], positive: str, point: dict[str, float] | None, path: Path) -> None:
    """PR curve (with average precision) and ROC curve (with AUC) for the positive class, the operating
    point marked on both. `curves`: precision, recall, fpr, tpr, ap, auc; `point`: precision, recall, fpr."""
    plt = pyplot()
    fig, (pr, roc) = plt.subplots(1, 2, figsize=(11, 4.8))
    pr.plot(curves["recall"], curves["precision"], label=f"PR (AP {curves['ap']:.3f})")
    pr.set_xlabel(f"recall ({positive})")
    pr.set_ylabel(f"precision ({positive})")
    pr.set_title("precision-recall")
    roc.plot(curves["fpr"], curves["tpr"], label=f"ROC (AUC {curves['auc']:.3f})")
    roc.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel(f"true positive rate (recall, {positive})")
    roc.set_title("ROC")
    if point is not None:
        label = f"operating point (threshold {point['threshold']:.3f})"
        pr.plot([point["recall"]], [point["precision"]], "o", color="C3", markersize=9, label=label)
        roc.plot([point["fpr"]], [point["recall"]], "o", color="C3", markersize=9, label=label)
    for ax in (pr, roc):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower left" if ax is pr else "lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def runs_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Scoring runs over time: predicted class rates, confidence (mean and 5-95% range) and drift
    (PSI, with the flag threshold); runs without monitoring are left out."""
    from vehicle_ray.monitoring import DRIFT_FLAG

    plt = pyplot()
    rows = [r for r in rows if r["class_rates"]]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.8 * len(rows) + 4), 9), sharex=True)
    for c in rows[0]["class_rates"] if rows else []:
        axes[0].plot(x, [r["class_rates"][c] for r in rows], marker="o", label=c)
    axes[0].set_ylabel("share of predictions")
    axes[0].set_title("predicted class rates")
    axes[1].plot(x, [r["mean_confidence"] for r in rows], marker="o", label="mean")
    axes[1].fill_between(
        x,
        [r["confidence_quantiles"]["p05"] for r in rows],
        [r["confidence_quantiles"]["p95"] for r in rows],
        alpha=0.3,
        label="5-95%",
    )
    axes[1].set_ylabel("confidence")
    axes[1].set_title("confidence")
    axes[2].plot(
        x,
        [np.nan if r["drift"] is None else r["drift"] for r in rows],
        marker="o",
        label="drift (PSI above sampling noise)",
    )
    axes[2].axhline(DRIFT_FLAG, color="C3", linestyle="--", label=f"flag at {DRIFT_FLAG}")
    axes[2].set_ylabel("PSI vs validation")
    axes[2].set_title("drift")
    axes[2].set_xticks(x, [r["time"] or r["run"] for r in rows], rotation=30, ha="right")
    axes[2].set_xlabel("run (UTC start)")
    for ax in axes:
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
