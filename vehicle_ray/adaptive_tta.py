"""Adaptive TTA: the n augmented passes only for the images whose plain pass is unsure.

TTA costs n+1 forward passes per image, but a trained model's plain pass is confident on most images
and the augmented passes rarely change a confident label. Adaptive TTA runs the plain pass for every
image and the augmented passes (and fastai's blend) only where the plain pass's confidence is below a
threshold τ. The threshold is fitted at training, on the validation set that end-of-training already
runs through full TTA: the smallest candidate τ at which the adaptive labels agree with full TTA's on
at least TARGET_AGREEMENT of the images (`fit_adaptive_threshold`, recorded as model.json's
`adaptive_tta`).

The gate compares the plain pass's raw top-class probability, before calibration: the temperature
fitted on a small validation set can sit at its bound (0.05 on the tests' sample model, which has
every validation image right) and would map every confidence to about 1, leaving the gate nothing to
tell apart; calibration is then applied to what each row is served. A row that skips is served exactly
what `--no-tta` serves for it; a row that does not, what full TTA serves.

numpy and scipy only (through calibration): the training side fits, the scoring actors gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vehicle_ray.calibration import apply_temperature

# At least this share of the validation images keeps full TTA's label. On a validation set smaller than
# 1,000 images it means no disagreement at all among the images that skip.
TARGET_AGREEMENT = 0.999
# The candidate thresholds, lowest first. Below 0.8 the skipped share barely grows (on six trained
# 10-class models, 92-98% of the images already skip at 0.90) while the images near a class
# boundary, where the augmented passes do change labels, start to skip.
CANDIDATES = (0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class AdaptiveGate:
    """Which images of a batch get the augmented passes."""

    threshold: float  # raw plain-pass confidence at or above which an image skips the augmented passes

    def needs_tta(self, plain: np.ndarray) -> np.ndarray:
        """Boolean mask: the rows of `plain` (raw plain-pass probabilities) whose confidence is below τ."""
        return np.asarray(plain).max(axis=1) < self.threshold


def fit_adaptive_threshold(plain: np.ndarray, blended: np.ndarray) -> dict[str, Any]:
    """model.json's `adaptive_tta`: for every candidate τ, the share of the validation images that skip
    and the share whose adaptive label equals full TTA's; `threshold` is the smallest τ that reaches
    TARGET_AGREEMENT (None when none does: adaptive scoring then runs full TTA)."""
    confidence = plain.max(axis=1)
    differs = plain.argmax(axis=1) != blended.argmax(axis=1)
    n = len(plain)
    table = []
    for threshold in CANDIDATES:
        skip = confidence >= threshold
        table.append(
            {
                "threshold": threshold,
                "agreement": round(1.0 - float((skip & differs).sum()) / n, 6) if n else 1.0,
                "skip_share": round(float(skip.mean()), 6) if n else 0.0,
            }
        )
    chosen = next((row for row in table if row["agreement"] >= TARGET_AGREEMENT), None)
    return {
        "threshold": None if chosen is None else chosen["threshold"],
        "gate": "plain pass's top-class probability, before calibration",
        "target_agreement": TARGET_AGREEMENT,
        "validation_images": int(n),
        "candidates": table,
    }


def served_probabilities(
    probs: np.ndarray, skipped: np.ndarray, plain_temperature: float | None, tta_temperature: float | None
) -> np.ndarray:
    """Calibrated probabilities as scoring serves them: the rows that `skipped` the augmented passes
    (their `probs` are the plain pass's) with the plain pass's temperature, the others with TTA's
    (None: as they are)."""
    out = np.asarray(probs, dtype=np.float32).copy()
    for rows, temperature in ((skipped, plain_temperature), (~skipped, tta_temperature)):
        if temperature is not None and rows.any():
            out[rows] = apply_temperature(out[rows], temperature)
    return out


def adaptive_probabilities(plain: np.ndarray, blended: np.ndarray, gate: AdaptiveGate) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, skipped) as adaptive TTA computes them, from the plain pass and full TTA of the
    same images (validation and evaluate have both): the plain pass's where the gate lets a row skip."""
    skipped = ~gate.needs_tta(plain)
    return np.where(skipped[:, None], plain, blended).astype(np.float32), skipped
