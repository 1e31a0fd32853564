"""`train --dry-run`: the checks a training runs before Ray starts, then what the run would do.

Everything here reads; nothing starts Ray, downloads weights or writes. What only a running cluster can
answer (the CPUs each worker gets by default, whether the paths are shared by its nodes) is named as
such in the plan instead of guessed.
"""

from __future__ import annotations

from typing import Any

from vehicle_ray.recipe import Recipe
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import check_input, worker_resources

FROM_CLUSTER = "from the cluster when Ray starts"


def training_plan(opts: TrainOptions, recipe: Recipe) -> dict[str, Any]:
    """The plan of `train` with these options: InputError (exit 2) for anything the real run would refuse
    before Ray."""
    checked = check_input(opts, recipe)
    stages = recipe.effective_stages()
    per_worker: dict[str, Any] = (
        worker_resources(opts, opts.cpus_per_worker)
        if opts.cpus_per_worker is not None
        else {"CPU": FROM_CLUSTER, **({"GPU": 1} if opts.use_gpu else {})}
    )
    return {
        "dry_run": True,
        "command": "train",
        "csvs": [str(c) for c in opts.csvs],
        "images": len(checked.data.items),
        "train_images": len(checked.train_idx),
        "valid_images": len(checked.valid_idx),
        "classes": list(checked.data.classes),
        "arch": recipe.arch,
        "size": recipe.size,
        "weights": recipe.weights or ("ImageNet (torchvision cache or download)" if recipe.pretrained else "none"),
        "stages": [{"epochs": s.epochs, "lr": s.lr, "lr_min": s.lr_min, "frozen": s.frozen} for s in stages],
        "batch": recipe.bs,
        "batch_per_worker": checked.worker_bs,
        "workers": opts.workers,
        "device": "GPU (NCCL)" if opts.use_gpu else "CPU (gloo)",
        "per_worker": per_worker,
        "writes": {
            "model": str(checked.out),
            "checkpoints": f"{opts.storage_path or '~/ray_results'}/{opts.name or '<timestamped run name>'}",
        },
        "checked_when_ray_starts": "cluster resources, paths shared by every node, pretrained weights",
    }
