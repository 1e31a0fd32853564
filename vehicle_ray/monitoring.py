"""Per-run monitoring: what a scoring run predicted, how confident it was, and how far that is from
what the model was validated on.

Drift is the population stability index (PSI) of two distributions against the validation baseline
stored in model.json: the predicted class rates, and the confidence histogram (10 equal bins on
[0, 1]). PSI = sum (a - e) * ln(a / e) over the bins, with each sample's shares smoothed as
(count + 0.5) / (n + 0.5 k), so that an empty bin of a small sample does not make it huge (with a
1e-4 floor instead, one image in a bin the validation set left empty adds ~0.08); the usual reading
is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
Both are measured on samples (the validation set, tonight's files), and PSI between two samples of
one distribution is not 0: for k non-empty bins it is about (k - 1) * (1/n_run + 1/n_baseline) (PSI
is close to a chi-square statistic divided by the sample size). With the 10 confidence bins, a
60-image run against an 80-image validation set reads up to 0.26 from noise alone (measured: 0.37
with floored shares on test images of the sample data drawn like the training set; simulated, 500
pairs of samples of one distribution, 60 vs 80: 95th percentile of the excess 0.11-0.15 with
smoothing, 0.19-0.27 with the floor). So each PSI is reported raw and as its
excess over that noise level, and the excess is what `drift` and the flags use; at a nightly run's
thousands of files against a validation set of thousands the correction is ~0.01 and PSI reads as
usual. A run's `drift` is the larger excess of the two: a class mix that moved, or a model that
suddenly is much more or less sure of itself, both deserve a look. Both need only the rows the driver already sees,
and a baseline of two short lists, so they cost nothing at scale.

Pure functions (numpy) plus one small accumulator for the scoring driver.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

CONFIDENCE_BINS = 10
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DRIFT_FLAG = 0.25  # PSI above this flags the run (`runs` FLAGS column)
ERROR_FLAG = 0.05  # an error rate above this flags the run
_FLOOR = 1e-4


def confidence_histogram(confidence: np.ndarray) -> list[float]:
    """Shares of rows per confidence bin (CONFIDENCE_BINS equal bins on [0, 1])."""
    counts, _ = np.histogram(np.asarray(confidence, dtype=np.float64), bins=CONFIDENCE_BINS, range=(0.0, 1.0))
    return [round(float(c), 6) for c in counts / max(counts.sum(), 1)]


def class_rates(labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Share of rows predicted as each class (every class listed, in model order)."""
    labels = np.asarray(labels, dtype=object)
    n = max(len(labels), 1)
    return {c: round(float((labels == c).sum()) / n, 6) for c in classes}


def baseline(probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The validation baseline a run is compared with: predicted class rates and confidence histogram,
    and `n`, the number of images they come from (the sampling noise of a comparison depends on it)."""
    probs = np.asarray(probs)
    return {
        "class_rates": class_rates(np.asarray(classes, dtype=object)[probs.argmax(axis=1)], classes),
        "confidence_histogram": confidence_histogram(probs.max(axis=1)),
        "n": int(len(probs)),
    }


def _smoothed(shares: list[float], n: int | None) -> np.ndarray:
    """Shares of a sample of `n` as (count + 0.5) / (n + 0.5 k) (Jeffreys smoothing): an empty bin of a
    small sample is "rare", not "impossible". Without `n` (baselines of older artifacts): floored at 1e-4."""
    s = np.asarray(shares, dtype=np.float64)
    return (s * n + 0.5) / (n + 0.5 * len(s)) if n else np.maximum(s, _FLOOR)


def psi(
    actual: list[float], expected: list[float], n_actual: int | None = None, n_expected: int | None = None
) -> float:
    """Population stability index of two distributions over the same bins (shares of samples of
    `n_actual` and `n_expected` when known: see `_smoothed`)."""
    a, e = _smoothed(actual, n_actual), _smoothed(expected, n_expected)
    return round(float(np.sum((a - e) * np.log(a / e))), 6)


def psi_noise(actual: list[float], expected: list[float], n_actual: int, n_expected: int | None) -> float:
    """The PSI two samples of one distribution show on average: (k - 1) * (1/n_actual + 1/n_expected)
    for k bins that are non-empty in either (baselines of older artifacts carry no n: 1/n_actual only)."""
    k = int(np.sum((np.asarray(actual) > 0) | (np.asarray(expected) > 0)))
    return max(k - 1, 0) * (1 / max(n_actual, 1) + (1 / n_expected if n_expected else 0.0))


def drift(rates: dict[str, float], histogram: list[float], reference: dict[str, Any], n: int) -> dict[str, float]:
    """PSI of the class rates and of the confidence histogram of `n` scored rows against `reference`
    (a `baseline`): raw, and in excess of `psi_noise` (`*_excess`, what `max` and the flags use)."""
    classes = list(reference["class_rates"])
    pairs = {
        "class_rates": ([rates.get(c, 0.0) for c in classes], [reference["class_rates"][c] for c in classes]),
        "confidence": (histogram, reference["confidence_histogram"]),
    }
    result: dict[str, float] = {}
    for name, (actual, expected) in pairs.items():
        raw = psi(actual, expected, n, reference.get("n"))
        result[f"{name}_psi"] = raw
        result[f"{name}_excess"] = round(max(0.0, raw - psi_noise(actual, expected, n, reference.get("n"))), 6)
    result["max"] = max(result["class_rates_excess"], result["confidence_excess"])
    return result


class RunMonitor:
    """Accumulates a run's predicted labels and confidences on the driver, batch by batch (about 5
    bytes a row: a million-file night costs a few MB)."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.counts = dict.fromkeys(classes, 0)
        self.confidences: list[np.ndarray] = []

    def update(self, labels: list[str | None], confidence: np.ndarray) -> None:
        """One batch of committed-to-be rows; rows without a label (errors) are skipped."""
        for label in labels:
            if label is not None:
                self.counts[label] += 1
        confidence = np.asarray(confidence, dtype=np.float32)
        self.confidences.append(confidence[~np.isnan(confidence)])

    def summary(self, files: int, errors: int, reference: dict[str, Any] | None) -> dict[str, Any]:
        """What the run record keeps: class rates, confidence quantiles and histogram, error rate,
        drift against `reference` (None without a baseline or without a scored row) and flags."""
        conf = np.concatenate(self.confidences) if self.confidences else np.zeros(0, np.float32)
        scored = sum(self.counts.values())
        rates = {c: round(k / scored, 6) if scored else 0.0 for c, k in self.counts.items()}
        histogram = confidence_histogram(conf)
        result = {
            "class_rates": rates,
            "confidence": {
                "mean": round(float(conf.mean()), 6) if len(conf) else None,
                "quantiles": {f"p{round(q * 100):02d}": round(float(np.quantile(conf, q)), 6) for q in QUANTILES}
                if len(conf)
                else {},
                "histogram": histogram,
                "bins": CONFIDENCE_BINS,
            },
            "error_rate": round(errors / files, 6) if files else 0.0,
            "drift": drift(rates, histogram, reference, scored) if reference is not None and scored else None,
        }
        result["flags"] = flags(result)
        return result


