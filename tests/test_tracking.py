"""The MLflow extra's pure logic and its one-line errors (no server, no Ray; milliseconds)."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from vehicle_ray.cli import cli
from vehicle_ray.errors import EXIT_INPUT, InputError
from vehicle_ray.recipe import load_recipe
from vehicle_ray.tracking import MLFLOW_EXTRA, TrackingOptions, fetch_registered, numeric_fields
from vehicle_ray.train.tracking import TrainTracking, epoch_metrics, recipe_params, stage_offsets


@pytest.fixture
def no_mlflow(monkeypatch):
    """An environment without the extra: `import mlflow` raises ImportError."""
    monkeypatch.setitem(sys.modules, "mlflow", None)


def test_flags_without_the_extra_fail_in_one_line_naming_it(no_mlflow, tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("fn,label\n")
    args = ["--csv", str(csv), "--images", str(tmp_path), "--out", str(tmp_path / "m")]
    r = CliRunner().invoke(cli, ["train", *args, "--mlflow", "--mlflow-uri", "http://127.0.0.1:9"])
    assert r.exit_code == EXIT_INPUT
    assert r.output.strip().splitlines() == [f"Error: --mlflow needs MLflow, which is not installed: {MLFLOW_EXTRA}"]
    with pytest.raises(InputError, match="vehicle_ray\\[mlflow\\]"):
        fetch_registered("models:/vr@production", "http://127.0.0.1:9")


def test_tracking_options_are_validated(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InputError, match="--mlflow-uri"):
        TrackingOptions(enabled=True)
    with pytest.raises(InputError, match="--register-model needs --mlflow"):
        TrackingOptions(register_model="vr")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert TrackingOptions(uri=None).tracking_uri == "http://tracking:5000"
    assert TrackingOptions(uri="http://other:5000").tracking_uri == "http://other:5000"


@pytest.mark.parametrize("model", ["models:/vr", "models:/vr/latest", "models:/vr@", "models:/a/b/1"])
def test_registry_uris_are_checked_before_any_server_call(model):
    with pytest.raises(InputError, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
        fetch_registered(model, "http://127.0.0.1:9")


def test_summary_numbers_are_logged_generically_by_dotted_name():
    summary = {"run_id": "r", "scored": 6, "errors": 0, "drift": {"psi": 0.2, "ok": True}, "tta": {"n": 4}}
    assert numeric_fields(summary) == {"scored": 6.0, "errors": 0.0, "drift.psi": 0.2, "tta.n": 4.0}


def test_epochs_are_numbered_over_all_stages():
    recipe = load_recipe("emergency_vehicles")  # 5 frozen + 8 + 10 epochs
    tracking = TrainTracking(uri="u", run_id="r", offsets=stage_offsets(recipe), logged=frozenset())
    assert [tracking.step({"stage": s, "epoch": e}) for s, e in ((1, 1), (1, 5), (2, 1), (3, 10))] == [1, 5, 6, 23]
    report = {"stage": 2, "epoch": 1, "n_epochs": 8, "train_loss": 0.5, "accuracy": 0.9, "lr": 1e-3, "seconds": 2.0}
    assert epoch_metrics(report) == {"stage": 2.0, "train_loss": 0.5, "accuracy": 0.9, "lr": 1e-3, "seconds": 2.0}
    params = recipe_params(recipe)
    assert params["arch"] == "resnet50" and params["metrics"] == "accuracy,error_rate"
    assert (params["stage1.frozen"], params["stage3.lr_min"]) == ("True", "1e-05")
