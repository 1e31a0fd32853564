"""Recipe + LabeledSet → fastai DataLoaders and a vision_learner, the same way on every path.

Training workers, lr-find and the plain-fastai benchmark all build their learner here, so "the fastai
recipe" means one thing. Pretrained weights are always loaded explicitly into the body (from
torchvision's download/cache, or from --weights), so an offline cluster gets one clear error.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import fastai.metrics
import numpy as np
import torch
import torchvision
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.vision.augment import Resize, ResizeMethod
from fastai.vision.data import ImageBlock
from fastai.vision.learner import create_body, model_meta, vision_learner

from vehicle_ray.data import FN, LABEL, LabeledSet, require_local_root
from vehicle_ray.errors import InputError
from vehicle_ray.network import arch_fn, augment_transforms
from vehicle_ray.recipe import METRICS, Recipe
from vehicle_ray.train.hardware import WorkerHardware, use_hardware

_RESIZE = {"squish": ResizeMethod.Squish, "crop": ResizeMethod.Crop}


def recipe_metrics(recipe: Recipe) -> list:
    """fastai metric objects for the recipe's metric names (the table is recipe.METRICS)."""
    built = []
    for name in recipe.metrics:
        attr, kwargs = METRICS[name]
        metric = getattr(fastai.metrics, attr)
        if kwargs:  # a configured metric object: give it the recipe's name (metrics.csv, model.json)
            metric = metric(**kwargs)
            metric.name = name
        built.append(metric)
    return built


def build_dataloaders(
    data: LabeledSet,
    recipe: Recipe,
    valid_idx: np.ndarray,
    device: torch.device | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    bs: int | None = None,
) -> DataLoaders:
    """fastai DataLoaders for a local image root (fastai reads files by path: pure-fastai export.pkl).
    `num_workers`/`pin_memory`: see train.hardware (worker processes decode and resize; the batch
    transforms run in the training process, on `device`). `bs`: a training worker's share of the
    recipe's global batch (default: the whole of it, one process)."""
    require_local_root(data.root)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=data.classes)),
        get_x=ColReader(FN, pref=data.root.base + "/"),
        get_y=ColReader(LABEL),
        splitter=IndexSplitter(valid_idx.tolist()),
        item_tfms=Resize(recipe.size, method=_RESIZE[recipe.resize_method]),
        batch_tfms=augment_transforms(recipe),
    )
    # No persistent_workers: fastai's DataLoader.__iter__ builds a new torch worker iterator on every pass,
    # so that flag never kept a worker alive; and keeping them would be wrong, as a rank's epoch shard
    # reaches the workers through the fork. The fresh fork costs ~0.5 s per pass at 299 px (first batch
    # 2.16 s with 2 workers vs 1.70 s in-process, medians of 5, bs 64, 2 CPUs: bench/loader_refork.py).
    return block.dataloaders(
        data.items,
        bs=bs or recipe.bs,
        num_workers=num_workers,
        pin_memory=pin_memory,
        device=device or torch.device("cpu"),
    )


def pretrained_state_dict(recipe: Recipe) -> dict[str, torch.Tensor] | None:
    """The ImageNet weights for the recipe's arch: --weights PATH, else torchvision's download/cache."""
    if not recipe.pretrained:
        return None
    if recipe.weights:
        path = Path(recipe.weights)
        if not path.is_file():
            raise InputError(f"--weights file not found: {recipe.weights}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise InputError(f"--weights {recipe.weights} is not a torch state_dict: {exc}") from exc
    weights = torchvision.models.get_model_weights(recipe.arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise InputError(
            f"cannot download pretrained {recipe.arch} weights ({type(exc).__name__}: {exc}); "
            "pass --weights PATH to a torchvision state_dict, or --no-pretrained"
        ) from exc


def build_learner(dls: DataLoaders, recipe: Recipe, state_dict: dict[str, torch.Tensor] | None = None) -> Learner:
    """fastai vision_learner for the recipe, with `state_dict` (torchvision layout) loaded into its body.

    Normalisation is part of the DataBlock (augment_transforms), so vision_learner must not add its own.
    """
    arch = arch_fn(recipe.arch)
    learn = vision_learner(dls, arch, pretrained=False, normalize=False, metrics=recipe_metrics(recipe))
    if state_dict is not None:
        source = arch(weights=None)
        try:
            source.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise InputError(f"--weights do not fit {recipe.arch}: {str(exc).splitlines()[0]}") from exc
        learn.model[0].load_state_dict(create_body(source, cut=model_meta[arch]["cut"]).state_dict())
    return learn


def device_learner(
    data: LabeledSet,
    recipe: Recipe,
    valid_idx: np.ndarray,
    state_dict: dict[str, torch.Tensor] | None,
    device: torch.device,
    hardware: WorkerHardware,
    bs: int | None = None,
) -> Learner:
    """The recipe's learner on `device`, with `hardware`'s DataLoader settings and fastai callbacks
    (train.hardware.enter_device says which); `bs`: as build_dataloaders."""
    dls = build_dataloaders(data, recipe, valid_idx, device, hardware.loader_workers, hardware.pin_memory, bs)
    learn = build_learner(dls, recipe, state_dict)
    learn.model.to(device)
    use_hardware(learn, hardware)
    return learn
