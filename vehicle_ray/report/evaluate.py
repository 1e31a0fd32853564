"""Evaluate a model on a labeled set through the scoring pipeline, and draw the pictures.

Writes metrics.json, confusion_matrix.png, top_losses.png, predictions.parquet (joined with the
truth) and report.md. The TTA-off accuracy comes for free: the plain pass is one of TTA's passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from vehicle_ray.data import FN, LABEL, read_labeled_csv
from vehicle_ray.errors import InputError
from vehicle_ray.report.plots import confusion_matrix_plot, top_losses_plot
from vehicle_ray.score.driver import score
from vehicle_ray.score.model import resolve_model
from vehicle_ray.score.options import ScoreOptions

TOP_LOSSES = 9


def classification_metrics(actual: list[str], predicted: list[str], classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: actual)."""
    precision, recall, f1, support = precision_recall_fscore_support(actual, predicted, labels=classes, zero_division=0)
    matrix = confusion_matrix(actual, predicted, labels=classes)
    return {
        "n": len(actual),
        "accuracy": float(np.mean(np.asarray(actual) == np.asarray(predicted))) if actual else float("nan"),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {"classes": classes, "rows_actual_columns_predicted": matrix.tolist()},
    }


def evaluate(
    model: str | Path,
    csv: str | Path,
    images: str | Path,
    out: str | Path,
    fn_col: str | int = 0,
    label_col: str | int = 1,
    opts: ScoreOptions = ScoreOptions(),
    allow_pickle: bool = False,
) -> dict[str, Any]:
    spec = resolve_model(model, allow_pickle)
    data = read_labeled_csv(csv, images, fn_col, label_col)
    unknown = sorted(set(data.classes) - set(spec.classes))
    if unknown:
        raise InputError(
            f"labels not among the model's classes {spec.classes}: {', '.join(unknown)} "
            f"({int(data.items[LABEL].isin(unknown).sum())} rows)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "_listing.csv"
    data.items[[FN]].to_csv(listing, index=False)
    scoring = out / "_scoring"
    shutil.rmtree(scoring, ignore_errors=True)
    summary = score(
        model,
        listing,
        scoring,
        images=images,
        allow_pickle=allow_pickle,
        opts=opts.replace(overwrite=True, incremental=False, emit_plain=True, fn_col=0),
    )
    truth = data.items.assign(path=[data.root.full_name(f) for f in data.items[FN]]).rename(columns={LABEL: "actual"})
    predictions = pd.read_parquet(scoring / "predictions").drop(columns=["run"], errors="ignore")
    joined = truth.merge(predictions, on="path", how="inner")
    classes = spec.classes
    probs = np.stack(joined["probabilities"].to_numpy()) if len(joined) else np.zeros((0, len(classes)))
    actual_idx = joined["actual"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    joined["p_actual"] = probs[np.arange(len(joined)), actual_idx] if len(joined) else []
    joined["loss"] = -np.log(np.clip(joined["p_actual"].to_numpy(dtype=float), 1e-12, 1.0))
    metrics = classification_metrics(joined["actual"].tolist(), joined["label"].tolist(), classes)
    plain = np.stack(joined["plain_probabilities"].to_numpy()) if len(joined) else probs
    metrics["accuracy_no_tta"] = float((plain.argmax(1) == actual_idx).mean()) if len(joined) else float("nan")
    metrics["tta"] = summary.tta
    metrics["unscored"] = summary.errors
    metrics["model_id"] = spec.model_id
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    joined.drop(columns=["plain_probabilities"]).to_parquet(out / "predictions.parquet", index=False)
    matrix = np.asarray(metrics["confusion_matrix"]["rows_actual_columns_predicted"])
    confusion_matrix_plot(matrix, classes, out / "confusion_matrix.png")
    wrong = joined[joined["label"] != joined["actual"]].nlargest(TOP_LOSSES, "loss")
    top_losses_plot(wrong, lambda p: _thumbnail(data, truth, p), out / "top_losses.png")
    _write_report(out, metrics, summary.errors)
    shutil.rmtree(scoring)
    listing.unlink()
    return metrics


def _thumbnail(data, truth: pd.DataFrame, path: str) -> Image.Image:
    name = truth.loc[truth["path"] == path, FN].iloc[0]
    with data.root.fs.open_input_file(data.root.path(name)) as f:
        img = Image.open(f)
        img.load()
    return img.convert("RGB")


def _write_report(out: Path, metrics: dict[str, Any], unscored: int) -> None:
    lines = [
        "# Evaluation report",
        "",
        f"Model `{metrics['model_id']}` on {metrics['n']} labeled images "
        f"(TTA n={metrics['tta']['n']}, beta={metrics['tta']['beta']}); {unscored} files could not be scored.",
        "",
        f"* accuracy with TTA: **{metrics['accuracy']:.4f}**",
        f"* accuracy without TTA: {metrics['accuracy_no_tta']:.4f}",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {c} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
            for c, m in metrics["per_class"].items()
        ],
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "Most confidently wrong (prediction/actual/loss/probability of actual):",
        "",
        "![top losses](top_losses.png)",
        "",
        "Data: [metrics.json](metrics.json), [predictions.parquet](predictions.parquet).",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
