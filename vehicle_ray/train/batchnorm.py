"""BatchNorm statistics over the global batch: with N data-parallel ranks, each rank's BatchNorm layers
normalise with the mean and variance of all N shards of the batch, as one process normalises its whole
batch, so a recipe trains the same function at any worker count.

Without it (DDP's default) every rank normalises with its own bs/N images: "ghost" batches, a known
regulariser, so another training than the recipe's, more so as per-worker batches get small. PyTorch's
own SyncBatchNorm runs only on CUDA (its statistics kernels), and training here runs on
gloo/CPU too: these layers do the same with two autograd-aware all-reduces per layer (the batch sums
forward, their gradients backward), on any backend.

`synced_batchnorm(model)` switches a model's BatchNorm layers to these classes in place and
`per_rank_batchnorm(model)` back; the parameters, buffers and state_dict keys stay the same, so
checkpoints, export.pkl and the ONNX export never see them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: the gradient of every rank's copy of the sum
    is summed back, as torch.distributed.nn.functional.all_reduce does (which torch 2.14 warns is deprecated)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class _GlobalBatchStats:
    """forward for a BatchNorm subclass: in training, under a process group of several ranks, the
    mean and biased variance of the whole global batch (sums all-reduced), running statistics updated
    with them as torch's BatchNorm does (unbiased variance, momentum or the cumulative average)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.size(1)] + [1] * (x.dim() - 2)
        xf = x.float()  # the sums in fp32 under mixed precision, as torch's BatchNorm keeps them
        count = xf.new_full((1,), x.numel() / x.size(1))
        sums = _AllReduceSum.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c, n = x.size(1), sums[-1]
        mean = sums[:c] / n
        var = (sums[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1), factor)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class SyncedBatchNorm1d(_GlobalBatchStats, nn.BatchNorm1d):
    pass


class SyncedBatchNorm2d(_GlobalBatchStats, nn.BatchNorm2d):
    pass


_SYNCED = {nn.BatchNorm1d: SyncedBatchNorm1d, nn.BatchNorm2d: SyncedBatchNorm2d}
_PER_RANK = {synced: plain for plain, synced in _SYNCED.items()}


def synced_batchnorm(model: nn.Module) -> int:
    """Switch `model`'s BatchNorm1d/2d layers to global-batch statistics, in place; how many."""
    return _swap(model, _SYNCED)


def per_rank_batchnorm(model: nn.Module) -> int:
    """Switch them back to torch's classes (what checkpoints and export.pkl pickle); how many."""
    return _swap(model, _PER_RANK)


def _swap(model: nn.Module, classes: dict[type, type]) -> int:
    layers = [m for m in model.modules() if type(m) in classes]
    for layer in layers:
        layer.__class__ = classes[type(layer)]
    return len(layers)
