"""MLflow tracking and registry end to end, against a real `mlflow server` on loopback and real Ray Train."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from vehicle_ray.artifact import ARTIFACT_FILES, METRICS_CSV, open_artifact, sha256_file
from vehicle_ray.cli import cli
from vehicle_ray.sample_data import write_sample_data
from vehicle_ray.tracking import MODEL_CACHE_ENV
from vehicle_ray.train.config import FAIL_AFTER_EPOCH_ENV

pytestmark = pytest.mark.slow

EPOCH_KEYS = ("train_loss", "valid_loss", "accuracy", "error_rate", "lr", "seconds")


def _cli(*args: str) -> str:
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, r.output[-3000:] + repr(r.exception)
    return r.output


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _stop_after_first_epoch(server, experiment: str) -> threading.Thread:
    """Stop the server (by its pid) once the first epoch of a run in `experiment` has reached it."""
    from mlflow import MlflowClient

    def watch() -> None:
        c = MlflowClient(server.uri)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                exp = c.get_experiment_by_name(experiment)
                runs = c.search_runs([exp.experiment_id]) if exp else []
                if runs and c.get_metric_history(runs[0].info.run_id, "seconds"):
                    server.stop()
                    return
            except Exception:  # noqa: BLE001  (the server is still starting up the experiment)
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_tracked_training_survives_worker_kill_and_server_outage_then_registry_scoring(
    ray_local, mlflow_server, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    data = tmp_path / "data"
    write_sample_data(data, train=80, test=0, size=32, seed=5)
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "cache"))
    uri = mlflow_server.uri
    train = ["train", "--csv", str(data / "train.csv"), "--images", str(data / "images"), "--config", "tiny_cpu"]
    train += ["--size", "32", "--epochs", "3", "--workers", "2", "--max-failures", "1", "--name", "tracked"]
    train += ["--storage-path", str(tmp_path / "runs"), "--mlflow", "--mlflow-uri", uri, "--register-model", "vr"]

    # 1. Two workers; the server is stopped once epoch 1 reached it, and rank 1 is killed after epoch 2
    #    (Ray Train restores the checkpoint within the same fit). The training still succeeds.
    warnings = _Records()
    logging.getLogger("vehicle_ray.tracking").addHandler(warnings)
    monkeypatch.setenv(FAIL_AFTER_EPOCH_ENV, "2")
    try:
        watcher = _stop_after_first_epoch(mlflow_server, "vehicle-ray-train")
        _cli(*train, "--out", str(tmp_path / "m1"))
        watcher.join(timeout=5)
    finally:
        logging.getLogger("vehicle_ray.tracking").removeHandler(warnings)
    monkeypatch.delenv(FAIL_AFTER_EPOCH_ENV)
    assert mlflow_server.proc.poll() is not None  # stopped mid-training
    assert open_artifact(tmp_path / "m1").meta["metrics"]["accuracy"] > 0
    assert any("could not register model vr" in line for line in warnings.lines), warnings.lines

    # 2. Server back; a rerun with the same storage path and name (a restarted driver) continues the same
    #    MLflow run: the epochs the server missed, the artifact and the registered version arrive now.
    assert mlflow_server.start()
    _cli(*train, "--out", str(tmp_path / "m2"))
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("vehicle-ray-train").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    for key in EPOCH_KEYS:  # every epoch exactly once
        assert sorted(m.step for m in c.get_metric_history(run_id, key)) == [1, 2, 3], key
    history = pd.read_csv(tmp_path / "m1" / METRICS_CSV)
    last = [m for m in c.get_metric_history(run_id, "valid_loss") if m.step == 3][0]
    assert last.value == pytest.approx(history["valid_loss"].iloc[-1])
    assert run.data.params["arch"] == "resnet18" and run.data.params["size"] == "32"
    tags = run.data.tags
    assert tags["vehicle_ray.data.csv_sha256"] == sha256_file(data / "train.csv")
    assert tags["vehicle_ray.data.images"] == "80" and tags["vehicle_ray.train.workers"] == "2"
    assert tags["vehicle_ray.cluster.nodes"] == "1" and tags["vehicle_ray.code_version"]
    assert c.get_run(run_id).info.status == "FINISHED"
    # The artifact as published: same files, sha256s intact; the curves also under plots/.
    logged = open_artifact(
        c.download_artifacts(run_id, "model", str(tmp_path / "dl")),
        verify=[f for f in ARTIFACT_FILES if f != "model.json"],
    )
    assert logged.meta == open_artifact(tmp_path / "m2").meta  # what the rerun published
    assert logged.meta["model_sha256"] == open_artifact(tmp_path / "m1").meta["model_sha256"]
    assert [f.path for f in c.list_artifacts(run_id, "plots")] == ["plots/training_curves.png"]
    versions = c.search_model_versions("name = 'vr'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]

    # 3. Promote, then score by alias: downloaded once to the cache, verified, recorded in rows and
    #    summary, and the scoring run logged.
    c.set_registered_model_alias("vr", "production", "1")
    images = tmp_path / "few"
    images.mkdir()
    for f in sorted((data / "images").glob("*.jpg"))[:6]:
        shutil.copy(f, images)
    scored = tmp_path / "scored"
    _cli(
        *("score", "--model", "models:/vr@production", "--input", str(images), "--output", str(scored)),
        *("--no-tta", "--mlflow", "--mlflow-uri", uri),
    )
    assert (tmp_path / "cache" / "vr" / "1" / "model.json").is_file()
    rows = pq.read_table(scored / "predictions").to_pandas()
    assert len(rows) == 6
    assert set(rows["model_registry_name"]) == {"vr"} and set(rows["model_registry_version"]) == {"1"}
    summary = json.loads((scored / "summary.json").read_text())
    assert (summary["model_registry_name"], summary["model_registry_version"]) == ("vr", "1")
    score_runs = c.search_runs([c.get_experiment_by_name("vehicle-ray-score").experiment_id])
    assert len(score_runs) == 1
    assert score_runs[0].data.metrics["scored"] == 6 and score_runs[0].data.metrics["images_per_second"] > 0
    assert score_runs[0].data.tags["vehicle_ray.model_registry_version"] == "1"
