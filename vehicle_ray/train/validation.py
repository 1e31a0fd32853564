"""The validation set as scoring would serve it: TTA probabilities (with the recipe's TTA settings,
through scoring's own `tta_probabilities`), the plain pass's, and the true classes. Rank 0 runs it
once after training, on the training device; artifact.py fits calibration, the operating point and
the monitoring baseline on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from fasttransform import Pipeline

from vehicle_ray.score.tta import TTASettings, fastai_passes, tta_probabilities


@dataclass(frozen=True)
class ValidationSet:
    tta: TTASettings
    probs: np.ndarray  # TTA-blended probabilities, (N, classes)
    plain: np.ndarray  # the plain pass's probabilities
    targets: np.ndarray  # true class indices


def validation_set(
    learn, tta: TTASettings, forward: Callable[[torch.Tensor], torch.Tensor] | None = None, dl=None
) -> ValidationSet:
    """Run the validation DataLoader's (or another labeled fastai DataLoader's) decoded uint8 images
    through scoring's TTA with the learner's batch transforms (IntToFloatTensor, training augmentation
    for the augmented passes, Normalize). `forward` (default: the learner's model in eval mode) maps a
    normalised batch to logits."""
    model = learn.model.eval()
    if forward is None:

        @torch.inference_mode()
        def forward(x: torch.Tensor) -> torch.Tensor:
            return model(torch.as_tensor(x)).float()

    plain_tfms, aug_tfms = fastai_passes(list(learn.dls.train.after_batch.fs))
    decoded = (dl or learn.dls.valid).new(after_batch=Pipeline([]), shuffle=False, drop_last=False)
    probs, plain, targets = [], [], []
    with torch.inference_mode():
        for images, y in decoded:
            blended, plain_pass = tta_probabilities(forward, torch.as_tensor(images), plain_tfms, aug_tfms, tta)
            probs.append(blended)
            plain.append(plain_pass)
            targets.append(torch.as_tensor(y).cpu().numpy())
    return ValidationSet(tta, np.concatenate(probs), np.concatenate(plain), np.concatenate(targets).astype(int))
