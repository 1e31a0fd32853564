"""The promotion gate on real models: the session's trained model against an untrained one of the same
recipe, on the sample data's held-out labels; the alias on a real `mlflow server`, the publish on moto S3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli
from vehicle_ray.errors import EXIT_PROMOTION_REFUSED, InputError
from vehicle_ray.report.promote import Gate, disagreement_rows, gate_metrics

pytestmark = pytest.mark.timeout(900)
DOCS_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "promotion-disagreements.png"


@pytest.fixture(scope="module")
def untrained_model(sample_dir, tmp_path_factory):
    """The tiny_cpu recipe's network with no training at all (a real artifact, in this process): a
    candidate that must never pass the gate against the trained model."""
    from vehicle_ray.data import read_labeled_csv, split_indices
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.train.artifact_writer import ArtifactContent, write_artifact
    from vehicle_ray.train.learner import build_dataloaders, build_learner

    recipe = load_recipe("tiny_cpu")
    data = read_labeled_csv(sample_dir / "train.csv", sample_dir / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    out = tmp_path_factory.mktemp("untrained") / "model"
    out.mkdir()
    write_artifact(out, learn, ArtifactContent(recipe, data.classes, []))
    return out


def promote_args(candidate, champion, sample_dir, out, *more: str) -> list[str]:
    return [
        "promote",
        str(candidate),
        "--champion",
        str(champion),
        "--holdout",
        str(sample_dir / "test_labels.csv"),
        "--images",
        str(sample_dir / "images"),
        "--out",
        str(out),
        "--no-tta",
        *more,
    ]


def test_gate_metrics_take_the_operating_point_else_the_argmax_decision():
    base = {"accuracy": 0.9, "calibration": {"ece": 0.05}, "per_class": {"1": {"precision": 0.7, "recall": 0.6}}}
    point = {"precision": 0.8, "recall": 0.95}
    with_point = {**base, "decision": {"positive_class": "1", "operating_point": point}}
    assert gate_metrics(with_point) == {"accuracy": 0.9, "precision": 0.8, "recall": 0.95, "ece": 0.05}
    argmax = {**base, "decision": {"positive_class": "1", "operating_point": None}}
    assert gate_metrics(argmax)["recall"] == 0.6
    assert gate_metrics(base)["recall"] is None  # no positive class: only accuracy and ECE


def test_gate_settings_are_checked_before_any_model_is_read(tmp_path):
    with pytest.raises(InputError, match="--metric must be one of accuracy, precision, recall, ece"):
        Gate(metric="f1")
    with pytest.raises(InputError, match="--max-drop must be >= 0"):
        Gate(max_drop=-0.1)


def test_disagreements_put_the_candidates_mistakes_first(tmp_path):
    truth = {"a.jpg": "1", "b.jpg": "0", "c.jpg": "1", "d.jpg": "0"}
    for role, labels in (("candidate", "1101"), ("champion", "0011")):
        (tmp_path / role).mkdir()
        pd.DataFrame(
            {"fn": list(truth), "actual": list(truth.values()), "label": list(labels), "confidence": 0.9}
        ).to_parquet(tmp_path / role / "predictions.parquet")
    rows = disagreement_rows(tmp_path)
    assert rows["fn"].tolist() == ["b.jpg", "c.jpg", "a.jpg"]  # b, c: the candidate is wrong; d: both agree
    assert rows.loc[0, "label_candidate"] == "1" and rows.loc[0, "label_champion"] == "0"


def register(mlflow_uri: str, name: str, artifact) -> str:
    """A registered version holding `artifact`, as `train --register-model` leaves one (run artifact
    `model`, tag model_sha256)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    meta = json.loads((artifact / "model.json").read_text())
    experiment = client.get_experiment_by_name("models") or client.get_experiment(client.create_experiment("models"))
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(artifact), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags={"model_sha256": meta["model_sha256"]}
    )
    return str(version.version)


@pytest.mark.slow
def test_alias_moves_only_for_a_candidate_that_is_not_worse(
    trained_model, untrained_model, sample_dir, tmp_path, mlflow_server
):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    good = register(mlflow_server.uri, "vehicles", trained_model)
    bad = register(mlflow_server.uri, "vehicles", untrained_model)
    client.set_registered_model_alias("vehicles", "production", good)
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "VEHICLE_RAY_MODEL_CACHE": str(tmp_path / "cache")}

    refused = run_cli(
        *promote_args(f"models:/vehicles/{bad}", "models:/vehicles@production", sample_dir, tmp_path / "r1"),
        "--alias",
        "production",
        "--mlflow",
        env=env,
    )
    assert refused.returncode == EXIT_PROMOTION_REFUSED, refused.stderr
    assert refused.stderr.startswith("Refused: candidate accuracy") and refused.stderr.strip().count("\n") == 0
    assert client.get_model_version_by_alias("vehicles", "production").version == good
    report = (tmp_path / "r1" / "report.md").read_text()
    assert "**refused**" in report and (tmp_path / "r1" / "disagreements.png").stat().st_size > 5000
    runs = client.search_runs(
        [client.get_experiment_by_name("vehicle-ray-promote").experiment_id], "tags.`vehicle_ray.promoted` = 'false'"
    )
    assert len(runs) == 1 and runs[0].data.metrics["candidate.accuracy"] < runs[0].data.metrics["champion.accuracy"]

    client.set_registered_model_alias("vehicles", "production", bad)  # the bad model got out somehow
    promoted = run_cli(
        # the candidate as a plain directory: its registered version is found by its weights' sha256
        *promote_args(trained_model, "models:/vehicles@production", sample_dir, tmp_path / "r2"),
        "--alias",
        "production",
        env=env,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert f"alias production -> vehicles version {good}" in promoted.stdout
    assert client.get_model_version_by_alias("vehicles", "production").version == good
    assert "**promoted**" in (tmp_path / "r2" / "report.md").read_text()
    if os.environ.get("VEHICLE_RAY_DOCS_SCREENSHOTS") == "1":
        DOCS_PICTURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "r2" / "disagreements.png", DOCS_PICTURE)


@pytest.mark.slow
def test_a_better_candidate_is_published_to_s3_without_mlflow(
    trained_model, untrained_model, sample_dir, tmp_path, s3_server
):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket="models")
    env = {**s3_server, "MLFLOW_TRACKING_URI": ""}
    target = "s3://models/vehicles/production"
    worse = run_cli(
        *promote_args(untrained_model, trained_model, sample_dir, tmp_path / "r1"), "--publish-to", target, env=env
    )
    assert worse.returncode == EXIT_PROMOTION_REFUSED, worse.stderr
    assert s3.list_objects_v2(Bucket="models").get("KeyCount", 0) == 0  # nothing published

    better = run_cli(
        *promote_args(trained_model, untrained_model, sample_dir, tmp_path / "r2"), "--publish-to", target, env=env
    )
    assert better.returncode == 0, better.stderr
    assert f"published to {target}" in better.stdout
    published = json.loads(s3.get_object(Bucket="models", Key="vehicles/production/model.json")["Body"].read())
    assert published["model_sha256"] == json.loads((trained_model / "model.json").read_text())["model_sha256"]
