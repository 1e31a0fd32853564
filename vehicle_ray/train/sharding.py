"""Which rows each rank trains and validates on: a disjoint shard of every epoch's permutation for
training (all ranks draw the same permutation from (seed, stage, epoch), no broadcast needed, padded so
every rank runs as many batches: DDP hangs otherwise), and a contiguous slice for validation."""

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
