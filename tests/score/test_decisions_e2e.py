"""Calibrated scoring, the decision column, per-run monitoring and --fail-on-drift on the session's
trained model (trained with positive class "1" at recall 0.95), and an older artifact without any of it."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from vehicle_ray.artifact import MODEL_JSON
from vehicle_ray.calibration import apply_temperature
from vehicle_ray.cli import cli
from vehicle_ray.errors import EXIT_DRIFT
from vehicle_ray.score.driver import score
from vehicle_ray.score.options import ScoreOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _listing(tmp_path, sample_dir, name, keep):
    labels = pd.read_csv(sample_dir / "test_labels.csv", dtype=str)
    path = tmp_path / f"{name}.csv"
    labels[keep(labels)][["image_names"]].to_csv(path, index=False)
    return path


def _score_cli(model, listing, sample_dir, out, *flags):
    args = ["score", "--model", str(model), "--input", str(listing), "--images", str(sample_dir / "images")]
    return CliRunner().invoke(cli, [*args, "--output", str(out), "--incremental", "--no-tta", *flags])


def _old_artifact(trained_model, tmp_path):
    """The same model as an artifact of the previous version: no calibration, operating point or baseline."""
    old = tmp_path / "old_model"
    old.mkdir()
    for f in trained_model.iterdir():
        if f.name != MODEL_JSON:
            (old / f.name).symlink_to(f)
    meta = json.loads((trained_model / MODEL_JSON).read_text())
    for key in ("calibration", "operating_point", "monitoring_baseline"):
        del meta[key]
    (old / MODEL_JSON).write_text(json.dumps(meta))
    return old


def test_calibrated_decisions_drift_and_older_artifacts(trained_model, sample_dir, tmp_path, ray_local):
    meta = json.loads((trained_model / MODEL_JSON).read_text())
    for mode in ("tta", "plain"):
        fit = meta["calibration"][mode]
        assert fit["nll_after"] <= fit["nll_before"] and fit["temperature"] > 0
    point = meta["operating_point"]
    assert point["positive_class"] == "1" and point["met"] and point["recall"] >= 0.95
    assert set(meta["monitoring_baseline"]["plain"]["class_rates"]) == {"0", "1"}

    # one OUT, two runs: the test images as drawn (like training), then emergency vehicles only
    out = tmp_path / "out"
    mixed = _listing(tmp_path, sample_dir, "mixed", lambda t: t.index < 60)
    only_one = _listing(tmp_path, sample_dir, "one", lambda t: (t.index >= 60) & (t["emergency_or_not"] == "1"))
    first = _score_cli(trained_model, mixed, sample_dir, out, "--fail-on-drift", "0.5", "--uncertain-band", "0.4,0.6")
    assert first.exit_code == 0, first.output
    second = _score_cli(trained_model, only_one, sample_dir, out, "--fail-on-drift", "0.5")
    assert second.exit_code == EXIT_DRIFT and "Drift: " in second.stderr, second.output
    runs = CliRunner().invoke(cli, ["runs", str(out), "--json", "--plot", str(tmp_path / "runs.png")])
    rows = json.loads(runs.stdout)
    assert [r["files"] for r in rows] == [60, len(pd.read_csv(only_one))]  # both runs committed
    # drift reads PSI in excess of sampling noise: the raw confidence PSI of 60 images is ~0.3 from noise alone
    assert rows[0]["drift"] < 0.25 and rows[0]["flags"] == [], rows[0]
    assert rows[1]["drift"] > 0.5 and "class-drift" in rows[1]["flags"] and rows[1]["class_rates"]["1"] > 0.8
    with Image.open(tmp_path / "runs.png") as img:
        assert img.width >= 600 and np.asarray(img.convert("L")).std() > 5
    table = CliRunner().invoke(cli, ["runs", str(out)]).stdout.splitlines()
    assert table[0].startswith("RUN") and len(table) == 3

    predictions = pd.read_parquet(out / "predictions")
    first_rows = predictions[predictions["run"] == rows[0]["run"]].set_index("path").sort_index()
    probs = np.stack(first_rows["probabilities"].to_numpy())
    assert first_rows["calibrated"].all()
    p1 = probs[:, 1]
    band = (p1 >= 0.4) & (p1 <= 0.6)
    expected = np.where(band, "uncertain", np.where(p1 >= point["threshold"], "1", "0"))
    assert (first_rows["decision"].to_numpy() == expected).all()
    assert (first_rows["label"].to_numpy() == np.array(["0", "1"])[probs.argmax(1)]).all()  # label: argmax

    # the older artifact scores exactly as before: raw probabilities, decision == label, no drift
    few = _listing(tmp_path, sample_dir, "few", lambda t: t.index < 20)
    old = score(
        _old_artifact(trained_model, tmp_path),
        few,
        tmp_path / "old_out",
        images=sample_dir / "images",
        opts=ScoreOptions(no_tta=True),
    )
    assert old.calibration == {"applied": False, "temperature": None} and old.monitoring["drift"] is None
    old_rows = pd.read_parquet(tmp_path / "old_out" / "predictions").set_index("path").sort_index()
    assert not old_rows["calibrated"].any() and (old_rows["decision"] == old_rows["label"]).all()
    assert len(old_rows) == 20
    # the old rows are the raw probabilities the calibrated run scaled: applying the temperature to them
    # gives that run's rows (forward, not undoing it: a temperature at the fit's lower bound, as on this
    # perfectly separated validation set, saturates float32 and cannot be inverted)
    calibrated = np.stack(first_rows.loc[old_rows.index, "probabilities"].to_numpy())
    raw = np.stack(old_rows["probabilities"].to_numpy())
    assert np.abs(apply_temperature(raw, meta["calibration"]["plain"]["temperature"]) - calibrated).max() <= 1e-4
