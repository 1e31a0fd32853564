"""Evaluate a model on a labeled set through the scoring pipeline, and draw the pictures.

Writes metrics.json, confusion_matrix.png, top_losses.png, reliability.png (with ECE), and for a
positive class pr_roc.png (PR and ROC curves with AP and AUC, the operating point marked) and a
threshold table; predictions.parquet (joined with the truth) and report.md. The TTA-off accuracy
comes for free: the plain pass is one of TTA's passes. Everything is measured on the probabilities
scoring serves (calibrated when the model has calibration).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from vehicle_ray import columns as col
from vehicle_ray.adaptive_tta import AdaptiveGate
from vehicle_ray.calibration import apply_temperature, ece, nll, reliability_table
from vehicle_ray.data import FN, LABEL, LabeledFiles, LabeledSet
from vehicle_ray.decision import OperatingTarget, pick_operating_point
from vehicle_ray.errors import InputError
from vehicle_ray.report.plots import confusion_matrix_plot, decision_curves_plot, reliability_plot, top_losses_plot
from vehicle_ray.score.driver import ScoreSummary, score
from vehicle_ray.score.model import ModelSpec, resolve_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.train.artifact_writer import record_operating_point

TOP_LOSSES = 9
TABLE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))
UNCERTAIN_HALF_WIDTH = 0.1  # the threshold table's "uncertain": probabilities within +-0.1 of the threshold


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


def at_threshold(scores: np.ndarray, is_positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1, false positive rate and the share flagged positive for `scores >= threshold`,
    plus the share within UNCERTAIN_HALF_WIDTH of it (what a band around the threshold sends to people)."""
    flagged = scores >= threshold
    precision, recall, f1, _ = precision_recall_fscore_support(is_positive, flagged, average="binary", zero_division=0)
    negatives = max(int((~is_positive).sum()), 1)
    return {
        "threshold": float(threshold),
        "precision": round(float(precision), 6),
        "recall": round(float(recall), 6),
        "f1": round(float(f1), 6),
        "fpr": round(float((flagged & ~is_positive).sum() / negatives), 6),
        "flagged": round(float(flagged.mean()), 6),
        "uncertain": round(float((np.abs(scores - threshold) <= UNCERTAIN_HALF_WIDTH).mean()), 6),
    }


