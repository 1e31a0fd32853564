"""A training run in MLflow: one MLflow run per Ray Train run (storage path + name), continued on resume.

The driver opens (or finds) the MLflow run before fit(), the Ray Train controller logs each epoch's
metrics from `MlflowEpochLogger.after_report` (workers need no MLflow access), and the driver logs the
published artifact, the plots and any epochs the server missed at the end, then registers the model.
Steps are global epoch numbers (1..N over all stages); a step already logged is never logged again,
neither when Ray Train replays epochs after a worker failure nor when a rerun resumes the run.

Like launch.py this module stays free of torch and fastai: the controller unpickles the callback.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray.train import UserCallback

from vehicle_ray import __version__
from vehicle_ray.artifact import CURVES_PNG, METRICS_CSV, sha256_file
from vehicle_ray.data import LabeledSet
from vehicle_ray.location import is_uri
from vehicle_ray.log import use_cli_logging
from vehicle_ray.recipe import Recipe
from vehicle_ray.tracking import (
    REGISTRY_ARTIFACT_PATH,
    TrackingOptions,
    client,
    experiment_id,
    log_batch,
    tolerant,
)

logger = logging.getLogger(__name__)

TRAIN_RUN_TAG = "vehicle_ray.train_run"  # storage path/name of the Ray Train run: how a rerun finds its MLflow run
STEP_KEY = "seconds"  # in every epoch report: its history tells which steps the server already has
NOT_METRICS = ("epoch", "n_epochs", "done")


@dataclass(frozen=True)
class TrainTracking:
    """The open MLflow run of one training (picklable: the controller's callback carries it)."""

    uri: str
    run_id: str
    offsets: tuple[int, ...]  # epochs before each stage: global step = offsets[stage - 1] + epoch
    logged: frozenset[int]  # steps the server had when this driver started

    def step(self, report: dict[str, Any]) -> int:
        return self.offsets[int(report["stage"]) - 1] + int(report["epoch"])


def epoch_metrics(report: dict[str, Any]) -> dict[str, float]:
    """An epoch report's metrics as MLflow metrics: losses, recipe metrics, lr, seconds, stage."""
    return {
        k: float(v)
        for k, v in report.items()
        if k not in NOT_METRICS and isinstance(v, numbers.Real) and math.isfinite(v)
    }


def stage_offsets(recipe: Recipe) -> tuple[int, ...]:
    return tuple(itertools.accumulate((s.epochs for s in recipe.effective_stages()), initial=0))[:-1]


def recipe_params(recipe: Recipe) -> dict[str, str]:
    """The recipe flattened to MLflow params: stages as stageN.field, lists comma-joined."""
    params: dict[str, str] = {}
    for key, value in recipe.to_dict().items():
        if key == "stages":
            for i, stage in enumerate(value, start=1):
                params.update({f"stage{i}.{k}": str(v) for k, v in stage.items()})
        else:
            params[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return params


def code_version() -> str:
    """The git commit of the running code (with -dirty for local changes), else the package version."""
    here = Path(__file__).parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{sha}-dirty" if dirty else sha


def training_tags(csv: str | Path, data: LabeledSet, resources: dict[str, float], workers: int) -> dict[str, str]:
    """What a training run needs to be reproduced and compared: its data, code and cluster."""
    import ray

    return {
        "vehicle_ray.data.csv": str(csv),
        "vehicle_ray.data.csv_sha256": sha256_file(csv),
        "vehicle_ray.data.images": str(len(data.items)),
        "vehicle_ray.data.classes": ",".join(data.classes),
        "vehicle_ray.code_version": code_version(),
        "vehicle_ray.cluster.nodes": str(sum(1 for n in ray.nodes() if n.get("Alive"))),
        "vehicle_ray.cluster.cpus": f"{resources.get('CPU', 0):g}",
        "vehicle_ray.cluster.gpus": f"{resources.get('GPU', 0):g}",
        "vehicle_ray.train.workers": str(workers),
    }


def ray_run_key(storage_path: str | None, name: str) -> str:
    """Storage path + run name, as Ray Train resolves them: the identity of a resumable training."""
    storage = storage_path or "~/ray_results"
    base = storage.rstrip("/") if is_uri(storage) else str(Path(os.path.expanduser(storage)).resolve())
    return f"{base}/{name}"


def start_run(
    opts: TrackingOptions, ray_run: str, run_name: str, recipe: Recipe, tags: dict[str, str]
) -> TrainTracking | None:
    """The MLflow run of this Ray Train run: the one tagged with its storage path/name when it exists
    (a resumed training), else a new one with the recipe as params. None (with a warning) when the
    server cannot be reached: the training then runs untracked."""
    uri = opts.tracking_uri
    with tolerant("start the MLflow run"):
        mlflow_client = client(uri)
        exp = experiment_id(mlflow_client, opts.experiment or "vehicle-ray-train")
        found = mlflow_client.search_runs(
            [exp], filter_string=f"tags.`{TRAIN_RUN_TAG}` = '{ray_run}'", max_results=1, order_by=["start_time DESC"]
        )
        if found:
            run_id = found[0].info.run_id
            mlflow_client.update_run(run_id, status="RUNNING")
            logged = frozenset(m.step for m in mlflow_client.get_metric_history(run_id, STEP_KEY))
            logger.info(f"MLflow: continuing run {run_id} ({len(logged)} epochs logged before)")
        else:
            run = mlflow_client.create_run(exp, run_name=opts.run_name or run_name, tags={TRAIN_RUN_TAG: ray_run})
            run_id, logged = run.info.run_id, frozenset()
            log_batch(mlflow_client, run_id, {}, params=recipe_params(recipe))
            logger.info(f"MLflow: run {run_id} in experiment {opts.experiment or 'vehicle-ray-train'} at {uri}")
        for key, value in tags.items():
            mlflow_client.set_tag(run_id, key, value)
        return TrainTracking(uri=uri, run_id=run_id, offsets=stage_offsets(recipe), logged=logged)
    return None


class MlflowEpochLogger(UserCallback):
    """Logs each epoch's metrics (step = global epoch) from the Ray Train controller as it is reported.
    Survives worker-group restarts (the controller keeps it), so replayed epochs are skipped."""

    def __init__(self, tracking: TrainTracking):
        self.tracking = tracking
        self.logged = set(tracking.logged)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        report = metrics[0]
        if report.get("done"):
            return
        step = self.tracking.step(report)
        if step in self.logged:
            return
        use_cli_logging()
        with tolerant(f"log epoch {step}"):
            log_batch(client(self.tracking.uri), self.tracking.run_id, epoch_metrics(report), step=step)
            self.logged.add(step)


def fail_run(tracking: TrainTracking) -> None:
    with tolerant("mark the MLflow run failed"):
        client(tracking.uri).set_terminated(tracking.run_id, "FAILED")


def finish_run(
    tracking: TrainTracking,
    artifact: Path,
    meta: dict[str, Any],
    lr_find_png: Path | None = None,
    register_model: str | None = None,
) -> str | None:
    """Log what the epochs did not carry: epochs the server missed, the artifact directory (as
    published: same files, same sha256s), the plots and the model's identity; then register the model.
    Returns the registered version (None when not asked for or the server failed)."""
    mlflow_client = client(tracking.uri)
    run_id = tracking.run_id
    with tolerant("log the epochs the server missed"):
        _backfill(mlflow_client, tracking, pd.read_csv(artifact / METRICS_CSV).to_dict("records"))
    with tolerant("log the model artifact"):
        mlflow_client.log_artifacts(run_id, str(artifact), REGISTRY_ARTIFACT_PATH)
        for plot in (artifact / CURVES_PNG, lr_find_png):
            if plot is not None and plot.is_file():
                mlflow_client.log_artifact(run_id, str(plot), "plots")
        for key in ("model_id", "model_sha256"):
            mlflow_client.set_tag(run_id, f"vehicle_ray.{key}", meta[key])
    version = None
    if register_model:
        with tolerant(f"register model {register_model}"):
            version = _register(mlflow_client, register_model, run_id, meta)
    with tolerant("mark the MLflow run finished"):
        mlflow_client.set_terminated(run_id, "FINISHED")
    return version


def _backfill(mlflow_client, tracking: TrainTracking, history: list[dict[str, Any]]) -> None:
    """Epochs the server does not have (it was down when they were reported): logged now, in order."""
    have = {m.step for m in mlflow_client.get_metric_history(tracking.run_id, STEP_KEY)}
    missing = [(tracking.step(row), row) for row in history if tracking.step(row) not in have]
    for step, row in missing:
        log_batch(mlflow_client, tracking.run_id, epoch_metrics(row), step=step)
    if missing:
        logger.info(f"MLflow: logged {len(missing)} epochs the server had missed")


def _register(mlflow_client, name: str, run_id: str, meta: dict[str, Any]) -> str:
    """A new version of `name` for this run's model, unless this run already registered the same model
    (a rerun of a finished training publishes the same artifact again): then that version."""
    from mlflow.exceptions import MlflowException

    for existing in mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if existing.tags.get("model_sha256") == meta["model_sha256"]:
            logger.info(f"MLflow: {name} version {existing.version} already holds this model")
            return str(existing.version)
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = mlflow_client.create_model_version(
        name,
        f"runs:/{run_id}/{REGISTRY_ARTIFACT_PATH}",
        run_id=run_id,
        tags={"model_id": meta["model_id"], "model_sha256": meta["model_sha256"]},
    ).version
    logger.info(f"MLflow: registered {name} version {version} (models:/{name}/{version})")
    return str(version)
