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

from vehicle_ray.recipe import per_worker_batch, scaling_record
from vehicle_ray.train.artifact_writer import ArtifactContent, write_artifact
from vehicle_ray.train.callback import DataParallel, InjectedFailure, RayTrainReport, ShardedValidation
from vehicle_ray.train.checkpoint_state import Position, read_checkpoint, write_checkpoint
from vehicle_ray.train.collectives import broadcast_buffers, gather_from_ranks
from vehicle_ray.train.config import ARTIFACT_SUBDIR, TRAIN_LOG_LEVEL, WorkerConfig
from vehicle_ray.train.hardware import enter_device, fit_shared_memory, loader_batch_bytes, plain_fp32
from vehicle_ray.train.learner import device_learner
from vehicle_ray.train.ray_private import REPORT_LOGGER_NAME
from vehicle_ray.train.sharding import sharded_train_dl, sharded_valid_dl
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
    # Ray Train integration: the device Ray Train assigned this worker, and its place in the group
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
    checkpoint = ray.train.get_checkpoint()  # Ray Train integration: where a restarted run resumes
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
            # Ray Train integration: RayTrainReport calls ray.train.report (_report) every epoch
            cbs = [
                DataParallel(i, world_size, device, recipe.sync_bn),
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

    The artifact is written by two ranks at once (artifact_writer.write_artifact: the ONNX rank,
    ONNX_RANK or rank 0 with one worker, exports and quantizes while rank 0 writes the rest and then
    model.json). Rank 0 also writes the run state, so a rerun of a finished run resumes to "done";
    without the optimizer state, which nothing trains with again (about 2x the weights for Adam,
    written and uploaded)."""
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
    content = ArtifactContent(
        cfg.recipe, cfg.data.classes, position.history, training, validation, cfg.target, cfg.data_record
    )
    with tempfile.TemporaryDirectory(prefix="vehicle_ray_artifact_") as tmp:
        artifact = Path(tmp) / ARTIFACT_SUBDIR
        artifact.mkdir()
        if rank == 0:
            write_checkpoint(Path(tmp), learn, position, with_opt=False)
        learn.model.cpu()
        # Ray Train integration: both ranks attach their files to one report (below), which Ray Train
        # uploads into the same checkpoint directory; the collective inside gathers the files' sha256s.
        write_artifact(
            artifact, learn, content, rank, onnx_rank, gather=lambda files: gather_from_ranks(files, world_size)
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
