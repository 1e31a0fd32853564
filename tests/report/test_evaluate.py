"""Evaluation reports and training curves."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import LEARNED_ACCURACY, run_cli
from vehicle_ray.data import LabeledFiles
from vehicle_ray.report.evaluate import classification_metrics, evaluate


def test_metrics_equal_a_direct_computation():
    actual = ["car", "car", "ambulance", "ambulance", "ambulance", "police"]
    predicted = ["car", "ambulance", "ambulance", "ambulance", "car", "car"]
    m = classification_metrics(actual, predicted, ["ambulance", "car", "police"])
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(3 / 6)
    # ambulance: predicted 3 times, 2 right; actual 3 times, 2 found
    assert m["per_class"]["ambulance"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # car: predicted 3 times, 1 right; actual 2 times, 1 found
    assert m["per_class"]["car"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert m["per_class"]["police"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert m["confusion_matrix"]["rows_actual_columns_predicted"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]


def _png_ok(path, min_w=300, min_h=200):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= min_w and img.height >= min_h
        assert np.asarray(img.convert("L")).std() > 5


@pytest.mark.slow
def test_evaluate_report_on_held_out_labels(trained_model, sample_dir, tmp_path, ray_local):
    m = evaluate(
        trained_model, LabeledFiles(sample_dir / "test_labels.csv", sample_dir / "images"), tmp_path / "report"
    )
    out = tmp_path / "report"
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    joined = pd.read_parquet(out / "predictions.parquet")
    assert len(joined) == m["n"] == 100
    assert m["accuracy"] == pytest.approx((joined["label"] == joined["actual"]).mean())
    assert m["accuracy"] >= LEARNED_ACCURACY and 0.5 <= m["accuracy_no_tta"] <= 1.0
    assert sum(map(sum, m["confusion_matrix"]["rows_actual_columns_predicted"])) == 100
    _png_ok(out / "confusion_matrix.png")
    _png_ok(out / "top_losses.png")
    report = (out / "report.md").read_text()
    assert "confusion_matrix.png" in report and "top_losses.png" in report and f"{m['accuracy']:.4f}" in report
    # decisions: served probabilities are calibrated; the model's operating point (class "1") is marked
    assert m["calibration"]["calibrated"] and 0.0 <= m["calibration"]["ece"] <= 1.0
    assert sum(b["count"] for b in m["calibration"]["reliability"]) == 100
    d = m["decision"]
    assert d["positive_class"] == "1" and 0.5 < d["roc_auc"] <= 1.0 and 0.5 < d["average_precision"] <= 1.0
    assert (
        d["operating_point"]["threshold"]
        == json.loads((trained_model / "model.json").read_text())["operating_point"]["threshold"]
    )
    table = d["threshold_table"]
    assert [r["threshold"] for r in table][:2] == [0.05, 0.1] and all(0 <= r["uncertain"] <= 1 for r in table)
    assert [r["recall"] for r in table] == sorted((r["recall"] for r in table), reverse=True)
    for png in ("reliability.png", "pr_roc.png"):
        _png_ok(out / png)
        assert png in report
    assert "| threshold | precision | recall | F1 | flagged | uncertain |" in report


@pytest.mark.slow
def test_training_writes_curves(trained_model):
    _png_ok(trained_model / "training_curves.png", 600, 250)


@pytest.mark.slow
def test_unknown_labels_are_reported_not_dropped(trained_model, sample_dir, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image_names,kind\n1000.jpg,0\n1001.jpg,fire_truck\n1002.jpg,fire_truck\n")
    r = run_cli(
        "evaluate",
        "--model",
        str(trained_model),
        "--csv",
        str(csv),
        "--images",
        str(sample_dir / "images"),
        "--out",
        str(tmp_path / "r"),
    )
    assert r.returncode == 2
    assert "labels not among the model's classes" in r.stderr and "fire_truck (2 rows)" in r.stderr
