"""Baseline for bench_train.py: the same recipe with plain fastai in one process (no Ray), ending
as the seed notebook does with `learn.export()`.

    plain_fastai_train.py CSV IMAGES CONFIG EXPORT_DIR

Prints one JSON line: {"accuracy": ..., "valid_loss": ...}.
"""

import json
import sys
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
import torch

from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.recipe import load_recipe
from vehicle_ray.train.learner import build_dataloaders, build_learner, pretrained_state_dict


def main(csv: str, images: str, config: str, export_dir: str) -> None:
    recipe = load_recipe(config)
    data = read_labeled_csv(csv, images)
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    torch.manual_seed(recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe, pretrained_state_dict(recipe))
    with learn.no_bar(), learn.no_logging():
        for stage in recipe.effective_stages():
            learn.freeze() if stage.frozen else learn.unfreeze()
            learn.fit_one_cycle(stage.epochs, stage.lr_max())
    if recipe.freeze_at_end and recipe.pretrained:
        learn.freeze()
    learn.export(Path(export_dir) / "export.pkl")
    valid_loss, *metrics = learn.recorder.final_record[1:]
    names = learn.recorder.metric_names[3:-1]
    print(json.dumps({"valid_loss": float(valid_loss), **{n: float(m) for n, m in zip(names, metrics, strict=True)}}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