def flags(monitoring: dict[str, Any]) -> list[str]:
    """Names of what looks wrong in a run: drift of the class rates or the confidence, many errors."""
    found = []
    d = monitoring.get("drift") or {}
    if d.get("class_rates_excess", 0.0) > DRIFT_FLAG:
        found.append("class-drift")
    if d.get("confidence_excess", 0.0) > DRIFT_FLAG:
        found.append("confidence-drift")
    if monitoring.get("error_rate", 0.0) > ERROR_FLAG:
        found.append("errors")
    return found


def drift_of(summary: dict[str, Any]) -> float | None:
    """A run summary's drift (the larger PSI excess), None when it has none (an older run, no baseline)."""
    d = (summary.get("monitoring") or {}).get("drift")
    return None if d is None else float(d["max"])


def run_time(run_id: str) -> str:
    """The UTC start time encoded in a run id (20261129T020000Z-abc123) as ISO 8601."""
    try:
        when = datetime.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return ""
    return when.isoformat(timespec="seconds")


def run_rows(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished run, oldest first: what `vehicle-ray runs` shows (older runs without
    monitoring have None in its columns)."""
    rows = []
    for run_id in sorted(records):
        r = records[run_id]
        m = r.get("monitoring") or {}
        rows.append(
            {
                "run": run_id,
                "time": run_time(run_id),
                "files": r.get("files_seen"),
                "scored": r.get("scored"),
                "errors": r.get("errors"),
                "class_rates": m.get("class_rates"),
                "mean_confidence": (m.get("confidence") or {}).get("mean"),
                "confidence_quantiles": (m.get("confidence") or {}).get("quantiles"),
                "drift": drift_of(r),
                "flags": m.get("flags", []),
                "calibrated": (r.get("calibration") or {}).get("applied"),
                "model_id": r.get("model_id"),
                "model_registry_name": r.get("model_registry_name"),
                "model_registry_version": r.get("model_registry_version"),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """`runs` as a fixed-width text table."""
    header = ["RUN", "TIME", "MODEL", "VERSION", "FILES", "ERRORS", "CLASS RATES", "MEAN CONF", "DRIFT", "FLAGS"]
    lines = [
        [
            r["run"],
            r["time"],
            _cell(r["model_id"]),
            _registry_cell(r),
            _cell(r["files"]),
            _cell(r["errors"]),
            " ".join(f"{c}={v:.2f}" for c, v in r["class_rates"].items()) if r["class_rates"] else "-",
            "-" if r["mean_confidence"] is None else f"{r['mean_confidence']:.3f}",
            "-" if r["drift"] is None else f"{r['drift']:.3f}",
            ",".join(r["flags"]) or "-",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *lines]
    )


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _registry_cell(row: dict[str, Any]) -> str:
    """NAME/VERSION of a run's registry model (a models:/ --model), else "-": a new version in this
    column tells a new model from drift in the columns beside it."""
    name, version = row["model_registry_name"], row["model_registry_version"]
    return f"{name}/{version}" if name else "-"
