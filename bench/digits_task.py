"""A small real-image task for accuracy parity across worker counts: scikit-learn's bundled handwritten
digits (1,797 8x8 scans, 10 classes, ~180 per class) upscaled to PNGs, a fixed 400-image holdout, and
resnet18 trained from scratch.

bench_parity.py and tests/train/test_parity.py both train it with plain fastai in one process and with
vehicle-ray on N Ray Train workers, and compare holdout accuracy. No flips: a mirrored 2 is no digit.
"""

from __future__ import annotations

import os
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)
import numpy as np
import pandas as pd
import torch
from fastai.learner import Learner, load_learner
from PIL import Image

from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.recipe import Recipe, Stage
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import train
from vehicle_ray.train.learner import build_dataloaders, build_learner

HOLDOUT = 400  # images never trained or validated on; the same for every seed
TRAIN_CSV, HOLDOUT_CSV = "train.csv", "holdout.csv"


def write_digits(out: Path, size: int) -> Path:
    """OUT/images/*.png (grey, upscaled to `size` px), OUT/train.csv (fn,label) and OUT/holdout.csv."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        name = f"{i:04d}.png"
        grey.resize((size, size), Image.Resampling.BILINEAR).save(out / "images" / name)
        rows.append((name, f"d{label}"))
    table = pd.DataFrame(rows, columns=["fn", "label"]).iloc[np.random.default_rng(0).permutation(len(rows))]
    table.iloc[HOLDOUT:].to_csv(out / TRAIN_CSV, index=False)
    table.iloc[:HOLDOUT].to_csv(out / HOLDOUT_CSV, index=False)
    return out


def digits_recipe(seed: int, size: int, epochs: int, lr: float = 3e-3, bs: int = 64) -> Recipe:
    """resnet18 from scratch, one one-cycle stage; `seed` sets the validation split, init and shuffles."""
    return Recipe(
        arch="resnet18",
        pretrained=False,
        size=size,
        bs=bs,
        seed=seed,
        do_flip=False,
        flip_vert=False,
        max_rotate=10.0,
        metrics=("accuracy",),
        stages=(Stage(epochs=epochs, lr=lr),),
    )


def plain_fastai(data_dir: Path, recipe: Recipe) -> Learner:
    """The recipe with plain fastai in this process (as bench/plain_fastai_train.py): the reference.
    On one torch thread, as each of vehicle-ray's workers on 2 CPUs: accuracy does not depend on it, and
    on a busy 2-core machine a second thread mostly waits at every operation's barrier."""
    torch.set_num_threads(1)
    data = read_labeled_csv(data_dir / TRAIN_CSV, data_dir / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    torch.manual_seed(recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    with learn.no_bar(), learn.no_logging():
        for stage in recipe.effective_stages():
            learn.fit_one_cycle(stage.epochs, stage.lr_max())
    return learn


def vehicle_ray(data_dir: Path, recipe: Recipe, workers: int, out: Path) -> Learner:
    """The recipe on `workers` Ray Train CPU workers (the CPUs split evenly, 4 workers fit on 2 CPUs);
    the artifact's export.pkl, loaded as a user would."""
    cpus = os.cpu_count() or 1
    train(
        TrainOptions(
            csv=data_dir / TRAIN_CSV,
            images=data_dir / "images",
            out=out / "model",
            workers=workers,
            cpus_per_worker=cpus / workers if workers > cpus else None,
            storage_path=str(out / "runs"),
        ),
        recipe,
    )
    return load_learner(out / "model" / "export.pkl", cpu=True)


def holdout_accuracy(learn: Learner, data_dir: Path) -> float:
    """Plain (no TTA) accuracy on the holdout images, the same way for either learner."""
    holdout = pd.read_csv(data_dir / HOLDOUT_CSV)
    dl = learn.dls.test_dl([str(data_dir / "images" / f) for f in holdout["fn"]], with_labels=False)
    with learn.no_bar():
        probs, _ = learn.get_preds(dl=dl)
    predicted = np.asarray(learn.dls.vocab)[probs.argmax(1).numpy()]
    return float((predicted == holdout["label"].to_numpy()).mean())
