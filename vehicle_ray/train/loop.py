"""The Ray Train per-worker loop: build the fastai learner, run the recipe's stages with
the callbacks of callback.py attached, and have ranks 0 and 1 write the artifact into the final checkpoint.

Imported only inside workers (see launch.py): the driver and the controller never load the
training stack.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import numpy as np
import ray
import ray.train
import torch
from fastai.data.core import DataLoaders

from vehicle_ray.artifact import write_learner_files, write_model_json, write_onnx_files
from vehicle_ray.recipe import per_worker_batch, scaling_record
from vehicle_ray.train.callback import (
    DataParallel,
    InjectedFailure,
    Position,
    RayTrainReport,
    ShardedValidation,
    broadcast_buffers,
    gather_from_ranks,
    read_checkpoint,
    sharded_train_dl,
    sharded_valid_dl,
    write_checkpoint,
)
from vehicle_ray.train.config import ARTIFACT_SUBDIR, TRAIN_LOG_LEVEL, WorkerConfig
from vehicle_ray.train.hardware import enter_device, fit_shared_memory, loader_batch_bytes, plain_fp32
from vehicle_ray.train.learner import device_learner
from vehicle_ray.train.ray_private import REPORT_LOGGER_NAME
from vehicle_ray.train.staging import local_images
from vehicle_ray.train.validation import distributed_validation_set
from vehicle_ray.tta import TTASettings

logger = logging.getLogger(__name__)

ONNX_RANK = 1  # with several workers, the rank that writes the artifact's ONNX files beside rank 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def train_worker(cfg: WorkerConfig, weights_ref: ray.ObjectRef | None) -> None:
    """Ray Train per-worker loop: fastai's own loop per stage, with the callbacks of callback.py attached.
    `weights_ref`: the pretrained state_dict in the object store (None: no pretrained weights)."""
    # LoggingConfig's level reaches Ray Train's `ray.train.*` loggers only; its per-report "Reporting
    # training result" INFO line comes from a logger named by that module's file path, so that one
    # logger gets the same level (the root logger is left alone).
    logging.getLogger(REPORT_LOGGER_NAME).setLevel(TRAIN_LOG_LEVEL)
    os.environ.update(dict(cfg.env))
    device, hardware = enter_device(cfg.use_gpu, cfg.threads, cfg.loader_workers, ray.train.torch.get_device)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    recipe = cfg.recipe
    # this run's worker count, not the one that wrote a checkpoint it resumes: the global batch stays
    bs = per_worker_batch(recipe.bs, world_size)
    hardware = fit_shared_memory(hardware, loader_batch_bytes(bs, recipe.size), ctx.get_local_world_size())
    _seed_everything(recipe.seed)
    weights = ray.get(weights_ref) if weights_ref is not None else None
    learn = device_learner(local_images(cfg.data), recipe, cfg.valid_idx, weights, device, hardware, bs)
    dls = learn.dls  # unsharded: what the artifact exports
    learn.dls = DataLoaders(
        sharded_train_dl(dls.train, rank, world_size, recipe.seed),
        sharded_valid_dl(dls.valid, rank, world_size),
        device=device,
    )
    learn.create_opt()
    position, resumed = Position(), False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            position = read_checkpoint(Path(d), learn, device)
        resumed = True
        if rank == 0:
            logger.info(
                f"resumed from checkpoint: stage {position.stage + 1}, epoch {position.epoch} done "
                f"({len(position.history)} epochs in history)"
            )
    failure = cfg.fail_after_epoch and not resumed and rank == world_size - 1
    with learn.no_bar(), learn.no_logging():
        for i, stage in enumerate(recipe.effective_stages()):
            start = position.epoch if i == position.stage else 0
            if i < position.stage or start >= stage.epochs:
                continue
            learn.freeze() if stage.frozen else learn.unfreeze()
            cbs = [
                DataParallel(i, world_size, device),
                ShardedValidation(world_size),
                RayTrainReport(rank, i, start, position, _report, cfg.checkpoint_every, cfg.optimizer_state),
            ]
            if failure:
                cbs.append(InjectedFailure(cfg.fail_after_epoch, cfg.fail_marker, position, rank))
            learn.fit_one_cycle(stage.epochs, stage.lr_max(), start_epoch=start, cbs=cbs)
    if recipe.freeze_at_end and recipe.pretrained:
        learn.freeze()
    training = {**hardware.to_dict(), "workers": world_size, **scaling_record(recipe, world_size)}
    _final_report(learn, dls, cfg, rank, world_size, position, training)


def _final_report(
    learn, dls: DataLoaders, cfg: WorkerConfig, rank: int, world_size: int, position: Position, training: dict
) -> None:
    """One last report on every rank, after every rank has scored its slice of the validation set.

    The artifact is written by two ranks at once: the ONNX rank (ONNX_RANK; rank 0 with one worker)
    exports the ONNX model and calibrates its int8 copy, the longest step after the validation pass
    (ONNX 1.2 s and int8 2.5 s of 4.7 s for resnet18 at 64 px, one 1-epoch run here); rank 0 writes
    the run state (so a rerun of a finished run resumes to "done"; without the optimizer state, which
    nothing trains with again: about 2x the weights for Adam, written and uploaded), export.pkl, the weights, metrics
    and curves, then model.json with every file's sha256. Both attach their files to the report:
    Ray Train uploads every rank's checkpoint of one report into the same directory."""
    metrics = {"done": 1, "epochs": len(position.history)}
    plain_fp32(learn)
    learn.dls = dls  # the unsharded DataLoaders: export.pkl must pickle only fastai classes
    if world_size > 1:  # every rank scores and exports rank 0's model, whatever the last epoch did
        broadcast_buffers(learn.model)
    tta = TTASettings(cfg.recipe.tta_n, cfg.recipe.tta_beta)
    validation = distributed_validation_set(learn, tta, rank, world_size)  # on the training device
    onnx_rank = ONNX_RANK if world_size > 1 else 0
    if rank not in (0, onnx_rank):
        gather_from_ranks({}, world_size)  # the artifact files' sha256s: see below
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="vehicle_ray_artifact_") as tmp:
        artifact = Path(tmp) / ARTIFACT_SUBDIR
        artifact.mkdir()
        files = {}
        if rank == 0:
            write_checkpoint(Path(tmp), learn, position, with_opt=False)
        learn.model.cpu()
        if rank == onnx_rank:
            files.update(write_onnx_files(artifact, learn, cfg.recipe.size))
        if rank == 0:
            files.update(write_learner_files(artifact, learn, position.history))
        files = {name: sha for part in gather_from_ranks(files, world_size) for name, sha in part.items()}
        if rank == 0:
            write_model_json(
                artifact,
                cfg.recipe,
                cfg.data.classes,
                position.history,
                files,
                training,
                validation,
                cfg.target,
                cfg.data_record,
            )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
