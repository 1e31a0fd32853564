"""The Ray Train per-worker loop: build the fastai learner, run the recipe's stages with
RayTrainCallback attached, and have rank 0 write the artifact into the final checkpoint.

Imported only inside workers (see train_launch.py): the driver and the controller never load the
training stack.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
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

from vehicle_ray.artifact import write_artifact
from vehicle_ray.distributed import (
    WEIGHTS_FILE,
    Position,
    RayTrainCallback,
    read_position,
    sharded_train_dl,
    write_checkpoint,
)
from vehicle_ray.learner import build_dataloaders, build_learner
from vehicle_ray.train_launch import ARTIFACT_SUBDIR, TRAIN_LOG_LEVEL, WorkerConfig


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


def train_worker(cfg: WorkerConfig, weights_ref: ray.ObjectRef | None) -> None:
    """Ray Train per-worker loop: fastai's own loop per stage, with RayTrainCallback attached.
    `weights_ref`: the pretrained state_dict in the object store (None: no pretrained weights)."""
    # LoggingConfig's level reaches Ray Train's `ray.train.*` loggers only; its per-report "Reporting
    # training result" INFO line comes from a logger named by file path and would reach the console
    # through the root logger, so that gets the same level.
    logging.getLogger().setLevel(TRAIN_LOG_LEVEL)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    recipe = cfg.recipe
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    _seed_everything(recipe.seed)
    dls = build_dataloaders(cfg.data, recipe, cfg.valid_idx, device)
    learn = build_learner(dls, recipe, ray.get(weights_ref) if weights_ref is not None else None)
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
