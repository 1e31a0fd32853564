"""PNG figures for people: confusion matrix, top losses, calibration and decision
curves, scoring runs over time (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vehicle_ray import columns as col
from vehicle_ray.plotting import pyplot


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
    titles = [f"{r[col.LABEL]}/{r[col.ACTUAL]} / {r[col.LOSS]:.2f} / {r[col.P_ACTUAL]:.2f}" for _, r in rows.iterrows()]
    image_grid(
        rows[col.PATH].tolist(),
        titles,
        load_image,
        "prediction/actual/loss/probability of actual",
        "no misclassified images",
        path,
        columns,
    )


def image_grid(
    paths: Sequence[str],
    titles: Sequence[str],
    load_image,
    suptitle: str,
    empty_text: str,
    path: Path,
    columns: int = 3,
) -> None:
    """Images in a grid, one title each (`load_image(path)` gives a PIL image); `empty_text` when none."""
    plt = pyplot()
    k = max(1, len(paths))
    n_rows = -(-k // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, 3.4 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    # more axes than images: the rest stay blank
    for ax, image_path, title in zip(axes.flat, paths, titles, strict=False):
        ax.imshow(load_image(image_path))
        ax.set_title(title, fontsize=9)
    fig.suptitle(suptitle)
    if not len(paths):
        axes.flat[0].text(0.5, 0.5, empty_text, ha="center", va="center")
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
