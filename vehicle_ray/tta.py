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

Adaptive TTA (adaptive_tta.py) runs the augmented passes only for the rows its gate picks from the
plain pass; the other rows are served the plain pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from vehicle_ray import columns as col


@dataclass(frozen=True)
class TTASettings:
    n: int = 4
    beta: float = 0.25
    use_max: bool = False
    aug_precision: str = "fp32"  # the augmented passes' model: fp32, int8 (ONNX on CPU), bf16 (GPU); none if n=0
    plain_precision: str = "fp32"  # the plain pass's model: fp32, bf16 (GPU), int8 (only with int8 augmented passes)

    def as_columns(self) -> dict[str, object]:
        return {
            col.TTA_N: self.n,
            col.TTA_BETA: self.beta,
            col.TTA_MAX: self.use_max,
            col.TTA_AUG_PRECISION: self.aug_precision,
            col.TTA_PLAIN_PRECISION: self.plain_precision,
        }


@dataclass(frozen=True)
class ValidationSet:
    """A labeled set as scoring would serve it (training's end-of-run validation pass): the artifact
    writer fits calibration, the operating point, adaptive TTA's threshold and the drift baseline on it."""

    tta: TTASettings
    probs: np.ndarray  # TTA-blended probabilities, (N, classes)
    plain: np.ndarray  # the plain pass's probabilities
    targets: np.ndarray  # true class indices


def fastai_passes(transforms: list) -> tuple[Callable, Callable]:
    """(plain, augmented) batch functions from fastai batch transforms (IntToFloatTensor, augs, Normalize):
    fastai's valid-split and train-split Pipelines on a uint8 NCHW tensor."""
    import torch
    from fastai.torch_core import TensorImage
    from fasttransform import Pipeline

    plain, aug = Pipeline(transforms, split_idx=1), Pipeline(transforms, split_idx=0)
    return (lambda x: torch.as_tensor(plain(TensorImage(x)))), (lambda x: torch.as_tensor(aug(TensorImage(x))))


class TTAResult(NamedTuple):
    probs: np.ndarray  # served before calibration: the blend, or the plain pass's where a row skipped
    plain: np.ndarray  # the plain pass's probabilities
    augmented: np.ndarray  # bool per row: it got the augmented passes


def tta_probabilities(
    forward: Callable[[Any], Any],
    images: Any,
    plain_tfms: Callable[[Any], Any],
    aug_tfms: Callable[[Any], Any],
    settings: TTASettings,
    aug_forward: Callable[[Any], Any] | None = None,
    needs_tta: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TTAResult:
    """TTA probabilities, plain-pass probabilities (float32 NumPy arrays) and which rows got the
    augmented passes, for a uint8 batch, blended as Learner.tta. `plain_tfms`/`aug_tfms` turn the batch
    into model input (torch tensors or NumPy arrays alike); `forward` (and `aug_forward`, default
    `forward`, e.g. a quantized model for the augmented passes) return logits. `needs_tta` (adaptive
    TTA: a row mask from the plain pass's probabilities) limits the augmented passes to those rows,
    all n passes of all of them in one forward batch; the other rows keep the plain pass."""
    plain = _softmax(forward(plain_tfms(images)))
    rows = np.ones(len(plain), dtype=bool) if needs_tta is None else np.asarray(needs_tta(plain), dtype=bool)
    if settings.n == 0 or not rows.any():
        return TTAResult(plain, plain, np.zeros(len(plain), dtype=bool))
    subset = images if rows.all() else images[_index(images, np.flatnonzero(rows))]
    passes = _concat([aug_tfms(subset) for _ in range(settings.n)])
    probs = _softmax((aug_forward or forward)(passes)).reshape(settings.n, int(rows.sum()), -1)
    aug = probs.max(0) if settings.use_max else probs.mean(0)
    mine = plain[rows]
    blend = np.maximum(mine, aug) if settings.use_max else aug + settings.beta * (mine - aug)
    if rows.all():
        return TTAResult(blend, plain, rows)
    out = plain.copy()
    out[rows] = blend
    return TTAResult(out, plain, rows)


def _index(images: Any, rows: np.ndarray) -> Any:
    """`rows` as an index for `images` (a NumPy array or a torch tensor on any device)."""
    if isinstance(images, np.ndarray):
        return rows
    import torch

    return torch.from_numpy(rows).to(images.device)


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
