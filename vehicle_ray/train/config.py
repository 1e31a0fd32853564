"""Training options and the worker config: a leaf module (no torch, no fastai, no Ray Train).

The driver, the Ray Train controller (which unpickles the train function's config and callbacks) and
the workers all import this; keeping it free of the training stack keeps the driver and the controller
from paying its ~10 s of imports on a 2-CPU node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from vehicle_ray.data import LabeledSet
from vehicle_ray.decision import OperatingTarget
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe

ARTIFACT_SUBDIR = "artifact"  # inside the final checkpoint: the finished model artifact
TRAIN_LOG_LEVEL = "WARNING"  # Ray Train's own INFO lines would interleave with the epoch lines
FAIL_AFTER_EPOCH_ENV = "VEHICLE_RAY_FAIL_AFTER_EPOCH"  # test-only: kill the last rank once after N epochs
# Ray Train's default is 30 minutes: with a wrong NCCL interface the first broadcast (DDP's, at the start
# of each stage) hangs that long before anything is reported. 10 minutes still covers slow rank-0
# checkpoint writes that the other ranks wait for at their next collective.
DEFAULT_NCCL_TIMEOUT_S = 600
# The driver's environment variables forwarded to every worker: the NCCL library reads NCCL_SOCKET_IFNAME,
# NCCL_DEBUG, NCCL_IB_DISABLE, ... when it creates its first communicator, which happens at DDP's first
# broadcast, after the train function has set them. (Settings read when Ray Train creates the process
# group, before the train function runs, such as TORCH_NCCL_* or GLOO_SOCKET_IFNAME, must come from the
# job's runtime_env instead: docs/training.md "GPUs".)
FORWARDED_ENV_PREFIX = "NCCL_"


@dataclass(frozen=True)
class TrainOptions:
    """Where the data is, where the model goes, and how Ray Train scales the run (the recipe says
    what to train). Validated on construction: bad values are InputError before any Ray work."""

    csv: str | Path  # a local path or a URI the driver can read
    images: str | Path  # a local directory or a URI (workers copy it to a per-node cache)
    out: str | Path  # a local directory or a URI (published with model.json last)
    fn_col: str | int = 0
    label_col: str | int = 1
    more_csvs: tuple[str | Path, ...] = ()  # later label files: their labels override csv's for the same name
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # None: the cluster's CPUs / workers, or 1 if fewer CPUs are up
    storage_path: str | None = None  # None: Ray's default (~/ray_results)
    name: str | None = None  # None: a timestamped run name
    max_failures: int = 0
    overwrite: bool = False
    wait_for_resources: float | None = None  # None: wait for the worker group as long as it takes (Ray's way)
    checkpoint_every: int = 1  # epochs between checkpoints; stage ends and the last epoch always get one
    optimizer_state: bool = True  # checkpoints hold the optimizer state (about 2x the weights for Adam)
    loader_workers: int | None = None  # DataLoader worker processes; None: train.hardware's default
    nccl_timeout: float = DEFAULT_NCCL_TIMEOUT_S  # process-group timeout (NCCL; gloo on CPU), seconds
    target: OperatingTarget | None = None  # --positive-class with --target-recall/--target-precision

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append("--workers must be >= 1")
        if self.max_failures < 0:
            problems.append("--max-failures must be >= 0")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            problems.append("--cpus-per-worker must be > 0")
        if self.wait_for_resources is not None and self.wait_for_resources <= 0:
            problems.append("--wait-for-resources must be > 0 seconds")
        if self.checkpoint_every < 1:
            problems.append("--checkpoint-every must be >= 1 epoch")
        if self.loader_workers is not None and self.loader_workers < 0:
            problems.append("--loader-workers must be >= 0")
        if self.nccl_timeout < 1:
            problems.append("--nccl-timeout must be >= 1 second")
        if problems:
            raise InputError("; ".join(problems))

    @property
    def csvs(self) -> tuple[str | Path, ...]:
        """Every labeled CSV in override order (read_labeled_csv's later-wins merge)."""
        return (self.csv, *self.more_csvs)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, resolved on the driver (absolute paths, split indices)."""

    data: LabeledSet
    recipe: Recipe
    valid_idx: np.ndarray
    threads: int
    use_gpu: bool = False
    loader_workers: int | None = None
    checkpoint_every: int = 1
    optimizer_state: bool = True
    env: tuple[tuple[str, str], ...] = ()  # forwarded_env(): set in each worker before it trains
    fail_after_epoch: int = 0  # test-only fault injection (FAIL_AFTER_EPOCH_ENV); 0: off
    fail_marker: str = ""  # test-only: the file whose creation makes the injected failure happen once per run
    target: OperatingTarget | None = None  # the operating point to pick on the validation set
    data_record: dict | None = None  # model.json's `data`: every CSV's sha256, the images and the split


def forwarded_env(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The driver's NCCL settings (FORWARDED_ENV_PREFIX), for the workers: on a cluster a worker's
    environment is its node's, not that of the shell that ran `vehicle-ray train`."""
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIX)))
