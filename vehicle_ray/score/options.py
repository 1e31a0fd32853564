"""Scoring options: one typed, self-validating object shared by the library, the CLI and evaluate.

The CLI takes its defaults and choices from here (the field defaults, BACKENDS, TTA_PRECISIONS), so
the command line and the library cannot drift apart. Invalid values raise InputError on construction,
before any listing or Ray work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

from vehicle_ray.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000  # larger images go to errors/ (decompression bombs)

Backend = Literal["auto", "onnx", "torch"]
TTAPrecision = Literal["auto", "int8", "full"]
TTAMode = Literal["full", "adaptive"]
BACKENDS: tuple[str, ...] = get_args(Backend)
TTA_PRECISIONS: tuple[str, ...] = get_args(TTAPrecision)
TTA_MODES: tuple[str, ...] = get_args(TTAMode)
# The kinds of errors/ rows (the `error_kind` column; decode.ERROR_KINDS gives each its message prefix)
# that --retry-errors can score again. A transient read failure is never an errors/ row (it is deferred).
ERROR_KIND_NAMES = ("empty", "too_large", "not_image", "corrupt", "not_found", "read", "other")


@dataclass(frozen=True)
class ScoreOptions:
    """How to score. None means "from model.json" (TTA) or "from the cluster" (actor sizing)."""

    tta_n: int | None = None
    tta_beta: float | None = None
    tta_max: bool = False
    no_tta: bool = False
    # adaptive: TTA's augmented passes only for images whose plain pass is below the threshold
    # (adaptive_tta.py); full: every image gets them
    tta_mode: TTAMode = "full"
    tta_threshold: float | None = None  # adaptive's threshold; None: model.json's adaptive_tta
    batch_size: int = 64
    actors: int | None = None  # fixed pool size, or the minimum when max_actors is set
    max_actors: int | None = None  # an autoscaling pool of actors..max_actors (CLI: --actors MIN..MAX)
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    backend: Backend = "auto"
    tta_precision: TTAPrecision = "auto"  # of TTA's passes: auto (int8 where possible), int8, full
    max_pixels: int = DEFAULT_MAX_PIXELS
    exact_decode: bool = False  # False: large JPEGs decode at reduced scale (decode.py); True: always in full
    incremental: bool = False
    relist: bool = False  # --incremental: walk the whole input, not only above the last run's watermark
    overwrite: bool = False
    retry_errors: tuple[str, ...] = ()  # with --incremental: also score the committed errors of these kinds again
    glob: str | None = None
    fn_col: str | int = 0
    emit_plain: bool = False  # also write the plain pass's probabilities (evaluate's TTA-off accuracy)
    commit_every: int = 10_000  # files per chunk commit at most
    # Seconds: a chunk is committed at the latest this long after its first row, so a crash loses about
    # this much work. One commit of 2,000 rows costs 22 ms locally (fsyncs included) and 340 ms on the
    # moto S3 server (bench/bench_commit.py): 0.15% and 2.3% of 15 s.
    commit_interval: float = 15.0
    lease: bool = True  # one writer per output (lease.py)
    wait: float = 0.0  # seconds to wait for another run's lease before exiting with 75
    lease_ttl: float = 120.0  # a holder silent for longer is presumed dead
    wait_for_resources: float | None = None  # seconds for the first model actor to start; None: as long as it takes
    progress_interval: float = 30.0  # seconds between progress lines outside a terminal
    calibration: bool = True  # apply model.json's temperature when it has one (CLI: --no-calibration)
    uncertain_band: tuple[float, float] | None = None  # positive-class probabilities decided "uncertain"
    min_confidence: float | None = None  # below it the argmax class is decided "uncertain"
    fail_on_drift: float | None = None  # after committing, exit EXIT_DRIFT when the run's drift is above it
    # At most this many files to score (after --incremental dropped the done ones), on no cluster, are
    # scored in the command's own process. On
    # 2 CPUs the embedded Ray's processes cost ~20 s before the first predictions and its steady state
    # is no faster than one process (measured: 600 JPEGs at 224 px 23.4 s in-process, 44.4 s on Ray);
    # with more cores Ray's parallel decode and actors pay off sooner. 0: always Ray.
    in_process_up_to: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"--backend must be one of {', '.join(BACKENDS)} (got {self.backend!r})")
        if self.tta_precision not in TTA_PRECISIONS:
            problems.append(f"--tta-precision must be one of {', '.join(TTA_PRECISIONS)} (got {self.tta_precision!r})")
        if self.tta_mode not in TTA_MODES:
            problems.append(f"--tta-mode must be one of {', '.join(TTA_MODES)} (got {self.tta_mode!r})")
        if self.tta_threshold is not None and not 0.0 < self.tta_threshold <= 1.0:
            problems.append("--tta-threshold must be within (0, 1]")
        if self.tta_threshold is not None and self.tta_mode != "adaptive":
            problems.append("--tta-threshold needs --tta-mode adaptive")
        if self.tta_mode == "adaptive" and (self.no_tta or self.tta_n == 0):
            problems.append("--tta-mode adaptive needs TTA's augmented passes (not --no-tta or --tta-n 0)")
        if self.batch_size < 1:
            problems.append("--batch-size must be >= 1")
        if self.tta_n is not None and self.tta_n < 0:
            problems.append("--tta-n must be >= 0")
        if self.tta_beta is not None and not 0.0 <= self.tta_beta <= 1.0:
            problems.append("--tta-beta must be within [0, 1]")
        if self.actors is not None and self.actors < 1:
            problems.append("--actors must be >= 1")
        if self.max_actors is not None and self.max_actors < (self.actors or 1):
            problems.append("--actors MIN..MAX needs 1 <= MIN <= MAX")
        if self.commit_every < 1:
            problems.append("--commit-every must be >= 1")
        if self.relist and not self.incremental:
            problems.append("--relist needs --incremental (a full run lists everything anyway)")
        if self.commit_interval <= 0:
            problems.append("--commit-interval must be > 0")
        if self.wait < 0 or self.lease_ttl <= 0 or self.progress_interval <= 0:
            problems.append("--wait must be >= 0, --lease-ttl and --progress-interval > 0")
        if self.wait_for_resources is not None and self.wait_for_resources <= 0:
            problems.append("--wait-for-resources must be > 0")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            problems.append("--cpus-per-actor must be > 0")
        if self.gpus_per_actor < 0:
            problems.append("--gpus-per-actor must be >= 0")
        if self.max_pixels < 1:
            problems.append("--max-pixels must be >= 1")
        if self.uncertain_band is not None and not 0.0 <= self.uncertain_band[0] < self.uncertain_band[1] <= 1.0:
            problems.append("--uncertain-band LOW,HIGH needs 0 <= LOW < HIGH <= 1")
        if self.min_confidence is not None and not 0.0 < self.min_confidence <= 1.0:
            problems.append("--min-confidence must be within (0, 1]")
        if self.in_process_up_to < 0:
            problems.append("--in-process-up-to must be >= 0")
        if self.fail_on_drift is not None and self.fail_on_drift < 0:
            problems.append("--fail-on-drift must be >= 0")
        unknown = [k for k in self.retry_errors if k not in ERROR_KIND_NAMES]
        if unknown:
            problems.append(
                f"--retry-errors takes kinds among {', '.join(ERROR_KIND_NAMES)} or all (got {', '.join(unknown)})"
            )
        if self.retry_errors and (not self.incremental or self.overwrite):
            problems.append("--retry-errors needs --incremental (it rescores errors of the runs in --output)")
        if problems:
            raise InputError("; ".join(problems))

    def replace(self, **changes: object) -> ScoreOptions:
        return dataclasses.replace(self, **changes)


def parse_actors(text: str | None) -> tuple[int | None, int | None]:
    """--actors N (a fixed pool) or MIN..MAX (an autoscaling pool) -> (actors, max_actors)."""
    if text is None:
        return None, None
    low, sep, high = text.partition("..")
    try:
        return (int(low), int(high)) if sep else (int(low), None)
    except ValueError:
        raise InputError(f"--actors takes N or MIN..MAX (got {text!r})") from None


def parse_error_kinds(text: str | None) -> tuple[str, ...]:
    """--retry-errors KIND[,KIND...] or all -> the kinds; ScoreOptions checks the names."""
    kinds = tuple(k.strip() for k in (text or "").split(",") if k.strip())
    return ERROR_KIND_NAMES if kinds == ("all",) else kinds


def parse_band(text: str | None) -> tuple[float, float] | None:
    """--uncertain-band LOW,HIGH -> (low, high); the range itself is checked by ScoreOptions."""
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--uncertain-band takes LOW,HIGH (got {text!r})") from None
    return low, high
