"""The training recipe: a typed, TOML-backed description of the seed notebook's fastai schedule.

A recipe is everything needed to reproduce a run: architecture, input size, augmentation, the staged
one-cycle schedule (frozen stage, unfreeze, discriminative learning rates) and TTA defaults. The CLI
loads one from `--config` (or the defaults below) and applies flag overrides with `with_overrides`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from vehicle_ray.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUNDLED = resources.files("vehicle_ray") / "configs"  # package data: works from a wheel too
DEFAULT_LR = 1e-3  # fastai's defaults.lr, what the seed's bare fit_one_cycle calls used


@dataclass(frozen=True)
class Stage:
    """One `fit_one_cycle` call. `lr_min` set means discriminative rates: slice(lr_min, lr)."""

    epochs: int
    lr: float = DEFAULT_LR
    lr_min: float | None = None
    frozen: bool = False

    def lr_max(self) -> slice | float:
        """What fastai's fit_one_cycle takes as lr_max."""
        return slice(self.lr_min, self.lr) if self.lr_min is not None else self.lr

    def rates(self) -> dict[str, float]:
        """The stage's peak rates by name (lr, and lr_min when discriminative), as model.json records them."""
        return {"lr": self.lr} if self.lr_min is None else {"lr": self.lr, "lr_min": self.lr_min}


@dataclass(frozen=True)
class Recipe:
    arch: str = "resnet50"
    pretrained: bool = True
    weights: str | None = None
    size: int = 299
    resize_method: str = "squish"
    bs: int = 64  # the global batch: each of N workers takes bs/N (per_worker_batch), as one process would take bs
    sync_bn: bool = True  # BatchNorm statistics over the global batch on every worker (train/batchnorm.py)
    valid_pct: float = 0.2
    seed: int = 42
    do_flip: bool = True
    flip_vert: bool = True
    max_rotate: float = 50.0
    max_lighting: float = 0.1
    max_warp: float = 0.0
    max_zoom: float = 1.0
    normalize: str = "imagenet"
    metrics: tuple[str, ...] = ("accuracy", "error_rate")
    stages: tuple[Stage, ...] = (
        Stage(epochs=5, frozen=True),
        Stage(epochs=8),
        Stage(epochs=10, lr=1e-4, lr_min=1e-5),
    )
    freeze_at_end: bool = True
    tta_n: int = 4
    tta_beta: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if self.size < 16:
            problems.append(f"size must be >= 16 (got {self.size})")
        if self.bs < 1:
            problems.append(f"bs must be >= 1 (got {self.bs})")
        if not self.stages:
            problems.append("a recipe needs at least one stage")
        for i, s in enumerate(self.stages):
            if s.epochs < 1 or s.lr <= 0 or (s.lr_min is not None and not 0 < s.lr_min <= s.lr):
                problems.append(f"stage {i + 1} needs epochs >= 1 and 0 < lr_min <= lr (got {s})")
        if self.resize_method not in ("squish", "crop"):
            problems.append(f"resize_method must be squish or crop (got {self.resize_method!r})")
        if self.normalize not in ("imagenet", "none"):
            problems.append(f"normalize must be imagenet or none (got {self.normalize!r})")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            problems.append(f"unknown metrics {sorted(unknown)} (known: {', '.join(METRICS)})")
        if self.tta_n < 0 or not 0.0 <= self.tta_beta <= 1.0:
            problems.append("tta_n must be >= 0 and tta_beta in [0, 1]")
        if problems:
            raise InputError("invalid recipe: " + "; ".join(problems))

    def effective_stages(self) -> tuple[Stage, ...]:
        """The stages that actually run: a from-scratch model has nothing to keep frozen."""
        return self.stages if self.pretrained else tuple(s for s in self.stages if not s.frozen)

    def with_overrides(
        self,
        epochs: int | None = None,
        freeze_epochs: int | None = None,
        lr: float | None = None,
        **fields: Any,
    ) -> Recipe:
        """Apply CLI flags. `--epochs N` alone means one one-cycle stage of N epochs, after
        `--freeze-epochs` frozen epochs (default 1, as fastai's fine_tune) when pretrained.
        `--lr` sets the peak rate of every stage, keeping each stage's discriminative ratio."""
        fields = {k: v for k, v in fields.items() if v is not None}
        recipe = dataclasses.replace(self, **fields)
        stages = recipe.stages
        if epochs is not None or freeze_epochs is not None:
            unfrozen = [s for s in stages if not s.frozen]
            n = epochs if epochs is not None else sum(s.epochs for s in unfrozen)
            n_frozen = freeze_epochs if freeze_epochs is not None else 1
            stages = ((Stage(epochs=n_frozen, frozen=True),) if n_frozen else ()) + (Stage(epochs=n),)
        if lr is not None:
            stages = tuple(
                dataclasses.replace(s, lr=lr, lr_min=None if s.lr_min is None else lr * s.lr_min / s.lr) for s in stages
            )
        return dataclasses.replace(recipe, stages=tuple(stages))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        d["stages"] = [{k: v for k, v in s.items() if v is not None} for s in d["stages"]]
        return {k: v for k, v in d.items() if v is not None}

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def per_worker_batch(bs: int, workers: int) -> int:
    """Each worker's batch when the recipe's global batch `bs` is split over `workers` data-parallel ranks.

    DDP averages the ranks' gradients, so N workers at bs/N take the same optimizer steps, as many per
    epoch, as one process at bs: the recipe (and its learning rates) mean the same at any worker count.
    An uneven split would change the global batch, so it is refused, naming what would work."""
    if bs >= workers and bs % workers == 0:
        return bs // workers
    nearest = max(workers, round(bs / workers) * workers)
    raise InputError(
        f"--bs {bs} is the global batch, split evenly over --workers {workers}: pass a multiple of {workers} "
        f"(e.g. --bs {nearest}), or --bs-per-worker {max(1, bs // workers)} for that batch on each worker"
    )


