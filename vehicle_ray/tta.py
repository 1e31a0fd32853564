"""Test-time augmentation with fastai's semantics, on images decoded once.

fastai's `Learner.tta(n, beta, use_max)` re-reads and re-decodes every file for each of its n
augmented passes. Here the n passes apply fastai's own batch transforms (split_idx=0: the training-time
augmentation) to the already-decoded uint8 batch, on whatever device the model is on, and all n+1
passes go through the model as one batch:

    plain = softmax(model(plain_tfms(x)))
    aug   = mean_i softmax(model(aug_tfms(x)))      (max with use_max)
    probs = lerp(aug, plain, beta) = beta*plain + (1-beta)*aug
            (use_max: elementwise max of plain and aug, as fastai)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from fastai.torch_core import TensorImage
from fasttransform import Pipeline


@dataclass(frozen=True)
class TTASettings:
    n: int = 4
    beta: float = 0.25
    use_max: bool = False

    def as_columns(self) -> dict[str, object]:
        return {"tta_n": self.n, "tta_beta": self.beta, "tta_max": self.use_max}


def batch_pipelines(transforms: list) -> tuple[Pipeline, Pipeline]:
    """(plain, augmented) fastai Pipelines from a list of batch transforms (IntToFloatTensor, augs, Normalize)."""
    return Pipeline(transforms, split_idx=1), Pipeline(transforms, split_idx=0)


def tta_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    plain_tfms: Pipeline,
    aug_tfms: Pipeline,
    settings: TTASettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TTA probabilities, plain-pass probabilities) for a uint8 NCHW batch, blended as Learner.tta."""
    x = TensorImage(images)
    passes = [plain_tfms(x)] + [aug_tfms(x) for _ in range(settings.n)]
    logits = forward(torch.cat([torch.as_tensor(p) for p in passes]))
    probs = torch.softmax(logits.float(), dim=-1).view(len(passes), len(images), -1)
    plain = probs[0]
    if settings.n == 0:
        return plain, plain
    aug = probs[1:].max(0).values if settings.use_max else probs[1:].mean(0)
    if settings.use_max:
        return torch.maximum(plain, aug), plain
    return torch.lerp(aug, plain, settings.beta), plain
