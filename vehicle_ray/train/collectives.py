"""Collectives on the training's own process group (gloo on CPU, NCCL on GPU, created by Ray Train):
objects gathered from every rank, rank 0's BatchNorm statistics broadcast, and the fastai metric
accumulators that sharded validation merges once per epoch."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from fastai.learner import AvgLoss, AvgMetric
from fastai.metrics import AccumMetric


def gather_from_ranks(obj: Any, world_size: int) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank; a collective on the training's own
    process group (gloo on CPU; NCCL on GPU, where Ray Train has set each worker's CUDA device)."""
    if world_size == 1:
        return [obj]
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank; a collective. DDP keeps the parameters
    equal, but each rank's last training forward updates its own BatchNorm statistics."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def require_mergeable(metric) -> None:
    """The fastai metric kinds whose accumulators `merge_metric_states` knows (all that recipe.METRICS builds)."""
    if not isinstance(metric, (AccumMetric, AvgMetric, AvgLoss)):
        raise TypeError(f"sharded validation cannot merge the metric {metric.name!r} ({type(metric).__name__})")


def metric_state(metric) -> tuple:
    """What a rank accumulated in a fastai metric over its validation slice, picklable."""
    require_mergeable(metric)
    if isinstance(metric, AccumMetric):
        return list(metric.preds), list(metric.targs)
    return float(metric.total), int(metric.count)


def merge_metric_states(metric, states: list[tuple]) -> None:
    """Set `metric`'s accumulators to the union of the ranks' `metric_state`s (in rank order)."""
    if isinstance(metric, AccumMetric):
        metric.preds = [p for preds, _ in states for p in preds]
        metric.targs = [t for _, targs in states for t in targs]
    else:
        metric.total = sum(total for total, _ in states)
        metric.count = sum(count for _, count in states)
