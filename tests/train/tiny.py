"""A tiny labeled set and recipe for the training unit tests: sample images at 32 px, the tiny_cpu
recipe at 32 px, and the recipe's validation split."""

from pathlib import Path

import numpy as np

from vehicle_ray.data import LabeledSet, read_labeled_csv, split_indices
from vehicle_ray.recipe import Recipe, load_recipe
from vehicle_ray.sample_data import write_sample_data


def tiny_split(out: Path, train: int, seed: int, **overrides) -> tuple[LabeledSet, Recipe, np.ndarray]:
    write_sample_data(out, train=train, test=0, size=32, seed=seed)
    recipe = load_recipe("tiny_cpu").with_overrides(size=32, **overrides)
    data = read_labeled_csv(out / "train.csv", out / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    return data, recipe, valid_idx
