"""Distributed fine-tuning: the recipe's staged fastai schedule on Ray Train workers.

The driver validates input, then runs a TorchTrainer whose workers (worker.py) each build the same
fastai learner and run `fit_one_cycle` per stage with RayTrainCallback attached. Rank 0 builds the
artifact inside the final checkpoint; the driver publishes it to --out atomically. The driver only
imports the light half (train_launch.py), never fastai.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from vehicle_ray.artifact import open_artifact, publish, require_free_output
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import check_split, read_labeled_csv, split_indices
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe
from vehicle_ray.train_launch import (
    ARTIFACT_SUBDIR,
    FAIL_AFTER_EPOCH_ENV,
    TRAIN_LOG_LEVEL,
    EpochPrinter,
    WorkerConfig,
    run_worker,
)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    metrics: dict[str, float]
    seconds: float


def default_threads(workers: int, cpus_per_worker: float | None, resources: dict[str, float]) -> float:
    if cpus_per_worker is not None:
        return cpus_per_worker
    return max(1, int(resources.get("CPU", 1) // workers))


def train(
    csv: str | Path,
    images: str | Path,
    out: str | Path,
    recipe: Recipe,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
    fn_col: str | int = 0,
    label_col: str | int = 1,
    overwrite: bool = False,
) -> TrainResult:
    """Train the recipe on Ray Train and publish the artifact to `out`."""
    t0 = time.perf_counter()
    if workers < 1:
        raise InputError("--workers must be >= 1")
    out = Path(out).resolve()
    require_free_output(out, overwrite)
    data = read_labeled_csv(csv, images, fn_col, label_col)
    train_idx, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    check_split(data, train_idx)
    if not data.root.is_local:
        raise InputError(f"training reads images from a local or shared filesystem; {data.root.uri} is not one")
    state_dict = None
    if recipe.pretrained:  # fastai/torchvision are imported only when there are weights to fetch
        from vehicle_ray.learner import pretrained_state_dict

        state_dict = pretrained_state_dict(recipe)
    resources = init_ray()
    require_shared_path(str(images), "--images")
    require_shared_path(storage_path or "~/ray_results", "--storage-path")
    if use_gpu and resources.get("GPU", 0) < 1:
        raise InputError("--gpu given but the Ray cluster has no GPU (use --cpu)")
    cpus = default_threads(workers, cpus_per_worker, resources)
    cfg = WorkerConfig(data=data, recipe=recipe, valid_idx=valid_idx, threads=max(1, int(cpus)),
                       fail_after_epoch=int(os.environ.get(FAIL_AFTER_EPOCH_ENV, "0")))
    run_name = name or f"vehicle-ray-train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        run_worker,
        train_loop_config={"worker_config": pickle.dumps(cfg),
                           "weights_ref": ray.put(state_dict) if state_dict is not None else None},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[EpochPrinter(recipe.metrics)],
            logging_config=LoggingConfig(log_level=TRAIN_LOG_LEVEL),
        ),
    )
    print(f"training {recipe.arch} on {len(train_idx)} images ({len(valid_idx)} validation), "
          f"{workers} worker(s) x {cpus:g} CPU{', GPU' if use_gpu else ''}; run {run_name}", flush=True)
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        publish(Path(d) / ARTIFACT_SUBDIR, out, overwrite=overwrite)
    meta = open_artifact(out).meta
    return TrainResult(out=out, metrics=meta["metrics"], seconds=time.perf_counter() - t0)
