"""Per-run monitoring: what a scoring run predicted, how confident it was, and how far that is from
what the model was validated on.

Drift is the population stability index (PSI) of two distributions against the validation baseline
stored in model.json: the predicted class rates, and the confidence histogram (10 equal bins on
[0, 1]). PSI = sum (a - e) * ln(a / e) over the bins (shares floored at 1e-4, so an empty bin does
not make it infinite); the usual reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
A run's `drift` is the larger of the two: a class mix that moved, or a model that suddenly is much
more or less sure of itself, both deserve a look. Both need only the rows the driver already sees,
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
    """The validation baseline a run is compared with: predicted class rates and confidence histogram."""
    probs = np.asarray(probs)
    return {
        "class_rates": class_rates(np.asarray(classes, dtype=object)[probs.argmax(axis=1)], classes),
        "confidence_histogram": confidence_histogram(probs.max(axis=1)),
    }


def psi(actual: list[float], expected: list[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    return round(float(np.sum((a - e) * np.log(a / e))), 6)


def drift(rates: dict[str, float], histogram: list[float], reference: dict[str, Any]) -> dict[str, float]:
    """PSI of the class rates and of the confidence histogram against `reference` (a `baseline`)."""
    classes = list(reference["class_rates"])
    by_class = psi([rates.get(c, 0.0) for c in classes], [reference["class_rates"][c] for c in classes])
    by_confidence = psi(histogram, reference["confidence_histogram"])
    return {"class_rates_psi": by_class, "confidence_psi": by_confidence, "max": max(by_class, by_confidence)}


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
            "drift": drift(rates, histogram, reference) if reference is not None and scored else None,
        }
        result["flags"] = flags(result)
        return result


def flags(monitoring: dict[str, Any]) -> list[str]:
    """Names of what looks wrong in a run: drift of the class rates or the confidence, many errors."""
    found = []
    d = monitoring.get("drift") or {}
    if d.get("class_rates_psi", 0.0) > DRIFT_FLAG:
        found.append("class-drift")
    if d.get("confidence_psi", 0.0) > DRIFT_FLAG:
        found.append("confidence-drift")
    if monitoring.get("error_rate", 0.0) > ERROR_FLAG:
        found.append("errors")
    return found


def drift_of(summary: dict[str, Any]) -> float | None:
    """A run summary's drift (the larger PSI), None when it has none (an older run, no baseline)."""
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
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """`runs` as a fixed-width text table."""
    header = ["RUN", "TIME", "FILES", "ERRORS", "CLASS RATES", "MEAN CONF", "DRIFT", "FLAGS"]
    lines = [
        [
            r["run"],
            r["time"],
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
