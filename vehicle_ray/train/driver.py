"""Distributed fine-tuning: the recipe's staged fastai schedule on Ray Train workers.

The steps, in the order `train` runs them: validate options and input (no Ray yet), fetch pretrained
weights once on the driver, connect to Ray, run a TorchTrainer whose workers (loop.py) each build the
same fastai learner and run `fit_one_cycle` per stage with the callbacks of callback.py attached, and
publish the artifact that rank 0 wrote into the final checkpoint to --out atomically. The driver only
imports the light half (config.py, launch.py), never fastai; torch only once it builds the
TorchTrainer (Ray's TorchConfig needs it), so validation errors come back without that import.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from vehicle_ray.artifact import open_artifact, publish, require_free_output
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import check_split, read_labeled_csv, require_local_root, split_indices
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe
from vehicle_ray.train.config import (
    ARTIFACT_SUBDIR,
    FAIL_AFTER_EPOCH_ENV,
    TRAIN_LOG_LEVEL,
    TrainOptions,
    WorkerConfig,
)
from vehicle_ray.train.launch import EpochPrinter, run_worker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    metrics: dict[str, float]
    seconds: float


def cpus_per_worker(opts: TrainOptions, resources: dict[str, float]) -> float:
    """--cpus-per-worker, else an equal share of the cluster's CPUs (at least one)."""
    if opts.cpus_per_worker is not None:
        return opts.cpus_per_worker
    return max(1, int(resources.get("CPU", 1) // opts.workers))


def train(opts: TrainOptions, recipe: Recipe) -> TrainResult:
    """Train the recipe on Ray Train and publish the artifact to `opts.out`."""
    t0 = time.perf_counter()
    out = Path(opts.out).resolve()
    require_free_output(out, opts.overwrite)
    data = read_labeled_csv(opts.csv, opts.images, opts.fn_col, opts.label_col)
    train_idx, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    check_split(data, train_idx)
    require_local_root(data.root)
    state_dict = None
    if recipe.pretrained:  # fastai/torchvision are imported only when there are weights to fetch
        from vehicle_ray.train.learner import pretrained_state_dict

        state_dict = pretrained_state_dict(recipe)
    resources = init_ray()
    require_shared_path(str(opts.images), "--images")
    require_shared_path(opts.storage_path or "~/ray_results", "--storage-path")
    if opts.use_gpu and resources.get("GPU", 0) < 1:
        raise InputError("--gpu given but the Ray cluster has no GPU (use --cpu)")
    cpus = cpus_per_worker(opts, resources)
    cfg = WorkerConfig(data=data, recipe=recipe, valid_idx=valid_idx, threads=max(1, int(cpus)),
                       fail_after_epoch=int(os.environ.get(FAIL_AFTER_EPOCH_ENV, "0")))
    from ray.train.torch import TorchTrainer  # imports torch (Ray's TorchConfig): only once training starts

    run_name = opts.name or f"vehicle-ray-train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        run_worker,
        train_loop_config={"worker_config": pickle.dumps(cfg),
                           "weights_ref": ray.put(state_dict) if state_dict is not None else None},
        scaling_config=ScalingConfig(num_workers=opts.workers, use_gpu=opts.use_gpu,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=run_name,
            storage_path=opts.storage_path,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[EpochPrinter(recipe.metrics)],
            logging_config=LoggingConfig(log_level=TRAIN_LOG_LEVEL),
        ),
    )
    logger.info(f"training {recipe.arch} on {len(train_idx)} images ({len(valid_idx)} validation), "
                f"{opts.workers} worker(s) x {cpus:g} CPU{', GPU' if opts.use_gpu else ''}; run {run_name}")
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        publish(Path(d) / ARTIFACT_SUBDIR, out, overwrite=opts.overwrite)
    meta = open_artifact(out).meta
    return TrainResult(out=out, metrics=meta["metrics"], seconds=time.perf_counter() - t0)
