"""The light half of training: the worker config, the worker entry point and the epoch printer.

Ray Train V2 runs a controller actor that unpickles the train function, its config and the user
callbacks. This module stays free of torch/fastai imports and the worker config travels as an opaque
pickle, so neither the driver nor the controller imports the training stack (about 10 s of start-up
each on a 2-CPU node); only the workers do (worker.py).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.train import UserCallback

from vehicle_ray.data import LabeledSet
from vehicle_ray.recipe import Recipe

FAIL_AFTER_EPOCH_ENV = "VEHICLE_RAY_FAIL_AFTER_EPOCH"  # test-only: kill the last rank once after N epochs
ARTIFACT_SUBDIR = "artifact"
TRAIN_LOG_LEVEL = "WARNING"  # Ray Train's own INFO lines would interleave with the epoch lines


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs, resolved on the driver (absolute paths, split indices)."""

    data: LabeledSet
    recipe: Recipe
    valid_idx: np.ndarray
    threads: int
    fail_after_epoch: int


def run_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: unpack the worker config and run the fastai recipe."""
    from vehicle_ray.worker import train_worker

    train_worker(pickle.loads(config["worker_config"]), config["weights_ref"])


class EpochPrinter(UserCallback):
    """One line per epoch, printed by the Ray Train controller (not by every worker)."""

    def __init__(self, metric_names: tuple[str, ...]):
        self.metric_names = metric_names

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]
        if m.get("done"):
            return
        shown = " ".join(f"{k}={m[k]:.4f}" for k in ("train_loss", "valid_loss", *self.metric_names) if k in m)
        print(f"stage {m['stage']} epoch {m['epoch']}/{m['n_epochs']} {shown} lr={m['lr']:.2e} "
              f"time={m['seconds']:.1f}s", flush=True)
