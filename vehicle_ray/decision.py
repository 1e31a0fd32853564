"""From probabilities to decisions: an operating point for the class that matters, an "uncertain" band
routed to people, and abstention for multi-class models.

`pick_operating_point` chooses the threshold on held-out data (training's validation set, or
evaluate's labeled set); `decide` turns served probabilities into the `decision` column. Both are pure
functions of numpy arrays, so their rules are unit-tested on constructed probabilities.

The rule `decide` applies, row by row (p = probability of the positive class):
  1. a band LOW,HIGH is set and LOW <= p <= HIGH           -> "uncertain"
  2. a positive class is set and p >= threshold            -> the positive class
  3. otherwise the most probable class (without a positive class: of all classes; with one: of the
     other classes, so the threshold alone decides for the positive class); if a minimum confidence
     is set and that class's probability is below it       -> "uncertain"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vehicle_ray.errors import InputError

UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class OperatingTarget:
    """What the operating point must achieve for `positive_class` on held-out data: a recall or a
    precision (exactly one)."""

    positive_class: str
    target_recall: float | None = None
    target_precision: float | None = None

    def __post_init__(self) -> None:
        targets = [t for t in (self.target_recall, self.target_precision) if t is not None]
        if len(targets) != 1:
            raise InputError("--positive-class needs exactly one of --target-recall or --target-precision")
        if not 0.0 < targets[0] <= 1.0:
            raise InputError("--target-recall/--target-precision must be within (0, 1]")

    def check_classes(self, classes: list[str]) -> int:
        """The positive class's index in `classes` (InputError when it is not one of them)."""
        if self.positive_class not in classes:
            raise InputError(f"--positive-class {self.positive_class!r} is not one of the classes {classes}")
        return classes.index(self.positive_class)


def target_from_flags(
    positive_class: str | None, target_recall: float | None, target_precision: float | None
) -> OperatingTarget | None:
    """The CLI's three flags as one target (None without --positive-class; a target without it is an error)."""
    if positive_class is None:
        if target_recall is not None or target_precision is not None:
            raise InputError("--target-recall/--target-precision need --positive-class")
        return None
    return OperatingTarget(positive_class, target_recall, target_precision)


def pick_operating_point(scores: np.ndarray, is_positive: np.ndarray, target: OperatingTarget) -> dict[str, Any]:
    """The threshold on `scores` (the positive class's probabilities) that meets the target on this data:
    for a recall target the highest threshold that still reaches it (the fewest false alarms), for a
    precision target the lowest threshold that reaches it (the most recall). When no threshold reaches
    a precision target, the most precise one is chosen and `met` is False."""
    from sklearn.metrics import precision_recall_curve  # here: scoring imports this module, not sklearn

    scores, is_positive = np.asarray(scores, dtype=np.float32), np.asarray(is_positive, dtype=bool)
    if not is_positive.any() or is_positive.all():
        raise InputError(
            f"cannot pick an operating point for {target.positive_class!r}: the held-out set needs both "
            f"positive and negative examples ({int(is_positive.sum())} of {len(is_positive)} positive)"
        )
    precision, recall, thresholds = precision_recall_curve(is_positive, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if target.target_recall is not None:
        met = recall >= target.target_recall
        i = int(np.flatnonzero(met)[-1])  # recall never rises with the threshold: the highest that meets it
    else:
        met = precision >= target.target_precision
        i = int(np.flatnonzero(met)[0]) if met.any() else int(np.argmax(precision))
    return {
        "positive_class": target.positive_class,
        "target": {"recall": target.target_recall}
        if target.target_recall is not None
        else {"precision": target.target_precision},
        "threshold": float(thresholds[i]),
        "precision": round(float(precision[i]), 6),
        "recall": round(float(recall[i]), 6),
        "met": bool(met[i]),
        "n": int(len(scores)),
        "positives": int(is_positive.sum()),
    }


@dataclass(frozen=True)
class DecisionPolicy:
    """How scoring turns probabilities into `decision`: from model.json's operating point (positive class
    and threshold) and the scoring options (band, minimum confidence). All None: decision = label."""

    positive: int | None = None  # index of the positive class in the model's classes
    threshold: float | None = None
    band: tuple[float, float] | None = None
    min_confidence: float | None = None

    def describe(self, classes: list[str]) -> dict[str, Any]:
        """The policy as summary.json records it."""
        return {
            "positive_class": None if self.positive is None else classes[self.positive],
            "threshold": self.threshold,
            "uncertain_band": list(self.band) if self.band else None,
            "min_confidence": self.min_confidence,
        }


def decision_policy(
    classes: list[str],
    operating_point: dict[str, Any] | None,
    band: tuple[float, float] | None,
    min_confidence: float | None,
) -> DecisionPolicy:
    """The policy for a model's classes; InputError for a band without an operating point, or an
    "uncertain" outcome that a class of the same name would make ambiguous."""
    if band is not None and operating_point is None:
        raise InputError(
            "--uncertain-band needs a model with an operating point (train or evaluate with --positive-class)"
        )
    if (band is not None or min_confidence is not None) and UNCERTAIN in classes:
        raise InputError(f"a class is named {UNCERTAIN!r}: --uncertain-band/--min-confidence would be ambiguous")
    if operating_point is None:
        return DecisionPolicy(min_confidence=min_confidence)
    return DecisionPolicy(
        positive=classes.index(operating_point["positive_class"]),
        threshold=float(operating_point["threshold"]),
        band=band,
        min_confidence=min_confidence,
    )


def decide(probs: np.ndarray, classes: list[str] | np.ndarray, policy: DecisionPolicy) -> np.ndarray:
    """The decision of every row of `probs` (rows follow `classes`), by the rule in the module docstring."""
    probs = np.asarray(probs, dtype=np.float32)
    names = np.asarray(classes, dtype=object)
    rows = np.arange(len(probs))
    others = probs.copy()
    if policy.positive is not None:
        others[:, policy.positive] = -np.inf
    chosen = others.argmax(axis=1)
    decision = names[chosen]
    if policy.min_confidence is not None:
        decision = np.where(probs[rows, chosen] < policy.min_confidence, UNCERTAIN, decision)
    if policy.positive is not None:
        p = probs[:, policy.positive]
        decision = np.where(p >= policy.threshold, names[policy.positive], decision)
        if policy.band is not None:
            low, high = policy.band
            decision = np.where((p >= low) & (p <= high), UNCERTAIN, decision)
    return decision.astype(object)
