"""The fastai ↔ Ray Train glue: small callbacks that make a plain fastai fit data-parallel on Ray's
process group (gloo on CPU, nccl on GPU) and report/checkpoint every epoch.

fastai's own `distrib_ctx` cannot be used here: it needs `accelerate` and CUDA for its index broadcast.
Ray Train has already created the process group, so all we add is:

* DDP around the model for the duration of each fit (wrapped in before_fit, unwrapped in after_fit so
  freeze/unfreeze, export and checkpoints see the plain model);
* a sharded training DataLoader: every rank draws the same permutation from (seed, stage, epoch) and
  takes a disjoint stride of it, padded so that all ranks run the same number of batches (DDP hangs
  otherwise) — no broadcast needed;
* validation on the full validation set on every rank (under no_grad DDP does no collectives), so the
  metrics are exactly what a single process would report;
* `ray.train.report` from every rank every epoch, with a checkpoint from rank 0 every
  `checkpoint_every` epochs and at every stage end (the others wait for rank 0 at their next collective
  while it writes one: weights plus, by default, the optimizer state, about 3x the weights for Adam).

DataParallel does the first two, RayTrainReport the last; they compose, and InjectedFailure (tests
only) runs after the report.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.data.core import TfmdDL
from fastai.learner import Recorder, load_model, save_model
from torch.nn.parallel import DistributedDataParallel

STATE_FILE = "state.json"
WEIGHTS_FILE = "learner.pth"

logger = logging.getLogger(__name__)


@dataclass
class EpochShard:
    """`get_idxs` for a fastai DataLoader: this rank's disjoint share of an epoch permutation all ranks agree on."""

    n: int
    rank: int
    world_size: int
    seed: int
    stage: int = 0
    epoch: int = 0

    @property
    def shard_len(self) -> int:
        return -(-self.n // self.world_size)

    def __call__(self) -> list[int]:
        perm = np.random.default_rng((self.seed, self.stage, self.epoch)).permutation(self.n)
        padded = np.resize(perm, self.shard_len * self.world_size)  # repeats the start to pad
        return padded[self.rank :: self.world_size].tolist()


def sharded_train_dl(dl: TfmdDL, rank: int, world_size: int, seed: int) -> TfmdDL:
    """A copy of fastai's training DataLoader that iterates only this rank's shard."""
    shard = EpochShard(n=len(dl.dataset), rank=rank, world_size=world_size, seed=seed)
    return dl.new(
        get_idxs=shard,
        n=shard.shard_len,
        shuffle=True,
        drop_last=dl.drop_last,
        persistent_workers=dl.fake_l.persistent_workers,  # DataLoader.new does not carry it over
    )


@dataclass
class Position:
    """Where a run stands: `epoch` epochs of stage `stage` are done (resume starts at epoch `epoch`)."""

    stage: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_due(epochs_done: int, every: int, stage_end: bool) -> bool:
    """Whether the epoch that just finished gets a checkpoint: every `every` epochs (counted over all
    stages) and at the end of every stage, so a resume never crosses a stage boundary backwards and
    the last epoch (a stage end) is always saved."""
    return stage_end or epochs_done % every == 0


class DataParallel(Callback):
    """DDP around the model for the duration of a fit, and this epoch's shard of the training data.

    Wraps in before_fit and unwraps in after_fit, so freeze/unfreeze between stages, export and
    checkpoints see the plain model, and DDP is rebuilt per fit with the parameters that now train.
    """

    order = 5  # before the training loop touches the model; independent of the reporting callbacks

    def __init__(self, stage: int, world_size: int, device: torch.device):
        self.stage, self.world_size, self.device = stage, world_size, device

    def before_fit(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.learn.model = DistributedDataParallel(self.learn.model, device_ids=ids)

    def after_fit(self) -> None:
        self.learn.model = unwrapped(self.learn.model)

    def before_epoch(self) -> None:
        shard = getattr(self.dls.train, "get_idxs", None)
        if isinstance(shard, EpochShard):
            shard.stage, shard.epoch = self.stage, self.epoch


class RayTrainReport(Callback):
    """`report` every epoch on every rank (Ray Train V2 needs the same number of reports from all
    ranks), with a checkpoint (weights, optionally the optimizer state, position) from rank 0 when
    `checkpoint_due`.

    `report(metrics, checkpoint_dir)` is `ray.train.report` in production; it is injected so that the
    callback's logic can be exercised outside a Ray Train worker.
    """

    order = Recorder.order + 10  # after Recorder: its final_record holds this epoch's losses and metrics

    def __init__(
        self,
        rank: int,
        stage: int,
        skip_to: int,
        position: Position,
        report: Callable[[dict[str, Any], str | None], None],
        checkpoint_every: int = 1,
        with_opt: bool = True,
    ):
        self.rank, self.stage, self.skip_to, self.position, self._report = rank, stage, skip_to, position, report
        self.checkpoint_every, self.with_opt = checkpoint_every, with_opt

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def after_epoch(self) -> None:
        if self.epoch < self.skip_to:  # fastai's SkipToEpoch still fires after_epoch for skipped epochs
            return
        names = self.recorder.metric_names[1:-1]  # drop 'epoch' and 'time'
        metrics = {n: float(v) for n, v in zip(names, self.learn.final_record, strict=False)}
        metrics.update(
            stage=self.stage + 1,
            epoch=self.epoch + 1,
            n_epochs=self.n_epoch,
            lr=float(self.opt.hypers[-1]["lr"]),
            seconds=round(time.perf_counter() - self._t0, 3),
        )
        self.position.stage, self.position.epoch = self.stage, self.epoch + 1
        self.position.history.append(metrics)
        due = checkpoint_due(len(self.position.history), self.checkpoint_every, self.epoch + 1 == self.n_epoch)
        if self.rank == 0 and due:
            with tempfile.TemporaryDirectory(prefix="vehicle_ray_ckpt_") as tmp:
                write_checkpoint(Path(tmp), self.learn, self.position, self.with_opt)
                self._report(metrics, tmp)
        else:
            self._report(metrics, None)


class InjectedFailure(Callback):
    """Test-only fault injection: this process dies (as a preempted node would) right after the
    report of epoch `after` (counted over all stages). Attached only when a test asks for it.
    Once per run: the process that dies first creates `marker`; a restarted worker group that finds
    no checkpoint yet (one still being registered when the process died) trains on instead of dying again."""

    order = RayTrainReport.order + 1  # the epoch's report and checkpoint happen first

    def __init__(self, after: int, marker: str, position: Position, rank: int):
        self.after, self.marker, self.position, self.rank = after, marker, position, rank

    def after_epoch(self) -> None:
        if len(self.position.history) == self.after and _first_to_create(self.marker):
            logger.info(f"injected failure on rank {self.rank} after epoch {self.after}")
            os._exit(1)


def _first_to_create(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def write_checkpoint(directory: Path, learn, position: Position, with_opt: bool = True) -> None:
    """Weights (+ optimizer state: `with_opt`; fastai's save_model format) and the run position as JSON."""
    save_model(directory / WEIGHTS_FILE, unwrapped(learn.model), learn.opt, with_opt=with_opt)
    state = {"stage": position.stage, "epoch": position.epoch, "history": position.history, "with_opt": with_opt}
    (directory / STATE_FILE).write_text(json.dumps(state))


def read_checkpoint(directory: Path, learn, device) -> Position:
    """Load a checkpoint's weights (and optimizer state, when it has one) into `learn`; its position.
    Without a saved optimizer state the optimizer starts fresh at the restored epoch (--no-optimizer-state)."""
    state = json.loads((directory / STATE_FILE).read_text())
    load_model(directory / WEIGHTS_FILE, learn.model, learn.opt, with_opt=state.get("with_opt", True), device=device)
    return Position(stage=state["stage"], epoch=state["epoch"], history=state["history"])
