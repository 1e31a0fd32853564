"""Which rows each rank trains and validates on: a disjoint shard of every epoch's permutation for
training (all ranks draw the same permutation from (seed, stage, epoch), no broadcast needed, padded so
every rank runs as many batches: DDP hangs otherwise), and a contiguous slice for validation.

Rank r takes every N-th image of the permutation from the r-th, so at step k the N ranks' batches of
bs/N hold exactly the images of one process's step k at batch bs: N workers train on one process's
batches, and, dropping the last partial global batch as fastai does, take as many steps."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from fastai.data.core import TfmdDL
from fastai.torch_core import to_detach


@dataclass
class EpochShard:
    """`get_idxs` for a fastai DataLoader: this rank's disjoint share of an epoch permutation all ranks agree on."""

    n: int
    rank: int
    world_size: int
    seed: int
    stage: int = 0
    epoch: int = 0
    full_batches_of: int | None = None  # drop_last: this rank's batch; only the full global batches are kept

    @property
    def stride_len(self) -> int:
        """Length of each rank's stride of the permutation, padded to be the same on every rank."""
        return -(-self.n // self.world_size)

    @property
    def shard_len(self) -> int:
        """Indices this rank takes per epoch: its padded stride, or with `full_batches_of` b, b for each
        full global batch (b x world_size) of one process's epoch."""
        if self.full_batches_of is not None:
            return self.n // (self.full_batches_of * self.world_size) * self.full_batches_of
        return self.stride_len

    def __call__(self) -> list[int]:
        perm = np.random.default_rng((self.seed, self.stage, self.epoch)).permutation(self.n)
        padded = np.resize(perm, self.stride_len * self.world_size)  # repeats the start to pad
        return padded[self.rank :: self.world_size][: self.shard_len].tolist()


def sharded_train_dl(dl: TfmdDL, rank: int, world_size: int, seed: int) -> TfmdDL:
    """A copy of fastai's training DataLoader that iterates only this rank's shard."""
    # the last partial global batch is dropped as one process drops it (not each rank's last partial batch,
    # which with a padded stride can add a step: 127 images at bs 16 are 7 steps, 4 strides of 32 are 8)
    full = dl.bs if dl.drop_last else None
    shard = EpochShard(n=len(dl.dataset), rank=rank, world_size=world_size, seed=seed, full_batches_of=full)
    return dl.new(
        get_idxs=shard,
        n=shard.shard_len,
        shuffle=True,
        drop_last=dl.drop_last,
    )


def rank_rows(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous slice of `n` rows; the slices of ranks 0..world_size-1 in order are 0..n-1."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def rows_dl(dl: TfmdDL, rows: range, **kwargs) -> TfmdDL:
    """A copy of `dl` (with `kwargs` changed) that iterates `rows` of its dataset in order, every one."""
    # get_idxs: a picklable callable (DataLoader workers may pickle it), a fresh list per iteration
    return dl.new(shuffle=False, drop_last=False, get_idxs=functools.partial(list, rows), n=len(rows), **kwargs)


def sharded_valid_dl(dl: TfmdDL, rank: int, world_size: int) -> TfmdDL:
    """A copy of fastai's validation DataLoader that iterates only this rank's `rank_rows`, and whose
    batches' metric values stay on this rank (ShardedValidation merges them once per epoch)."""
    part = rows_dl(dl, rank_rows(len(dl.dataset), rank, world_size))
    # fastai's metrics detach every batch's values with Learner.to_detach: the DataLoader's to_detach
    # when it has one, else fastai's, which all-gathers them over the ranks whenever WORLD_SIZE is set
    # (Ray Train sets it): a collective per batch, which hangs unless every rank runs as many batches,
    # and a per-batch mean over the ranks that weighs unequal slices wrongly.
    part.to_detach = _detach_on_this_rank
    return part


def _detach_on_this_rank(b, cpu: bool = True, gather: bool = True):
    return to_detach(b, cpu, gather=False)
