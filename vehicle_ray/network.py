"""The network and the batch transforms a recipe defines: training builds them from the recipe, scoring
rebuilds them from model.json, so both pipelines take them from here.

fastai, torchvision and safetensors are imported inside the functions: the scoring driver reads
artifacts without paying for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from vehicle_ray.artifact import WEIGHTS, Artifact
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe, recipe_from_dict

if TYPE_CHECKING:
    import torch
    from fasttransform import Transform


def arch_fn(name: str) -> Callable[..., Any]:
    """The torchvision constructor for an architecture name, with fastai's metadata (cut, splitter)."""
    import torchvision
    from fastai.vision.learner import model_meta

    fn = getattr(torchvision.models, name, None)
    if fn is None or fn not in model_meta:
        known = sorted(f.__name__ for f in model_meta if getattr(torchvision.models, f.__name__, None) is f)
        raise InputError(f"unknown --arch {name!r}; fastai knows: {', '.join(known)}")
    return fn


def augment_transforms(recipe: Recipe) -> list[Transform]:
    """The batch transforms of training: fastai's aug_transforms from the recipe's knobs, then Normalize."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import aug_transforms
    from fastai.vision.core import imagenet_stats

    tfms = aug_transforms(
        do_flip=recipe.do_flip,
        flip_vert=recipe.flip_vert,
        max_rotate=recipe.max_rotate,
        max_lighting=recipe.max_lighting,
        max_warp=recipe.max_warp,
        max_zoom=recipe.max_zoom,
    )
    if recipe.normalize == "imagenet":
        # cuda=False: fastai's default would create the stats on a visible GPU (and a CUDA context with
        # them) even in CPU work; the DataLoaders move them to their device.
        tfms.append(Normalize.from_stats(*imagenet_stats, cuda=False))
    return tfms


def artifact_batch_transforms(meta: dict[str, Any]) -> list:
    """The training batch transforms recorded in model.json: IntToFloatTensor, fastai augs, Normalize,
    every tensor on the CPU (Normalize's stats are built there): a GPU actor moves them to its device."""
    from fastai.data.transforms import IntToFloatTensor

    return [IntToFloatTensor(), *augment_transforms(recipe_from_dict(meta["recipe"], "model.json"))]


def load_torch_model(artifact: Artifact) -> torch.nn.Module:
    """Rebuild the fastai vision model from model.json and load the safetensors weights (no pickle)."""
    from fastai.vision.learner import create_vision_model
    from safetensors.torch import load_file

    model = create_vision_model(arch_fn(artifact.meta["arch"]), len(artifact.classes), pretrained=False)
    model.load_state_dict(load_file(str(artifact.path(WEIGHTS))))
    return model.eval()
