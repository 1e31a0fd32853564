"""fastai's learning-rate finder, run single-process in a Ray task (it deadlocks under DDP).

The task returns the plot as PNG bytes and the suggestions, so the driver writes the files wherever
it runs, whichever node did the work.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import ray

from vehicle_ray.cluster import cpus_per_gpu, init_ray, largest_node_cpus, node_resources
from vehicle_ray.data import LabeledSet, check_split, read_labeled_csv, split_indices
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe


@dataclass(frozen=True)
class LrSuggestions:
    valley: float
    slide: float
    minimum: float
    steep: float


def _run_lr_find(
    data: LabeledSet, recipe: Recipe, valid_idx, state_dict, unfrozen: bool, use_gpu: bool, threads: int
) -> tuple[dict, bytes]:
    from fastai.callback.schedule import minimum, slide, steep, valley

    from vehicle_ray.plotting import pyplot
    from vehicle_ray.train.hardware import enter_device, fit_shared_memory, loader_batch_bytes
    from vehicle_ray.train.learner import device_learner
    from vehicle_ray.train.staging import local_images

    device, hardware = enter_device(use_gpu, threads)  # first: the task may run on a GPU node it did not reserve
    hardware = fit_shared_memory(hardware, loader_batch_bytes(recipe.bs, recipe.size))
    plt = pyplot()

    learn = device_learner(local_images(data), recipe, valid_idx, state_dict, device, hardware)
    if recipe.pretrained and not unfrozen:
        learn.freeze()
    with learn.no_bar():
        found = learn.lr_find(suggest_funcs=(valley, slide, minimum, steep), show_plot=True)
    fig = plt.gcf()
    state = "unfrozen" if unfrozen or not recipe.pretrained else "frozen"
    fig.axes[0].set_title(f"lr_find: {recipe.arch} @ {recipe.size}px, {state}")
    fig.axes[0].legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return {k: float(v) for k, v in found._asdict().items()}, buf.getvalue()


def task_resources(nodes: list[dict[str, float]], use_gpu: bool) -> dict[str, float]:
    """The lr_find task's request on a cluster of `nodes` (each live node's resources): one GPU with the
    CPUs a GPU training worker gets (`cluster.cpus_per_gpu`, which leaves a GPU node a CPU for others),
    else every CPU of the largest node (a task cannot span nodes, so the whole cluster's CPUs could
    never be placed)."""
    if use_gpu:
        return {"CPU": float(cpus_per_gpu(nodes)), "GPU": 1.0}
    return {"CPU": float(max(1, largest_node_cpus(nodes)))}


def find_lr(
    csv: str | Path | Sequence[str | Path],
    images: str | Path,
    out: str | Path | None,
    recipe: Recipe,
    fn_col: str | int = 0,
    label_col: str | int = 1,
    unfrozen: bool = False,
    use_gpu: bool = False,
) -> LrSuggestions:
    """Run lr_find in one Ray task, on one GPU (`use_gpu`) or the CPUs of one node; write lr_find.png and
    lr_find.json to `out` when given."""
    from vehicle_ray.train.learner import pretrained_state_dict

    data = read_labeled_csv(csv, images, fn_col, label_col)
    train_idx, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    check_split(data, train_idx)
    state_dict = pretrained_state_dict(recipe)
    init_ray()
    resources = task_resources(node_resources(), use_gpu)
    task = ray.remote(num_cpus=resources["CPU"], num_gpus=resources.get("GPU", 0))(_run_lr_find)
    threads = int(resources["CPU"])
    values, png = ray.get(task.remote(data, recipe, valid_idx, state_dict, unfrozen, use_gpu, threads))
    if not all(math.isfinite(v) and v > 0 for v in values.values()):
        raise InputError(f"lr_find produced no usable suggestion ({values}); the loss may have diverged at once")
    suggestions = LrSuggestions(**values)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lr_find.png").write_bytes(png)
        (out / "lr_find.json").write_text(json.dumps(asdict(suggestions), indent=2) + "\n")
    return suggestions
