"""Adaptive TTA's threshold fit and serving arithmetic (adaptive_tta.py), on hand-made probabilities."""

import numpy as np
import pytest

from vehicle_ray.adaptive_tta import (
    CANDIDATES,
    TARGET_AGREEMENT,
    AdaptiveGate,
    adaptive_probabilities,
    fit_adaptive_threshold,
    served_probabilities,
)
from vehicle_ray.calibration import apply_temperature


def two_class(conf: list[float]) -> np.ndarray:
    c = np.asarray(conf, dtype=np.float32)
    return np.stack([c, 1 - c], axis=1)


def test_the_threshold_is_the_smallest_candidate_that_keeps_full_ttas_labels():
    # 1,000 images: the plain pass's label differs from TTA's on two, at confidences 0.93 and 0.96
    conf = np.full(1000, 0.999, dtype=np.float32)
    conf[:100] = 0.93
    conf[100:200] = 0.96
    plain = two_class(conf.tolist())
    blended = plain.copy()
    blended[[0, 100]] = blended[[0, 100]][:, ::-1]  # TTA flips two labels
    record = fit_adaptive_threshold(plain, blended)
    table = {row["threshold"]: row for row in record["candidates"]}
    assert [row["threshold"] for row in record["candidates"]] == list(CANDIDATES)
    assert table[0.9]["agreement"] == pytest.approx(0.998) and table[0.9]["skip_share"] == 1.0
    # one disagreement (0.1%) is allowed at 99.9%: 0.95 skips the 0.96 one and keeps it
    assert table[0.95]["agreement"] == pytest.approx(0.999) and table[0.95]["skip_share"] == pytest.approx(0.9)
    assert record["threshold"] == 0.95 and TARGET_AGREEMENT == 0.999
    assert record["validation_images"] == 1000


def test_no_threshold_when_no_candidate_reaches_the_target():
    plain = two_class([0.9999] * 10)
    blended = plain[:, ::-1].copy()  # TTA disagrees everywhere, even where the plain pass is sure
    assert fit_adaptive_threshold(plain, blended)["threshold"] is None


def test_the_gate_compares_the_raw_plain_pass():
    plain = two_class([0.85, 0.97, 0.03])
    assert AdaptiveGate(0.9).needs_tta(plain).tolist() == [True, False, False]


def test_served_rows_get_the_temperature_of_what_they_were_served():
    probs = two_class([0.7, 0.8, 0.9])
    skipped = np.array([True, False, True])
    got = served_probabilities(probs, skipped, plain_temperature=2.0, tta_temperature=0.5)
    assert np.allclose(got[skipped], apply_temperature(probs[skipped], 2.0))
    assert np.allclose(got[~skipped], apply_temperature(probs[~skipped], 0.5))
    assert np.array_equal(served_probabilities(probs, skipped, None, None), probs)


def test_adaptive_probabilities_take_the_plain_pass_where_the_gate_lets_a_row_skip():
    plain = two_class([0.6, 0.99])
    blended = two_class([0.3, 0.2])
    probs, skipped = adaptive_probabilities(plain, blended, AdaptiveGate(0.95))
    assert skipped.tolist() == [False, True]
    assert np.array_equal(probs[0], blended[0]) and np.array_equal(probs[1], plain[1])
