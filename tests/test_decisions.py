"""Calibration, operating point, decision rule and run monitoring: pure functions on constructed data."""

import numpy as np
import pytest

from vehicle_ray.calibration import apply_temperature, calibration_record, ece, fit_temperature, nll
from vehicle_ray.decision import (
    UNCERTAIN,
    DecisionPolicy,
    OperatingTarget,
    decide,
    decision_policy,
    pick_operating_point,
)
from vehicle_ray.errors import InputError
from vehicle_ray.monitoring import DRIFT_FLAG, RunMonitor, baseline, format_table, psi, run_rows
from vehicle_ray.score.options import ScoreOptions, parse_band

CLASSES = ["car", "emergency"]


def _overconfident(n=2000, seed=0):
    """Logits of a model that is right 80% of the time but ~99% sure: true logit gap scaled x5."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    right = rng.random(n) < 0.8
    predicted = np.where(right, targets, (targets + 1 + rng.integers(0, 2, n)) % 3)
    logits[np.arange(n), predicted] += 1.5
    logits *= 5.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), targets


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    probs, targets = _overconfident()
    t = fit_temperature(probs, targets)
    assert t > 2.0  # over-confident: it has to soften
    calibrated = apply_temperature(probs, t)
    assert nll(calibrated, targets) < 0.7 * nll(probs, targets)
    assert ece(calibrated, targets) < 0.5 * ece(probs, targets)
    assert (calibrated.argmax(1) == probs.argmax(1)).all()  # label keeps its meaning
    record = calibration_record(probs, targets)
    assert record["nll_after"] < record["nll_before"] and record["ece_after"] < record["ece_before"]
    # held-out rows drawn the same way gain as well: the fit is not memorising
    other, other_targets = _overconfident(seed=1)
    assert nll(apply_temperature(other, t), other_targets) < nll(other, other_targets)


def test_temperature_one_is_the_identity_and_ece_of_a_perfect_model_is_zero():
    probs = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    assert np.allclose(apply_temperature(probs, 1.0), probs, atol=1e-6)
    assert ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_threshold_for_a_target_recall_reaches_it(target):
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    scores = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, 500), 0, 1)
    point = pick_operating_point(scores, y, OperatingTarget("emergency", target_recall=target))
    flagged = scores.astype(np.float32) >= point["threshold"]
    recall = (flagged & y).sum() / y.sum()
    assert recall >= target and point["recall"] == pytest.approx(recall) and point["met"]
    # the highest such threshold: one step up misses the target
    higher = np.sort(scores[scores.astype(np.float32) > point["threshold"]].astype(np.float32))
    if len(higher):
        assert ((scores.astype(np.float32) >= higher[0]) & y).sum() / y.sum() < target
    assert point["precision"] == pytest.approx((flagged & y).sum() / flagged.sum())


def test_threshold_for_a_target_precision_and_an_unreachable_one():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1], bool)
    point = pick_operating_point(scores, y, OperatingTarget("emergency", target_precision=0.75))
    assert point["threshold"] == pytest.approx(0.6) and point["precision"] == 0.75 and point["recall"] == 0.75
    worst = pick_operating_point(1 - scores, y, OperatingTarget("emergency", target_precision=0.99))
    assert not worst["met"]
    with pytest.raises(InputError, match="both positive and negative"):
        pick_operating_point(scores, np.ones(8, bool), OperatingTarget("emergency", target_recall=0.9))


def test_decision_follows_threshold_band_and_argmax_exactly():
    probs = np.array([[0.9, 0.1], [0.75, 0.25], [0.65, 0.35], [0.55, 0.45], [0.4, 0.6], [0.1, 0.9]], np.float32)
    policy = DecisionPolicy(positive=1, threshold=0.3)
    assert decide(probs, CLASSES, policy).tolist() == ["car", "car", "emergency", "emergency", "emergency", "emergency"]
    banded = DecisionPolicy(positive=1, threshold=0.3, band=(0.25, 0.45))
    assert decide(probs, CLASSES, banded).tolist() == ["car", UNCERTAIN, UNCERTAIN, UNCERTAIN, "emergency", "emergency"]
    # a high threshold: below it the other class is decided even where emergency is the argmax
    strict = DecisionPolicy(positive=1, threshold=0.8)
    assert decide(probs, CLASSES, strict).tolist() == ["car"] * 5 + ["emergency"]
    # no operating point: decision == argmax (label); multi-class abstention below min confidence
    three = np.array([[0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]], np.float32)
    names = ["a", "b", "c"]
    assert decide(three, names, DecisionPolicy()).tolist() == ["a", "a", "c"]
    assert decide(three, names, DecisionPolicy(min_confidence=0.4)).tolist() == ["a", UNCERTAIN, "c"]


def test_decision_policy_and_options_refuse_bad_input():
    point = {"positive_class": "emergency", "threshold": 0.3}
    assert decision_policy(CLASSES, point, (0.2, 0.4), None) == DecisionPolicy(1, 0.3, (0.2, 0.4), None)
    with pytest.raises(InputError, match="needs a model with an operating point"):
        decision_policy(CLASSES, None, (0.2, 0.4), None)
    with pytest.raises(InputError, match="LOW < HIGH"):
        ScoreOptions(uncertain_band=parse_band("0.6,0.4"))
    with pytest.raises(InputError, match="LOW,HIGH"):
        parse_band("0.4")
    with pytest.raises(InputError, match="exactly one"):
        OperatingTarget("emergency", target_recall=0.9, target_precision=0.9)
    with pytest.raises(InputError, match="not one of the classes"):
        OperatingTarget("fire", target_recall=0.9).check_classes(CLASSES)


def test_psi_and_run_monitoring_against_a_baseline():
    rng = np.random.default_rng(0)
    valid = rng.dirichlet([1, 1], 400).astype(np.float32)
    reference = baseline(valid, CLASSES)
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    same, shifted = RunMonitor(CLASSES), RunMonitor(CLASSES)
    alike = rng.dirichlet([1, 1], 300).astype(np.float32)
    same.update(np.array(CLASSES, dtype=object)[alike.argmax(1)].tolist() + [None], np.append(alike.max(1), np.nan))
    shifted.update(["emergency"] * 50, np.full(50, 0.99, np.float32))
    low = same.summary(301, 1, reference)
    high = shifted.summary(50, 0, reference)
    assert low["drift"]["max"] < 0.1 and low["flags"] == [] and low["error_rate"] == pytest.approx(1 / 301, abs=1e-6)
    assert high["drift"]["class_rates_psi"] > 1.0 and {"class-drift", "confidence-drift"} <= set(high["flags"])
    assert high["class_rates"] == {"car": 0.0, "emergency": 1.0} and high["confidence"]["quantiles"]["p50"] == 0.99
    assert RunMonitor(CLASSES).summary(0, 0, reference)["drift"] is None
    rows = run_rows(
        {
            "20261129T020000Z-aaaaaa": {"files_seen": 301, "scored": 300, "errors": 1, "monitoring": low},
            "20261128T020000Z-bbbbbb": {"files_seen": 10, "scored": 10, "errors": 0},  # an older run
        }
    )
    assert [r["time"] for r in rows] == ["2026-11-28T02:00:00+00:00", "2026-11-29T02:00:00+00:00"]
    assert rows[0]["drift"] is None and rows[1]["drift"] == low["drift"]["max"]
    table = format_table(rows).splitlines()
    assert table[0].split()[:2] == ["RUN", "TIME"] and "20261128T020000Z-bbbbbb" in table[1]


def test_samples_of_one_distribution_show_psi_noise_that_the_excess_removes():
    """PSI between two small samples of the same distribution is far from 0 (about (k-1)(1/n1 + 1/n2));
    `drift` reads the excess over that, so a small run drawn like the validation set is not flagged."""
    rng = np.random.default_rng(1)
    raw, excess = [], []
    for _ in range(200):
        reference = baseline(rng.dirichlet([0.5, 0.5], 80), CLASSES)
        run = rng.dirichlet([0.5, 0.5], 60)
        monitor = RunMonitor(CLASSES)
        monitor.update(np.array(CLASSES, dtype=object)[run.argmax(1)].tolist(), run.max(1))
        d = monitor.summary(60, 0, reference)["drift"]
        raw.append(d["confidence_psi"])
        excess.append(d["confidence_excess"])
    assert np.median(raw) > 0.08  # noise alone (5 non-empty bins: about 4 * (1/60 + 1/80) = 0.12)
    assert np.median(excess) < 0.02 and np.quantile(excess, 0.95) < DRIFT_FLAG
