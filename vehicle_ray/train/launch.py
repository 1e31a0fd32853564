"""What the Ray Train controller unpickles: the worker entry point and the epoch printer.

Ray Train V2 runs a controller actor that unpickles the train function, its config and the user
callbacks. This module stays free of torch/fastai imports and the worker config travels as an opaque
pickle, so neither the driver nor the controller imports the training stack; only the workers do
(loop.py).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from ray.train import UserCallback

from vehicle_ray.log import use_cli_logging

logger = logging.getLogger(__name__)


def run_worker(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: unpack the worker config and run the fastai recipe."""
    from vehicle_ray.train.loop import train_worker

    use_cli_logging()
    train_worker(pickle.loads(config["worker_config"]), config["weights_ref"])


class EpochPrinter(UserCallback):
    """One line per epoch, logged by the Ray Train controller (not by every worker)."""

    def __init__(self, metric_names: tuple[str, ...]):
        self.metric_names = metric_names

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        m = metrics[0]
        if m.get("done"):
            return
        use_cli_logging()
        shown = " ".join(f"{k}={m[k]:.4f}" for k in ("train_loss", "valid_loss", *self.metric_names) if k in m)
        logger.info(
            f"stage {m['stage']} epoch {m['epoch']}/{m['n_epochs']} {shown} lr={m['lr']:.2e} time={m['seconds']:.1f}s"
        )
