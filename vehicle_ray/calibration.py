"""Temperature scaling of served probabilities, and the two numbers that say whether it helped.

A fine-tuned network's softmax is usually over-confident. Temperature scaling divides the log of the
probabilities by one scalar T > 0 and renormalises: softmax(log(p) / T). For one pass that is
exactly the classic logits / T (softmax(log softmax(z) / T) = softmax(z / T)); for a TTA blend it
scales the blend that scoring serves. Either way it never changes the argmax, so `label` keeps its
meaning. T is fitted by minimising the negative log-likelihood on the validation set (one
parameter, bounded 1-D search: milliseconds on thousands of rows).

numpy and scipy only: the scoring driver and the actors apply it without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

ECE_BINS = 15  # the usual choice for expected calibration error (Guo et al. 2017)
TEMPERATURE_BOUNDS = (0.05, 20.0)
_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / T), row-wise, as float32; rows keep their argmax."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    return np.exp(log_softmax(logp / temperature, axis=-1)).astype(np.float32)


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(p, _EPS, 1.0)).mean())


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class: sum over equal-width confidence bins of
    |accuracy - mean confidence| weighted by the bin's share of rows."""
    table = reliability_table(probs, targets, bins)
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / max(n, 1))


def reliability_table(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty confidence bin: its range, row count, mean confidence and accuracy (the
    reliability diagram's data)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": int((which == b).sum()),
            "confidence": float(confidence[which == b].mean()),
            "accuracy": float(correct[which == b].mean()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """The T that minimises the validation NLL of softmax(log(probs) / T)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0))
    rows, targets = np.arange(len(targets)), np.asarray(targets)

    def loss(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=-1)[rows, targets].mean())

    low, high = np.log(TEMPERATURE_BOUNDS)
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x))


def calibration_record(probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Fit T on (probs, targets) and report validation NLL and ECE before and after, as model.json
    records it. A fit that would not lower the NLL (T within rounding of 1) is recorded all the same."""
    temperature = fit_temperature(probs, targets)
    calibrated = apply_temperature(probs, temperature)
    return {
        "temperature": round(temperature, 6),
        "nll_before": round(nll(probs, targets), 6),
        "nll_after": round(nll(calibrated, targets), 6),
        "ece_before": round(ece(probs, targets), 6),
        "ece_after": round(ece(calibrated, targets), 6),
    }
