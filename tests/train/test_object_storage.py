"""Training from and to object storage only (moto's S3 server): images, CSV, checkpoints and the model
on s3://, then scoring from the s3:// model."""

import json

import pandas as pd
import pytest

from tests.conftest import run_cli
from vehicle_ray.sample_data import write_sample_data


@pytest.fixture
def s3_data(s3_server, tmp_path, monkeypatch):
    """120 training + 20 test images at 48 px uploaded to s3://data, and empty buckets for runs and models."""
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    local = tmp_path / "data"
    write_sample_data(local, train=120, test=20, size=48, seed=5)
    s3 = boto3.client("s3")
    for bucket in ("data", "runs", "models"):
        s3.create_bucket(Bucket=bucket)
    for f in (local / "images").iterdir():
        s3.upload_file(str(f), "data", f"images/{f.name}")
    s3.upload_file(str(local / "train.csv"), "data", "train.csv")
    return local, s3


@pytest.mark.slow  # moto and two CLI processes: 8.3 s, an eighth of `make test-fast`
def test_missing_object_is_one_line_error_before_training(s3_data, s3_server, tmp_path):
    local, s3 = s3_data
    s3.delete_object(Bucket="data", Key=f"images/{pd.read_csv(local / 'train.csv').iloc[3, 0]}")
    r = run_cli(
        "train",
        "--csv",
        "s3://data/train.csv",
        "--images",
        "s3://data/images",
        "--out",
        "s3://models/m",
        "--config",
        "tiny_cpu",
        env=s3_server,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(
        "Error: 1 of 120 images listed in s3://data/train.csv do not exist under s3://data/images"
    )
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run_cli(
        "train",
        "--csv",
        "s3://data/nope.csv",
        "--images",
        "s3://data/images",
        "--out",
        "s3://models/m",
        env=s3_server,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip() == "Error: CSV file not found: s3://data/nope.csv", r.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_on_s3_only_then_score_from_the_s3_model(s3_data, s3_server, tmp_path):
    local, _ = s3_data
    env = {**s3_server, "VEHICLE_RAY_CACHE_DIR": str(tmp_path / "cache")}
    r = run_cli(
        "train",
        "--csv",
        "s3://data/train.csv",
        "--images",
        "s3://data/images",
        "--config",
        "tiny_cpu",
        "--size",
        "48",
        "--epochs",
        "2",
        "--workers",
        "2",
        "--storage-path",
        "s3://runs/ray",
        "--name",
        "s3run",
        "--out",
        "s3://models/vehicle",
        env=env,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "images from s3://data/images: copied 120" in log  # one rank of the node copies ...
    assert "copied 0 (0.0 MB), 120 already cached" in log  # ... the other finds the copies
    assert "model written to s3://models/vehicle" in log
    r = run_cli(
        "score",
        "--model",
        "s3://models/vehicle",
        "--input",
        str(local / "test.csv"),
        "--images",
        str(local / "images"),
        "--output",
        str(tmp_path / "scores"),
        "--no-tta",
        env=env,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    predictions = pd.read_parquet(tmp_path / "scores" / "predictions")
    assert len(predictions) == 20 and set(predictions["label"]) <= {"0", "1"}
    assert json.loads((tmp_path / "scores" / "summary.json").read_text())["scored"] == 20
