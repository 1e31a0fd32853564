"""Baseline for bench_train.py: the same recipe with plain fastai in one process (no Ray), ending
as the seed notebook does with `learn.export()`.

    plain_fastai_train.py CSV IMAGES CONFIG EXPORT_DIR

Prints one JSON line: {"accuracy": ..., "valid_loss": ..., "epoch_seconds": [...]}; the epoch times
let bench_train.py split the wall time into epochs and the fixed part (start-up, export).
"""

import json
import sys
import time
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
import torch
from fastai.callback.core import Callback

from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.recipe import load_recipe
from vehicle_ray.train.learner import build_dataloaders, build_learner, pretrained_state_dict


class EpochTimer(Callback):
    """Wall seconds of every epoch (training and validation), as vehicle-ray's metrics.csv records them."""

    def __init__(self):
        self.seconds: list[float] = []

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def after_epoch(self) -> None:
        self.seconds.append(round(time.perf_counter() - self._t0, 3))


def main(csv: str, images: str, config: str, export_dir: str) -> None:
    recipe = load_recipe(config)
    data = read_labeled_csv(csv, images)
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    torch.manual_seed(recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe, pretrained_state_dict(recipe))
    timer = EpochTimer()
    with learn.no_bar(), learn.no_logging():
        for stage in recipe.effective_stages():
            learn.freeze() if stage.frozen else learn.unfreeze()
            learn.fit_one_cycle(stage.epochs, stage.lr_max(), cbs=[timer])
    if recipe.freeze_at_end and recipe.pretrained:
        learn.freeze()
    learn.export(Path(export_dir) / "export.pkl")
    valid_loss, *metrics = learn.recorder.final_record[1:]
    names = learn.recorder.metric_names[3:-1]
    scores = {n: float(m) for n, m in zip(names, metrics, strict=True)}
    print(json.dumps({"valid_loss": float(valid_loss), **scores, "epoch_seconds": timer.seconds}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