def global_batch(bs: int | None, bs_per_worker: int | None, workers: int) -> int | None:
    """The global batch that `--bs` or `--bs-per-worker` (DDP's convention: the batch on each of `workers`)
    asks for; None when neither is given (the recipe's `bs` stays)."""
    if bs_per_worker is None:
        return bs
    if bs is not None:
        raise InputError("--bs (the global batch) and --bs-per-worker (each worker's) say the same thing: pass one")
    if bs_per_worker < 1:
        raise InputError(f"--bs-per-worker must be >= 1 (got {bs_per_worker})")
    return bs_per_worker * workers


def scaling_record(recipe: Recipe, workers: int) -> dict[str, Any]:
    """How a run of `recipe` on `workers` ranks batched and which peak rates its stages used (model.json's
    `training`): the learning rates are the recipe's as written at every worker count, because the
    global batch is; `batchnorm_batch`, how many images each BatchNorm statistic was taken over."""
    per_worker = per_worker_batch(recipe.bs, workers)
    return {
        "global_batch": recipe.bs,
        "per_worker_batch": per_worker,
        "batchnorm_batch": recipe.bs if recipe.sync_bn else per_worker,
        "stage_lrs": [s.rates() for s in recipe.effective_stages()],
    }


# The one table of metrics a recipe can name: name -> (fastai.metrics attribute, keyword arguments).
# Workers build them from here (learner.py); names appear as columns in metrics.csv and model.json.
METRICS: dict[str, tuple[str, dict[str, Any]]] = {
    "accuracy": ("accuracy", {}),
    "error_rate": ("error_rate", {}),
    "f1_macro": ("F1Score", {"average": "macro"}),
}
# Per-epoch history fields that are not metrics (metrics.csv columns besides the losses and metrics).
HISTORY_FIELDS = ("stage", "epoch", "n_epochs", "lr", "seconds")


def recipe_from_dict(d: dict[str, Any], source: str = "recipe") -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(d) - known
    if unknown:
        raise InputError(f"{source}: unknown recipe keys {sorted(unknown)}")
    d = dict(d)
    try:
        if "stages" in d:
            d["stages"] = tuple(Stage(**s) for s in d["stages"])
        if "metrics" in d:
            d["metrics"] = tuple(d["metrics"])
        return Recipe(**d)
    except TypeError as exc:
        raise InputError(f"{source}: {exc}") from exc


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped inside the package (vehicle_ray/configs/*.toml)."""
    return sorted(p.name.removesuffix(".toml") for p in BUNDLED.iterdir() if p.name.endswith(".toml"))


def load_recipe(path: str | Path | None) -> Recipe:
    """Load a TOML recipe file; a bare bundled name like `tiny_cpu` means the package's copy. None:
    the seed recipe."""
    if path is None:
        return Recipe()
    p = Path(path)
    if not p.exists() and str(path) in bundled_recipes():
        text, source = (BUNDLED / f"{path}.toml").read_text(), f"bundled recipe {path}"
    elif p.is_file():
        text, source = p.read_text(), str(p)
    else:
        raise InputError(f"recipe file not found: {path} (bundled: {', '.join(bundled_recipes())})")
    try:
        return recipe_from_dict(tomllib.loads(text), source)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: invalid TOML: {exc}") from exc
