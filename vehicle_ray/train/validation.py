"""The validation set as scoring would serve it: TTA probabilities (with the recipe's TTA settings,
through the shared `tta_probabilities`), the plain pass's, and the true classes. Computed once after
training, on the training device, every rank scoring a slice of it for rank 0; artifact_writer.py fits
calibration, the operating point, adaptive TTA's threshold and the monitoring baseline on it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from fasttransform import Pipeline

from vehicle_ray.train.collectives import gather_from_ranks
from vehicle_ray.train.sharding import rank_rows, rows_dl
from vehicle_ray.tta import TTASettings, ValidationSet, fastai_passes, tta_probabilities


def validation_set(
    learn,
    tta: TTASettings,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dl=None,
    rows: range | None = None,
) -> ValidationSet:
    """Run the validation DataLoader's (or another labeled fastai DataLoader's) decoded uint8 images,
    those at `rows` (default all), through scoring's TTA with the learner's batch transforms
    (IntToFloatTensor, training augmentation for the augmented passes, Normalize). `forward` (default:
    the learner's model in eval mode) maps a normalised batch to logits."""
    model = learn.model.eval()
    if forward is None:

        @torch.inference_mode()
        def forward(x: torch.Tensor) -> torch.Tensor:
            return model(torch.as_tensor(x)).float()

    plain_tfms, aug_tfms = fastai_passes(list(learn.dls.train.after_batch.fs))
    labeled = dl or learn.dls.valid
    rows = range(len(labeled.dataset)) if rows is None else rows
    decoded = rows_dl(labeled, rows, after_batch=Pipeline([]))
    probs, plain, targets = [], [], []
    with torch.inference_mode():
        for images, y in decoded:
            blended, plain_pass, _ = tta_probabilities(forward, torch.as_tensor(images), plain_tfms, aug_tfms, tta)
            probs.append(blended)
            plain.append(plain_pass)
            targets.append(torch.as_tensor(y).cpu().numpy())
    if not probs:  # an empty slice: more ranks than validation images
        empty = np.zeros((0, len(learn.dls.vocab)), dtype=np.float32)
        return ValidationSet(tta, empty, empty, np.zeros(0, dtype=int))
    return ValidationSet(tta, np.concatenate(probs), np.concatenate(plain), np.concatenate(targets).astype(int))


def distributed_validation_set(learn, tta: TTASettings, rank: int, world_size: int) -> ValidationSet | None:
    """`validation_set` with the work split over the ranks: each scores its `rank_rows` and rank 0
    gets the slices in order (the other ranks get None). The TTA passes are the longest step after
    the last epoch (4.5 s of ~7 for 220 images at 64 px on one CPU thread, profiled in one process)
    and would otherwise leave every other rank idle. The slices travel on the training's own process
    group (`gather_from_ranks`), with its --nccl-timeout and network settings."""
    part = validation_set(learn, tta, rows=rank_rows(len(learn.dls.valid.dataset), rank, world_size))
    if world_size == 1:
        return part
    parts = gather_from_ranks(part, world_size)
    if rank != 0:
        return None
    return ValidationSet(
        tta,
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.plain for p in parts]),
        np.concatenate([p.targets for p in parts]),
    )