def decision_metrics(
    probs: np.ndarray, actual_idx: np.ndarray, classes: list[str], positive: str, point: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json's `decision` section, the curves to draw) for one positive class: AP and ROC AUC,
    the threshold table, and the operating point's precision/recall on this set."""
    scores = probs[:, classes.index(positive)].astype(np.float32)
    is_positive = actual_idx == classes.index(positive)
    if is_positive.all() or not is_positive.any():
        raise InputError(f"the labeled set needs both {positive!r} and other images for PR/ROC curves")
    precision, recall, _ = precision_recall_curve(is_positive, scores)
    fpr, tpr, _ = roc_curve(is_positive, scores)
    curves = {
        "precision": precision,
        "recall": recall,
        "fpr": fpr,
        "tpr": tpr,
        "ap": float(average_precision_score(is_positive, scores)),
        "auc": float(roc_auc_score(is_positive, scores)),
    }
    section = {
        "positive_class": positive,
        "average_precision": round(curves["ap"], 6),
        "roc_auc": round(curves["auc"], 6),
        "uncertain_half_width": UNCERTAIN_HALF_WIDTH,
        "threshold_table": [at_threshold(scores, is_positive, t) for t in TABLE_THRESHOLDS],
        "operating_point": None
        if point is None
        else {**point, **at_threshold(scores, is_positive, point["threshold"])},
    }
    return section, curves


def _positive_class(spec: ModelSpec, target: OperatingTarget | None) -> str | None:
    """The class PR/ROC curves are drawn for: evaluate's --positive-class, else the model's operating
    point's, else the second class of a two-class model (model.json order), else none."""
    if target is not None:
        target.check_classes(spec.classes)
        return target.positive_class
    if spec.operating_point is not None:
        return spec.operating_point["positive_class"]
    return spec.classes[1] if len(spec.classes) == 2 else None


def evaluate(
    model: str | Path,
    labeled: LabeledFiles,
    out: str | Path,
    opts: ScoreOptions = ScoreOptions(),
    allow_pickle: bool = False,
    target: OperatingTarget | None = None,
    save_operating_point: bool = False,
) -> dict[str, Any]:
    """Score the labeled set and write the report. `target` picks an operating point on this set
    (saved into the model's model.json with `save_operating_point`)."""
    if save_operating_point and target is None:
        raise InputError("--save-operating-point needs --positive-class and a target")
    spec = resolve_model(model, allow_pickle)
    positive = _positive_class(spec, target)
    data = _labeled_set(spec, labeled)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, truth, joined = _score_labeled(model, data, labeled.images, out, opts, allow_pickle)
    classes = spec.classes
    probs = np.stack(joined[col.PROBABILITIES].to_numpy()) if len(joined) else np.zeros((0, len(classes)))
    plain = np.stack(joined[col.PLAIN_PROBABILITIES].to_numpy()) if len(joined) else probs
    actual_idx = joined[col.ACTUAL].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    joined[col.P_ACTUAL] = probs[np.arange(len(joined)), actual_idx] if len(joined) else []
    joined[col.LOSS] = -np.log(np.clip(joined[col.P_ACTUAL].to_numpy(dtype=float), 1e-12, 1.0))
    metrics = classification_metrics(joined[col.ACTUAL].tolist(), joined[col.LABEL].tolist(), classes)
    metrics["accuracy_no_tta"] = float((plain.argmax(1) == actual_idx).mean()) if len(joined) else float("nan")
    metrics.update(tta=summary.tta, unscored=summary.errors, model_id=spec.model_id)
    metrics["calibration"] = _calibration_section(probs, actual_idx, summary, out)
    point = None
    if positive is not None:
        scores = probs[:, classes.index(positive)]
        is_positive = actual_idx == classes.index(positive)
        point = pick_operating_point(scores, is_positive, target) if target is not None else spec.operating_point
        metrics["decision"], curves = decision_metrics(probs, actual_idx, classes, positive, point)
        decision_curves_plot(curves, positive, metrics["decision"]["operating_point"], out / "pr_roc.png")
        if save_operating_point:
            record_operating_point(model, {**point, "fitted_on": f"evaluate on {labeled.csv}"})
    metrics["tta_modes"] = tta_modes(spec, summary, probs, plain, actual_idx, positive, point)
    _write_outputs(out, metrics, joined, classes, lambda p: _thumbnail(data, truth, p))
    return metrics


def _labeled_set(spec: ModelSpec, labeled: LabeledFiles) -> LabeledSet:
    """The labeled CSV, checked against the model's classes."""
    data = labeled.read()
    unknown = sorted(set(data.classes) - set(spec.classes))
    if unknown:
        raise InputError(
            f"labels not among the model's classes {spec.classes}: {', '.join(unknown)} "
            f"({int(data.items[LABEL].isin(unknown).sum())} rows)"
        )
    return data


def _score_labeled(
    model: str | Path, data, images: str | Path, out: Path, opts: ScoreOptions, allow_pickle: bool
) -> tuple[ScoreSummary, pd.DataFrame, pd.DataFrame]:
    """(the scoring summary, the truth, the truth joined with the predictions): the labeled files through
    the scoring pipeline with full TTA and the plain pass kept (the TTA-off accuracy and adaptive TTA's
    side of the comparison come from the same run), in OUT's scratch directories, removed afterwards."""
    listing, scoring = out / "_listing.csv", out / "_scoring"
    data.items[[FN]].to_csv(listing, index=False)
    shutil.rmtree(scoring, ignore_errors=True)
    summary = score(
        model,
        listing,
        scoring,
        images=images,
        allow_pickle=allow_pickle,
        opts=opts.replace(
            overwrite=True, incremental=False, emit_plain=True, fn_col=0, tta_mode="full", tta_threshold=None
        ),
    )
    truth = data.items.assign(**{col.PATH: [data.root.full_name(f) for f in data.items[FN]]}).rename(
        columns={LABEL: col.ACTUAL}
    )
    predictions = pd.read_parquet(scoring / "predictions").drop(columns=[col.RUN], errors="ignore")
    shutil.rmtree(scoring)
    listing.unlink()
    return summary, truth, truth.merge(predictions, on=col.PATH, how="inner")


def _calibration_section(probs: np.ndarray, actual_idx: np.ndarray, summary: ScoreSummary, out: Path) -> dict:
    """metrics.json's `calibration` on the served probabilities, and reliability.png."""
    table = reliability_table(probs, actual_idx)
    section = {
        "calibrated": summary.calibration["applied"],
        "temperature": summary.calibration["temperature"],
        "ece": round(ece(probs, actual_idx), 6),
        "nll": round(nll(probs, actual_idx), 6),
        "reliability": table,
    }
    reliability_plot(table, section["ece"], out / "reliability.png")
    return section


def _write_outputs(
    out: Path, metrics: dict[str, Any], joined: pd.DataFrame, classes: list[str], thumbnail: Callable
) -> None:
    """metrics.json, predictions.parquet (joined with the truth), the confusion matrix, the top losses and
    report.md."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # pandas reads the class_probabilities map as (class, probability) pairs, which it cannot write back
    # as a map: as a dict per row it is written as a struct with a field per class
    joined[col.CLASS_PROBABILITIES] = joined[col.CLASS_PROBABILITIES].map(dict)
    joined.drop(columns=[col.PLAIN_PROBABILITIES]).to_parquet(out / "predictions.parquet", index=False)
    matrix = np.asarray(metrics["confusion_matrix"]["rows_actual_columns_predicted"])
    confusion_matrix_plot(matrix, classes, out / "confusion_matrix.png")
    wrong = joined[joined[col.LABEL] != joined[col.ACTUAL]].nlargest(TOP_LOSSES, col.LOSS)
    top_losses_plot(wrong, thumbnail, out / "top_losses.png")
    _write_report(out, metrics, metrics["unscored"])


def tta_modes(
    spec: ModelSpec,
    summary: ScoreSummary,
    probs: np.ndarray,
    plain: np.ndarray,
    actual_idx: np.ndarray,
    positive: str | None,
    point: dict[str, Any] | None,
) -> dict[str, Any]:
    """Full and adaptive TTA side by side on this set (accuracy, ECE, the operating point's recall and
    precision, passes per image). Adaptive TTA's rows are computed from the same scoring run: a row
    that skips is served the plain pass (at full precision, as adaptive scoring runs it, calibrated with
    the plain pass's temperature), any other row full TTA's; no adaptive entry without a threshold."""
    n = summary.tta["n"]
    modes = {"full": (probs, np.zeros(len(probs), dtype=bool))}
    threshold = (spec.adaptive_tta or {}).get("threshold")
    if threshold is not None and n:
        skipped = ~AdaptiveGate(threshold).needs_tta(plain)
        served_plain = plain
        if summary.calibration["applied"]:
            served_plain = apply_temperature(plain, spec.calibration["plain"]["temperature"])
        modes["adaptive"] = (np.where(skipped[:, None], served_plain, probs), skipped)
    report = {}
    for mode, (p, skipped) in modes.items():
        report[mode] = {
            "accuracy": round(float((p.argmax(1) == actual_idx).mean()), 6) if len(p) else None,
            "ece": round(ece(p, actual_idx), 6) if len(p) else None,
            "passes_per_image": round(float(np.where(skipped, 1, n + 1).mean()), 4) if len(p) else None,
            "label_agreement_with_full": round(float((p.argmax(1) == probs.argmax(1)).mean()), 6) if len(p) else None,
        }
        if positive is not None and point is not None and len(p):
            at = at_threshold(
                p[:, spec.classes.index(positive)], actual_idx == spec.classes.index(positive), point["threshold"]
            )
            report[mode].update(operating_point_recall=at["recall"], operating_point_precision=at["precision"])
    if "adaptive" in report:
        report["adaptive"]["threshold"] = threshold
    return report


def _thumbnail(data, truth: pd.DataFrame, path: str) -> Image.Image:
    name = truth.loc[truth[col.PATH] == path, FN].iloc[0]
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
        *_tta_mode_lines(metrics["tta_modes"]),
        *_calibration_lines(metrics),
        *_decision_lines(metrics.get("decision")),
        "Data: [metrics.json](metrics.json), [predictions.parquet](predictions.parquet).",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def _tta_mode_lines(modes: dict[str, Any]) -> list[str]:
    if "adaptive" not in modes:
        return []
    rows = [
        f"| {mode} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m.get('operating_point_recall', float('nan')):.3f} | "
        f"{m['passes_per_image']:.2f} | {m['label_agreement_with_full']:.4f} |"
        for mode, m in modes.items()
    ]
    return [
        f"## Full and adaptive TTA (threshold {modes['adaptive']['threshold']})",
        "",
        "| TTA | accuracy | ECE | operating point's recall | passes per image | labels as full TTA |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
    ]


def _calibration_lines(metrics: dict[str, Any]) -> list[str]:
    c = metrics["calibration"]
    served = f"temperature-scaled (T={c['temperature']:.3f})" if c["calibrated"] else "raw (not calibrated)"
    return [
        f"## Calibration\n\nProbabilities as served: {served}. ECE **{c['ece']:.4f}**, NLL {c['nll']:.4f}.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]


def _decision_lines(d: dict[str, Any] | None) -> list[str]:
    if d is None:
        return []
    point = d["operating_point"]
    lines = [
        f"## Decisions for `{d['positive_class']}`",
        "",
        f"Average precision **{d['average_precision']:.4f}**, ROC AUC **{d['roc_auc']:.4f}**.",
        "",
    ]
    if point is not None:
        lines += [
            f"Operating point: threshold {point['threshold']:.4f} (picked on {point.get('fitted_on', 'this set')}) "
            f"gives precision {point['precision']:.3f} and recall {point['recall']:.3f} on this set.",
            "",
        ]
    lines += [
        "![PR and ROC curves](pr_roc.png)",
        "",
        f"Threshold table (uncertain: share within +-{d['uncertain_half_width']} of the threshold):",
        "",
        "| threshold | precision | recall | F1 | flagged | uncertain |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {r['threshold']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{r['flagged']:.3f} | {r['uncertain']:.3f} |"
            for r in d["threshold_table"]
        ],
        "",
    ]
    return lines
