"""Distributed fine-tuning: the recipe's staged fastai schedule on Ray Train workers.

The driver validates input, then runs a TorchTrainer whose workers each build the same fastai learner
and run `fit_one_cycle` per stage with RayTrainCallback attached. Rank 0 builds the artifact inside the
final checkpoint; the driver publishes it to --out atomically.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import fastai.callback.fp16  # noqa: F401  (patches Learner.to_fp16/to_fp32)
import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import load_model
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from vehicle_ray.artifact import open_artifact, publish, require_free_output, write_artifact
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import LabeledSet, check_split, read_labeled_csv, split_indices
from vehicle_ray.distributed import (
    WEIGHTS_FILE,
    Position,
    RayTrainCallback,
    read_position,
    sharded_train_dl,
    write_checkpoint,
)
from vehicle_ray.errors import InputError
from vehicle_ray.learner import build_dataloaders, build_learner, pretrained_state_dict
from vehicle_ray.recipe import Recipe

FAIL_AFTER_EPOCH_ENV = "VEHICLE_RAY_FAIL_AFTER_EPOCH"  # test-only: kill the last rank once after N epochs
ARTIFACT_SUBDIR = "artifact"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, resolved on the driver (absolute paths, split indices)."""

    data: LabeledSet
    recipe: Recipe
    valid_idx: np.ndarray
    weights_ref: Any  # ray.ObjectRef of the pretrained state_dict, or None
    threads: int
    fail_after_epoch: int


@dataclass(frozen=True)
class TrainResult:
    out: Path
    metrics: dict[str, float]
    seconds: float


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_report(rank: int, world_size: int, position: Position, fail_after: int, resumed: bool):
    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if fail_after and not resumed and rank == world_size - 1 and len(position.history) == fail_after:
            print(f"injected failure on rank {rank} after epoch {len(position.history)}", flush=True)
            os._exit(1)

    return report


def train_worker(cfg: WorkerConfig) -> None:
    """Ray Train per-worker loop: fastai's own loop per stage, with RayTrainCallback attached."""
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    recipe = cfg.recipe
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    _seed_everything(recipe.seed)
    dls = build_dataloaders(cfg.data, recipe, cfg.valid_idx, device)
    learn = build_learner(dls, recipe, ray.get(cfg.weights_ref) if cfg.weights_ref is not None else None)
    learn.model.to(device)
    learn.dls = DataLoaders(sharded_train_dl(dls.train, rank, world_size, recipe.seed), dls.valid, device=device)
    if device.type == "cuda":
        learn.to_fp16()
    learn.create_opt()
    position, resumed = Position(), False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            position = read_position(Path(d))
            load_model(Path(d) / WEIGHTS_FILE, learn.model, learn.opt, device=device)
        resumed = True
        if rank == 0:
            print(f"resumed from checkpoint: stage {position.stage + 1}, epoch {position.epoch} done "
                  f"({len(position.history)} epochs in history)", flush=True)
    report = _make_report(rank, world_size, position, cfg.fail_after_epoch, resumed)
    with learn.no_bar(), learn.no_logging():
        for i, stage in enumerate(recipe.effective_stages()):
            start = position.epoch if i == position.stage else 0
            if i < position.stage or start >= stage.epochs:
                continue
            learn.freeze() if stage.frozen else learn.unfreeze()
            callback = RayTrainCallback(rank, world_size, i, start, position, report, device)
            learn.fit_one_cycle(stage.epochs, stage.lr_max(), start_epoch=start, cbs=callback)
    if recipe.freeze_at_end and recipe.pretrained:
        learn.freeze()
    _final_report(learn, dls, cfg, rank, position)


def _final_report(learn, dls: DataLoaders, cfg: WorkerConfig, rank: int, position: Position) -> None:
    """One last report on every rank; rank 0 attaches a checkpoint holding the run state (so a rerun
    of a finished run resumes to "done") and the finished artifact."""
    metrics = {"done": 1, "epochs": len(position.history)}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    if hasattr(learn, "mixed_precision"):
        learn.to_fp32()
    learn.dls = dls  # the unsharded DataLoaders: export.pkl must pickle only fastai classes
    with tempfile.TemporaryDirectory(prefix="vehicle_ray_artifact_") as tmp:
        write_checkpoint(Path(tmp), learn, position)
        artifact = Path(tmp) / ARTIFACT_SUBDIR
        artifact.mkdir()
        learn.model.cpu()
        write_artifact(artifact, learn, cfg.recipe, cfg.data.classes, position.history)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class EpochPrinter(UserCallback):
    """One line per epoch, printed by the Ray Train controller (not by every worker)."""

    def __init__(self, metric_names: tuple[str, ...]):
        self.metric_names = metric_names

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]
        if m.get("done"):
            return
        shown = " ".join(f"{k}={m[k]:.4f}" for k in ("train_loss", "valid_loss", *self.metric_names) if k in m)
        print(f"stage {m['stage']} epoch {m['epoch']}/{m['n_epochs']} {shown} lr={m['lr']:.2e} "
              f"time={m['seconds']:.1f}s", flush=True)


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
    state_dict = pretrained_state_dict(recipe)
    resources = init_ray()
    require_shared_path(str(images), "--images")
    require_shared_path(storage_path or "~/ray_results", "--storage-path")
    if use_gpu and resources.get("GPU", 0) < 1:
        raise InputError("--gpu given but the Ray cluster has no GPU (use --cpu)")
    cpus = default_threads(workers, cpus_per_worker, resources)
    cfg = WorkerConfig(
        data=data, recipe=recipe, valid_idx=valid_idx,
        weights_ref=ray.put(state_dict) if state_dict is not None else None,
        threads=max(1, int(cpus)), fail_after_epoch=int(os.environ.get(FAIL_AFTER_EPOCH_ENV, "0")),
    )
    run_name = name or f"vehicle-ray-train-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[EpochPrinter(recipe.metrics)],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    print(f"training {recipe.arch} on {len(train_idx)} images ({len(valid_idx)} validation), "
          f"{workers} worker(s) x {cpus:g} CPU{', GPU' if use_gpu else ''}; run {run_name}", flush=True)
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        publish(Path(d) / ARTIFACT_SUBDIR, out, overwrite=overwrite)
    meta = open_artifact(out).meta
    return TrainResult(out=out, metrics=meta["metrics"], seconds=time.perf_counter() - t0)
