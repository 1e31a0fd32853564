"""--json and --dry-run on a real model: `score --dry-run` plans without writing, `score --json` and
`evaluate --json` print one parseable JSON object on stdout (logs on stderr), and `runs` names the model."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # the session's trained model (one real Ray Train run)


def test_score_dry_run_then_json_then_runs(trained_model, sample_dir, tmp_path):
    out = tmp_path / "scores"
    listing = ["--input", str(sample_dir / "test.csv"), "--images", str(sample_dir / "images")]
    dry = run_cli("score", "--model", str(trained_model), *listing, "--out", str(out), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["listed"] == 100 and plan["previous_runs"] == 0
    assert plan["model"].startswith("resnet18-") and not out.exists()

    scored = run_cli("score", "--model", str(trained_model), *listing, "--out", str(out), "--json")
    assert scored.returncode == 0, scored.stderr
    summary = json.loads(scored.stdout)
    assert summary["scored"] + summary["errors"] == 100 and summary["model_id"] == plan["model"]
    assert json.loads((out / "summary.json").read_text())["run_id"] == summary["run_id"]

    again = run_cli("score", "--model", str(trained_model), *listing, "--out", str(out), "--dry-run")
    assert again.returncode == 2 and "--delete-previous-runs" in again.stderr  # what the real run would refuse

    runs = run_cli("runs", "--out", str(out), "--json")
    (row,) = json.loads(runs.stdout)
    assert row["model_id"] == summary["model_id"] and row["model_registry_version"] is None


def test_evaluate_json_is_the_metrics(trained_model, sample_dir, tmp_path):
    result = run_cli(
        "evaluate",
        "--model",
        str(trained_model),
        "--csv",
        str(sample_dir / "test_labels.csv"),
        "--images",
        str(sample_dir / "images"),
        "--out",
        str(tmp_path / "report"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 100 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == json.loads((tmp_path / "report" / "metrics.json").read_text())["accuracy"]
