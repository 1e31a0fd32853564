"""Test-time augmentation with fastai's semantics, on images decoded once.

fastai's `Learner.tta(n, beta, use_max)` re-reads and re-decodes every file for each of its n
augmented passes. Here the n passes augment the already-decoded uint8 batch with the training-time
augmentation — fastai's own batch transforms (`fastai_passes`, on the model's device: the torch and
training paths) or the same augmentation fused per image (`score.augment.FusedAugment`, the CPU ONNX
path) — and the n augmented passes go through the augmented-pass model (`aug_forward`, by default the
same) as one batch:

    plain = softmax(model(plain_tfms(x)))
    aug   = mean_i softmax(aug_model(aug_tfms(x)))  (max with use_max)
    probs = lerp(aug, plain, beta) = beta*plain + (1-beta)*aug
            (use_max: elementwise max of plain and aug, as fastai)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


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


def fastai_passes(transforms: list) -> tuple[Callable, Callable]:
    """(plain, augmented) batch functions from fastai batch transforms (IntToFloatTensor, augs, Normalize):
    fastai's valid-split and train-split Pipelines on a uint8 NCHW tensor."""
    import torch
    from fastai.torch_core import TensorImage
    from fasttransform import Pipeline

    plain, aug = Pipeline(transforms, split_idx=1), Pipeline(transforms, split_idx=0)
    return (lambda x: torch.as_tensor(plain(TensorImage(x)))), (lambda x: torch.as_tensor(aug(TensorImage(x))))


def tta_probabilities(
    forward: Callable[[Any], Any],
    images: Any,
    plain_tfms: Callable[[Any], Any],
    aug_tfms: Callable[[Any], Any],
    settings: TTASettings,
    aug_forward: Callable[[Any], Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(TTA probabilities, plain-pass probabilities) as float32 NumPy arrays for a uint8 batch, blended
    as Learner.tta. `plain_tfms`/`aug_tfms` turn the batch into model input (torch tensors or NumPy
    arrays alike); `forward` (and `aug_forward`, default `forward`, e.g. a quantized model for the
    augmented passes) return logits."""
    plain = _softmax(forward(plain_tfms(images)))
    if settings.n == 0:
        return plain, plain
    passes = _concat([aug_tfms(images) for _ in range(settings.n)])
    probs = _softmax((aug_forward or forward)(passes)).reshape(settings.n, len(plain), -1)
    aug = probs.max(0) if settings.use_max else probs.mean(0)
    if settings.use_max:
        return np.maximum(plain, aug), plain
    return aug + settings.beta * (plain - aug), plain


def _concat(parts: list) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


def _softmax(logits: Any) -> np.ndarray:
    if not isinstance(logits, np.ndarray):  # a torch tensor, possibly on a GPU
        logits = logits.detach().float().cpu().numpy()
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
