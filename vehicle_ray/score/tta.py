"""Test-time augmentation with fastai's semantics, on images decoded once.

fastai's `Learner.tta(n, beta, use_max)` re-reads and re-decodes every file for each of its n
augmented passes. Here the n passes apply fastai's own batch transforms (split_idx=0: the training-time
augmentation) to the already-decoded uint8 batch, on whatever device the model is on, and the n
augmented passes go through the augmented-pass model (`aug_model`, by default the same) as one batch:

    plain = softmax(model(plain_tfms(x)))
    aug   = mean_i softmax(aug_model(aug_tfms(x)))  (max with use_max)
    probs = lerp(aug, plain, beta) = beta*plain + (1-beta)*aug
            (use_max: elementwise max of plain and aug, as fastai)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # imported where used: the scoring driver needs TTASettings without torch or fastai
    import torch
    from fasttransform import Pipeline


@dataclass(frozen=True)
class TTASettings:
    n: int = 4
    beta: float = 0.25
    use_max: bool = False
    aug_precision: str = "fp32"  # the augmented passes' model: fp32, int8 (ONNX on CPU), bf16 (GPU); none if n=0
    plain_precision: str = "fp32"  # the plain pass's model: fp32, bf16 (GPU), int8 (only with int8 augmented passes)

    def as_columns(self) -> dict[str, object]:
        return {
            "tta_n": self.n,
            "tta_beta": self.beta,
            "tta_max": self.use_max,
            "tta_aug_precision": self.aug_precision,
            "tta_plain_precision": self.plain_precision,
        }


def batch_pipelines(transforms: list) -> tuple[Pipeline, Pipeline]:
    """(plain, augmented) fastai Pipelines from a list of batch transforms (IntToFloatTensor, augs, Normalize)."""
    from fasttransform import Pipeline

    return Pipeline(transforms, split_idx=1), Pipeline(transforms, split_idx=0)


def tta_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    plain_tfms: Pipeline,
    aug_tfms: Pipeline,
    settings: TTASettings,
    aug_forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TTA probabilities, plain-pass probabilities) for a uint8 NCHW batch, blended as Learner.tta.
    `aug_forward` (default: `forward`) runs the augmented passes, e.g. on a quantized model."""
    import torch
    from fastai.torch_core import TensorImage

    x = TensorImage(images)
    plain = torch.softmax(forward(torch.as_tensor(plain_tfms(x))).float(), dim=-1)
    if settings.n == 0:
        return plain, plain
    passes = torch.cat([torch.as_tensor(aug_tfms(x)) for _ in range(settings.n)])
    probs = torch.softmax((aug_forward or forward)(passes).float(), dim=-1).view(settings.n, len(images), -1)
    aug = probs.max(0).values if settings.use_max else probs.mean(0)
    if settings.use_max:
        return torch.maximum(plain, aug), plain
    return torch.lerp(aug, plain, settings.beta), plain
