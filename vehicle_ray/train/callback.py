"""The fastai ↔ Ray Train glue: small callbacks that make a plain fastai fit data-parallel on Ray's
process group (gloo on CPU, nccl on GPU) and report/checkpoint every epoch.

fastai's own `distrib_ctx` cannot be used here: it needs `accelerate` and CUDA for its index broadcast.
Ray Train has already created the process group, so all we add is:

* DDP around the model for the duration of each fit (wrapped in before_fit, unwrapped in after_fit so
  freeze/unfreeze, export and checkpoints see the plain model), with BatchNorm statistics taken over the
  global batch (batchnorm.py) unless the recipe says sync_bn = false;
* a sharded training DataLoader: every rank draws the same permutation from (seed, stage, epoch) and
  takes a disjoint stride of it, padded so that all ranks run the same number of batches (DDP hangs
  otherwise) — no broadcast needed;
* sharded validation: each rank validates a contiguous slice of the validation set with rank 0's
  BatchNorm statistics, and the ranks' metric accumulators are merged once per epoch, so every rank
  reports the metrics of the whole set, as one process would, for 1/world_size of the work;
* `ray.train.report` from every rank every epoch, with a checkpoint from rank 0 every
  `checkpoint_every` epochs and at every stage end (the others wait for rank 0 at their next collective
  while it writes one: weights plus, by default, the optimizer state, about 3x the weights for Adam).

DataParallel does the first two, ShardedValidation the third, RayTrainReport the last; they compose,
and InjectedFailure (tests only) runs after the report. The pieces they use live beside them:
sharding.py (which rows each rank takes), collectives.py (gathers, broadcasts, metric merging) and
checkpoint_state.py (the run's position, checkpoint files).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.learner import Recorder
from torch.nn.parallel import DistributedDataParallel

from vehicle_ray.train.batchnorm import per_rank_batchnorm, synced_batchnorm
from vehicle_ray.train.checkpoint_state import Position, checkpoint_due, unwrapped, write_checkpoint
from vehicle_ray.train.collectives import (
    broadcast_buffers,
    gather_from_ranks,
    merge_metric_states,
    metric_state,
    require_mergeable,
)
from vehicle_ray.train.sharding import EpochShard

logger = logging.getLogger(__name__)


class DataParallel(Callback):
    """DDP around the model for the duration of a fit, and this epoch's shard of the training data.

    Wraps in before_fit and unwraps in after_fit, so freeze/unfreeze between stages, export and
    checkpoints see the plain model, and DDP is rebuilt per fit with the parameters that now train.
    With `sync_bn` the BatchNorm layers take their statistics over the global batch for the fit
    (batchnorm.synced_batchnorm), so N ranks at bs/N compute what one process at bs would.
    """

    order = 5  # before the training loop touches the model; independent of the reporting callbacks

    def __init__(self, stage: int, world_size: int, device: torch.device, sync_bn: bool = True):
        self.stage, self.world_size, self.device, self.sync_bn = stage, world_size, device, sync_bn

    def before_fit(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            if self.sync_bn:
                synced_batchnorm(self.learn.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Gradients as views into DDP's all-reduce buckets: no copy of every gradient into the buckets
            # and back at each step. The all-reduce is most of what a data-parallel step costs over one
            # process here (resnet18's 47 MB of gradients, 2 gloo ranks on 2 CPUs): 398 -> 368 ms a step
            # against 328 ms in one process (bench/ddp_step_cost.py). Same gradients, bit for bit.
            self.learn.model = DistributedDataParallel(self.learn.model, device_ids=ids, gradient_as_bucket_view=True)
            # fastai's Optimizer.zero_grad calls grad.detach_(), which PyTorch refuses on a view
            self.learn.opt.zero_grad = functools.partial(zero_grad_in_place, self.learn.opt)

    def after_fit(self) -> None:
        self.learn.model = unwrapped(self.learn.model)
        per_rank_batchnorm(self.learn.model)  # torch's classes in checkpoints and export.pkl
        self.learn.opt.__dict__.pop("zero_grad", None)  # fastai's own again, for the plain model

    def before_epoch(self) -> None:
        shard = getattr(self.dls.train, "get_idxs", None)
        if isinstance(shard, EpochShard):
            shard.stage, shard.epoch = self.stage, self.epoch


def zero_grad_in_place(opt) -> None:
    """fastai's Optimizer.zero_grad without `detach_()`: the gradients of a fastai fit carry no graph
    (no create_graph), so zeroing them in place is the whole job, and it keeps DDP's bucket views."""
    for p, *_ in opt.all_params(with_grad=True):
        p.grad.zero_()


class ShardedValidation(Callback):
    """Each rank validates its slice of the validation set (`sharded_valid_dl`), and the ranks' metric
    accumulators (the valid loss, AvgMetrics' totals and counts, AccumMetrics' predictions) are
    merged before the Recorder reads them: every rank's valid metrics are those of the whole set.

    Validation runs on the plain model with rank 0's buffers: DDP would broadcast them at its first
    forward, a collective that hangs a rank whose slice is empty; and every rank must see the
    BatchNorm statistics of the model rank 0 checkpoints and exports (under DDP each rank's last
    training batch updated its own)."""

    order = DataParallel.order + 1  # after DataParallel wrapped the model; before Recorder (50) reads the metrics

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._ddp: DistributedDataParallel | None = None

    def before_fit(self) -> None:
        for metric in self._valid_metrics():  # refused before the first epoch, not after it
            require_mergeable(metric)

    def before_validate(self) -> None:
        if not isinstance(self.learn.model, DistributedDataParallel):
            return
        self._ddp = self.learn.model
        broadcast_buffers(self._ddp.module)
        self.learn.model = self._ddp.module

    def after_validate(self) -> None:
        if self._ddp is not None:
            self.learn.model, self._ddp = self._ddp, None
        if self.world_size == 1 or not dist.is_initialized():
            return
        metrics = self._valid_metrics()
        states = gather_from_ranks([metric_state(m) for m in metrics], self.world_size)
        for i, metric in enumerate(metrics):
            merge_metric_states(metric, [rank_states[i] for rank_states in states])

    def _valid_metrics(self) -> list:
        return [self.recorder.loss, *self.learn.metrics] if self.recorder.valid_metrics else []


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
