"""Adaptive TTA end to end on the tests' trained model: the threshold fitted at training, the rows that
skip served exactly what --no-tta serves, the others full TTA, each row and the summary saying which,
an artifact without a threshold falling back to full TTA, and evaluate's side-by-side report.

TTA's augmented passes draw random augmentations (as fastai's Learner.tta does), so two full-TTA runs
do not give bit-equal blends; the rows that got the augmented passes are compared with full TTA within
the spread two full-TTA runs show between themselves."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from vehicle_ray.adaptive_tta import CANDIDATES, TARGET_AGREEMENT
from vehicle_ray.data import LabeledFiles
from vehicle_ray.report.evaluate import evaluate
from vehicle_ray.score.driver import score
from vehicle_ray.score.options import ScoreOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def scored(model, sample_dir, out, **options) -> tuple[pd.DataFrame, object]:
    summary = score(model, sample_dir / "images", out, opts=ScoreOptions(tta_precision="full", **options))
    return pd.read_parquet(out / "predictions").sort_values("path").reset_index(drop=True), summary


def probs(rows: pd.DataFrame) -> np.ndarray:
    return np.stack(rows["probabilities"].to_numpy())


def test_adaptive_tta_skips_where_the_plain_pass_is_sure(trained_model, sample_dir, tmp_path, ray_local):
    record = json.loads((trained_model / "model.json").read_text())["adaptive_tta"]
    assert record["threshold"] in CANDIDATES and [r["threshold"] for r in record["candidates"]] == list(CANDIDATES)
    chosen = next(r for r in record["candidates"] if r["threshold"] == record["threshold"])
    assert chosen["agreement"] >= TARGET_AGREEMENT

    adaptive, summary = scored(trained_model, sample_dir, tmp_path / "adaptive", tta_mode="adaptive")
    full, _ = scored(trained_model, sample_dir, tmp_path / "full")
    again, _ = scored(trained_model, sample_dir, tmp_path / "again")
    plain, _ = scored(trained_model, sample_dir, tmp_path / "plain", no_tta=True)
    raw, _ = scored(trained_model, sample_dir, tmp_path / "raw", no_tta=True, calibration=False)
    n = len(adaptive)
    assert n == len(full) == len(plain) == 500 and (adaptive["path"] == plain["path"]).all()

    skipped = (adaptive["tta_passes"] == 1).to_numpy()
    # the gate: the raw plain pass's confidence against model.json's threshold, row by row
    assert np.array_equal(skipped, probs(raw).max(1) >= record["threshold"])
    assert set(adaptive.loc[~skipped, "tta_passes"]) <= {summary.tta["n"] + 1}
    assert 0.5 < skipped.mean() < 1.0, skipped.mean()  # this model is sure of most images, not all
    # rows that skipped: exactly what --no-tta serves (the plain pass at fp32, its own temperature)
    assert np.array_equal(probs(adaptive)[skipped], probs(plain)[skipped])
    assert (adaptive["decision"][skipped] == plain["decision"][skipped]).all()
    # rows that did not: blended (not the plain pass's), as close to full TTA as full TTA is to itself
    assert not (probs(adaptive)[~skipped] == probs(plain)[~skipped]).all(axis=1).any()
    spread = np.abs(probs(full) - probs(again))[~skipped].mean()
    assert np.abs(probs(adaptive) - probs(full))[~skipped].mean() <= 3 * spread + 0.01
    # labels: what skipping changes — the plain pass's label where full TTA's, stable over two runs,
    # says otherwise — stays within 0.5% of the images (the augmented rows' labels move only by TTA's
    # own randomness, as full TTA's do between two runs)
    stable = (full["label"] == again["label"]).to_numpy()
    changed = skipped & stable & (plain["label"] != full["label"]).to_numpy()
    assert changed.sum() <= 0.005 * n, changed.sum()

    assert summary.tta["mode"] == "adaptive" and summary.tta["threshold"] == record["threshold"]
    assert summary.tta["plain_only"] == skipped.sum() and summary.tta["augmented"] == (~skipped).sum()
    assert summary.tta["passes_per_image"] == pytest.approx(adaptive["tta_passes"].mean(), abs=1e-4)
    assert summary.calibration["applied"] and summary.calibration["plain_temperature"] is not None
    recorded = json.loads((tmp_path / "adaptive" / "summary.json").read_text())
    assert recorded["tta"]["plain_only"] == skipped.sum()


def test_rows_describe_themselves(trained_model, sample_dir, tmp_path, ray_local):
    rows, _ = scored(trained_model, sample_dir, tmp_path / "out", no_tta=True)
    classes = json.loads((trained_model / "model.json").read_text())["classes"]
    for _, row in rows.head(20).iterrows():
        mapped = dict(row["class_probabilities"])
        assert list(mapped) == classes and np.allclose(list(mapped.values()), row["probabilities"])
        assert max(mapped, key=mapped.get) == row["label"]
    stamps = rows["scored_at"]
    assert str(stamps.dt.tz) == "UTC" and (pd.Timestamp.now(tz="UTC") - stamps).max() < pd.Timedelta(minutes=10)
    # DuckDB reads the map as a MAP, by class name (docs/outputs.md shows this query)
    import duckdb

    glob = str(tmp_path / "out" / "predictions" / "*" / "*.parquet")
    kind, positive = duckdb.sql(
        f"SELECT typeof(class_probabilities), class_probabilities['{classes[1]}'] FROM read_parquet('{glob}') "
        f"WHERE path = '{rows['path'][0]}'"
    ).fetchone()
    assert kind == "MAP(VARCHAR, FLOAT)" and positive == pytest.approx(rows["probabilities"][0][1])


def test_an_artifact_without_a_threshold_scores_full_tta(trained_model, sample_dir, tmp_path, ray_local, caplog):
    old = tmp_path / "old_model"
    shutil.copytree(trained_model, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["adaptive_tta"]
    (old / "model.json").write_text(json.dumps(meta))
    listing = tmp_path / "few.csv"
    pd.read_csv(sample_dir / "test.csv").head(40).to_csv(listing, index=False)
    summary = score(
        old, listing, tmp_path / "out", images=sample_dir / "images", opts=ScoreOptions(tta_mode="adaptive")
    )
    rows = pd.read_parquet(tmp_path / "out" / "predictions")
    assert summary.tta["mode"] == "full" and set(rows["tta_passes"]) == {summary.tta["n"] + 1}
    assert "scoring with full TTA" in caplog.text
    # --tta-threshold gives an old artifact a threshold
    forced = score(
        old,
        listing,
        tmp_path / "forced",
        images=sample_dir / "images",
        opts=ScoreOptions(tta_mode="adaptive", tta_threshold=0.5),
    )
    assert forced.tta["mode"] == "adaptive" and forced.tta["plain_only"] == 40  # two classes: always >= 0.5


def test_evaluate_reports_full_and_adaptive_side_by_side(trained_model, sample_dir, tmp_path, ray_local):
    m = evaluate(
        trained_model, LabeledFiles(sample_dir / "test_labels.csv", sample_dir / "images"), tmp_path / "report"
    )
    modes = m["tta_modes"]
    assert modes["full"]["passes_per_image"] == m["tta"]["n"] + 1 and modes["full"]["accuracy"] == m["accuracy"]
    adaptive = modes["adaptive"]
    assert 1.0 <= adaptive["passes_per_image"] < modes["full"]["passes_per_image"]
    assert adaptive["label_agreement_with_full"] >= 0.995 and abs(adaptive["accuracy"] - m["accuracy"]) <= 0.01
    assert {"operating_point_recall", "ece"} <= set(adaptive)
    assert "## Full and adaptive TTA" in (tmp_path / "report" / "report.md").read_text()
