"""What the model actors serve, resolved once on the driver from model.json and the options: the
calibration temperature for each kind of row, the decision policy, adaptive TTA's gate, and the
validation baseline that drift is measured against."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vehicle_ray.adaptive_tta import AdaptiveGate
from vehicle_ray.decision import DecisionPolicy, decision_policy
from vehicle_ray.score.model import ModelSpec
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.tta import TTASettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPolicy:
    """The model actors' instructions beyond the passes they run. A row served the plain pass alone
    (`--no-tta`, or adaptive TTA's skips) is calibrated with the plain pass's temperature, a row served
    TTA's blend with the blend's (None: raw probabilities)."""

    decision: DecisionPolicy = field(default_factory=DecisionPolicy)
    plain_temperature: float | None = None
    tta_temperature: float | None = None
    gate: AdaptiveGate | None = None  # adaptive TTA; None: every row gets the same passes

    @property
    def calibrated(self) -> bool:
        return self.plain_temperature is not None

    def describe(self, tta: TTASettings) -> dict:
        """summary.json's `calibration`: whether it applied and the temperature of the rows that TTA
        as configured serves (and the plain pass's beside it under adaptive TTA)."""
        record = {
            "applied": self.calibrated,
            "temperature": self.plain_temperature if tta.n == 0 else self.tta_temperature,
        }
        if self.gate is not None:
            record["plain_temperature"] = self.plain_temperature
        return record


def serving_policy(spec: ModelSpec, tta: TTASettings, opts: ScoreOptions) -> ServingPolicy:
    """Temperatures from model.json's calibration unless --no-calibration (artifacts without one, and
    --allow-pickle, serve raw probabilities), the decision policy, and the adaptive gate."""
    calibration = spec.calibration if opts.calibration else None
    return ServingPolicy(
        decision=decision_policy(spec.classes, spec.operating_point, opts.uncertain_band, opts.min_confidence),
        plain_temperature=None if calibration is None else float(calibration["plain"]["temperature"]),
        tta_temperature=None if calibration is None else float(calibration["tta"]["temperature"]),
        gate=adaptive_gate(spec, tta, opts),
    )


def adaptive_gate(spec: ModelSpec, tta: TTASettings, opts: ScoreOptions) -> AdaptiveGate | None:
    """Adaptive TTA's gate: --tta-threshold, else model.json's fitted threshold; None (full TTA, with
    one line saying so) for an artifact that has none."""
    if opts.tta_mode != "adaptive" or tta.n == 0:
        return None
    record = spec.adaptive_tta or {}
    threshold = opts.tta_threshold if opts.tta_threshold is not None else record.get("threshold")
    if threshold is None:
        why = (
            "no candidate threshold kept full TTA's labels on its validation set"
            if record
            else "it was trained without adaptive_tta in model.json"
        )
        logger.warning(f"{spec.model_id}: scoring with full TTA: {why}; --tta-threshold sets one")
        return None
    return AdaptiveGate(float(threshold))


def monitoring_reference(spec: ModelSpec, tta: TTASettings, serving: ServingPolicy) -> dict | None:
    """The validation baseline that matches what this run serves (TTA, adaptive or plain; calibrated
    or raw confidences); None when the artifact has none."""
    if spec.baseline is None:
        return None
    fitted = (spec.adaptive_tta or {}).get("threshold")
    adaptive = serving.gate is not None and serving.gate.threshold == fitted and "adaptive" in spec.baseline
    # another --tta-threshold than the fitted one is compared with full TTA's baseline, the nearer one
    mode = "plain" if tta.n == 0 else "adaptive" if adaptive else "tta"
    baseline = spec.baseline[mode]
    histogram = baseline["confidence_histogram"] if serving.calibrated else baseline["confidence_histogram_raw"]
    return {"class_rates": baseline["class_rates"], "confidence_histogram": histogram, "n": baseline.get("n")}
