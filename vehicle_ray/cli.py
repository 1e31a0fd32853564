"""`vehicle-ray` command line: one subcommand per stage, each a thin shell over a library function.

InputError → one line on stderr and exit code 2; anything else propagates (exit 1). The other documented
outcomes (Group.OUTCOMES): 75 try later, 3 drift, 76 lease lost, 69 resources unavailable, 77 promotion
refused (`promote`: the candidate is worse than the champion; one line prefixed `Refused:`).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from vehicle_ray import __version__
from vehicle_ray.cli_support import (
    ENVVAR_PREFIX,
    HiddenArgument,
    Option,
    TopicCommand,
    echo_json,
    human_output_to_stderr,
    report_plan,
)
from vehicle_ray.errors import (
    EXIT_DRIFT,
    EXIT_INPUT,
    EXIT_LEASE_LOST,
    EXIT_PROMOTION_REFUSED,
    EXIT_TRY_LATER,
    EXIT_UNAVAILABLE,
    DriftAlert,
    InputError,
    LeaseLost,
    PromotionRefused,
    ResourcesUnavailable,
    TryLater,
)
from vehicle_ray.log import use_cli_logging
from vehicle_ray.recipe import bundled_recipes, global_batch
from vehicle_ray.score.options import (
    BACKENDS,
    ERROR_KIND_NAMES,
    TTA_MODES,
    TTA_PRECISIONS,
    ScoreOptions,
    parse_actors,
    parse_band,
    parse_error_kinds,
)
from vehicle_ray.tracking import TrackingOptions
from vehicle_ray.train.config import TrainOptions


class Group(click.Group):
    """Turns InputError into `Error: ...` and exit code 2, TryLater into `Busy: ...` and exit code 75
    (EX_TEMPFAIL), DriftAlert into `Drift: ...` and exit code 3, LeaseLost into `Lease lost: ...` and exit
    code 76, ResourcesUnavailable into `Unavailable: ...` and exit code 69 (EX_UNAVAILABLE), PromotionRefused into
    `Refused: ...` and exit code 77, from any subcommand, with no traceback."""

    OUTCOMES: tuple[tuple[type[Exception], str, int], ...] = (
        (InputError, "Error", EXIT_INPUT),
        (TryLater, "Busy", EXIT_TRY_LATER),
        (DriftAlert, "Drift", EXIT_DRIFT),
        (LeaseLost, "Lease lost", EXIT_LEASE_LOST),
        (ResourcesUnavailable, "Unavailable", EXIT_UNAVAILABLE),
        (PromotionRefused, "Refused", EXIT_PROMOTION_REFUSED),
    )  # deploy/score-nightly.sh maps the same prefixes back to these codes

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except tuple(kind for kind, _, _ in self.OUTCOMES) as exc:
            prefix, code = next((p, c) for kind, p, c in self.OUTCOMES if isinstance(exc, kind))
            click.echo(f"{prefix}: {exc}", err=True)
            ctx.exit(code)


def default(options_class: type, name: str) -> Any:
    """The library's default for one field of an options dataclass: the CLI shows and uses it."""
    return {f.name: f.default for f in dataclasses.fields(options_class)}[name]


def column(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def csv_options(f: Callable | None = None, *, multiple: bool = False) -> Callable:
    """--csv, --images, --fn-col, --label-col. `multiple`: --csv may repeat (a tuple; later files' labels win)."""
    if f is None:
        return lambda g: csv_options(g, multiple=multiple)
    f = click.option(
        "--label-col",
        default="1",
        show_default=True,
        metavar="NAME|INDEX",
        help="Label column: a name or a 0-based index.",
    )(f)
    f = click.option(
        "--fn-col",
        default="0",
        show_default=True,
        metavar="NAME|INDEX",
        help="File-name column (relative to --images): a name or a 0-based index.",
    )(f)
    f = click.option("--images", required=True, metavar="DIR|URI", help="Image root: a directory or a URI (s3://...).")(
        f
    )
    f = click.option(
        "--csv",
        "csv_path",
        cls=Option,
        metavar="PATH|URI",
        required=True,
        multiple=multiple,
        type=click.Path(dir_okay=False),
        help="Labeled CSV (file name + label): a path or a URI."
        + (" Repeat it: a later file's label for a file name overrides an earlier one's." if multiple else ""),
    )(f)
    return f


_RECIPE_OPTIONS = [
    click.option(
        "--config",
        metavar="NAME|FILE",
        help=f"TOML recipe file, or a bundled name: {', '.join(bundled_recipes())}. "
        "Default: the seed recipe (emergency_vehicles).",
    ),
    click.option("--arch", help="torchvision architecture known to fastai (resnet18, resnet50, ...)."),
    click.option("--size", type=int, metavar="PIXELS", help="Input size in pixels (square)."),
    click.option(
        "--bs",
        type=int,
        help="Global batch size: N workers take bs/N each, so any worker count trains as one process "
        "(docs/scaling.md).",
    ),
    click.option(
        "--sync-bn/--no-sync-bn",
        "sync_bn",
        default=None,
        help="BatchNorm statistics over the global batch on every worker, as one process takes them "
        "[recipe default: on]; off: over each worker's bs/N images (DDP's default, no extra all-reduce).",
    ),
    click.option("--lr", metavar="LR|auto", help="Peak learning rate of every stage, or 'auto' (lr_find's valley)."),
    click.option(
        "--epochs", type=int, metavar="N", help="One one-cycle stage of N epochs (replaces the recipe's stages)."
    ),
    click.option(
        "--freeze-epochs", type=int, metavar="N", help="Frozen epochs before --epochs (default 1 when pretrained)."
    ),
    click.option("--pretrained/--no-pretrained", default=None, help="Start from ImageNet weights."),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help="torchvision state_dict file (air-gapped clusters).",
    ),
    click.option("--valid-pct", type=float, metavar="FRACTION", help="Validation fraction."),
    click.option("--seed", type=int, metavar="N", help="Seed for the split, init and shuffles."),
    click.option("--flip/--no-flip", "do_flip", cls=Option, default=None, help="Horizontal flips."),
    click.option("--flip-vert/--no-flip-vert", "flip_vert", default=None, help="Vertical flips (and dihedral)."),
    click.option("--max-rotate", type=float, metavar="DEGREES", help="Max rotation in degrees (0 turns it off)."),
    click.option("--max-lighting", type=float, help="Max lighting change."),
    click.option("--max-warp", type=float, help="Max perspective warp."),
]


def operating_point_options(f: Callable) -> Callable:
    """--positive-class with --target-recall or --target-precision (train, evaluate)."""
    f = click.option(
        "--target-precision", type=float, metavar="PRECISION", help="Pick the lowest threshold reaching this precision."
    )(f)
    f = click.option(
        "--target-recall",
        type=float,
        metavar="RECALL",
        help="Pick the highest threshold reaching this recall (e.g. 0.95).",
    )(f)
    f = click.option(
        "--positive-class",
        metavar="CLASS",
        help="The class that matters: an operating point (threshold on its probability) is picked for "
        "--target-recall or --target-precision and recorded in model.json.",
    )(f)
    return f


def tracking_options(experiment: str) -> Callable[[Callable], Callable]:
    """--mlflow and its settings (train and score); the command receives them as one `tracking` keyword."""

    def decorate(f: Callable) -> Callable:
        options = [
            click.option(
                "--mlflow/--no-mlflow",
                "mlflow_on",
                cls=Option,
                default=False,
                help="Log this run to MLflow (the mlflow extra).",
            ),
            click.option("--mlflow-uri", metavar="URI", help="MLflow tracking server [default: MLFLOW_TRACKING_URI]."),
            click.option("--mlflow-experiment", metavar="NAME", help=f"MLflow experiment [default: {experiment}]."),
            click.option("--mlflow-run-name", metavar="NAME", help="MLflow run name [default: the run's own name]."),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def build_tracking(
    mlflow_on: bool,
    mlflow_uri: str | None,
    mlflow_experiment: str | None,
    mlflow_run_name: str | None,
    register_model: str | None = None,
) -> TrackingOptions:
    return TrackingOptions(
        enabled=mlflow_on,
        uri=mlflow_uri,
        experiment=mlflow_experiment,
        run_name=mlflow_run_name,
        register_model=register_model,
    )


def recipe_options(f: Callable) -> Callable:
    for option in reversed(_RECIPE_OPTIONS):
        f = option(f)
    return f


def build_recipe(config: str | None, lr: str | None, epochs: int | None, freeze_epochs: int | None, **fields: Any):
    """The recipe from --config plus flag overrides; returns (recipe, lr_is_auto)."""
    from vehicle_ray.recipe import load_recipe

    auto = lr == "auto"
    lr_value = None
    if lr is not None and not auto:
        try:
            lr_value = float(lr)
        except ValueError:
            raise InputError(f"--lr must be a number or 'auto' (got {lr!r})") from None
    recipe = load_recipe(config).with_overrides(epochs=epochs, freeze_epochs=freeze_epochs, lr=lr_value, **fields)
    return recipe, auto


@click.group(
    cls=Group,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "auto_envvar_prefix": ENVVAR_PREFIX,
    },
)
@click.version_option(__version__, "--version", prog_name="vehicle-ray", message="%(prog)s %(version)s")
def cli() -> None:
    """vehicle_ray: the fastai emergency-vehicle recipe as a Ray Train / Ray Data batch system.

    Runs in local single-node mode by default; set RAY_ADDRESS (or use `ray job submit`)
    to run on a cluster. Every option can also come from an environment variable
    VEHICLE_RAY_<COMMAND>_<OPTION>, e.g. VEHICLE_RAY_SCORE_MODEL (docs/cli.md lists them).
    """


def json_option(what: str) -> Callable[[Callable], Callable]:
    """--json: `what` as one JSON object on stdout, everything else on stderr (for scripts and schedulers)."""
    return click.option(
        "--json/--no-json",
        "as_json",
        cls=Option,
        default=False,
        help=f"Print {what} as one JSON object on stdout; log lines go to stderr.",
    )


WAIT_FOR_RESOURCES_HELP = (
    "Give up (exit 69, try later) when the cluster has not placed {what} within SECONDS "
    "[default: wait as long as it takes, e.g. while an autoscaler adds nodes]."
)

# train's --help sections: parameter names by topic (the rest, --help included, under "Other options")
TRAIN_TOPICS = {
    "Data": ["csv_path", "images", "fn_col", "label_col"],
    "Output": ["out", "overwrite", "storage_path", "name"],
    "Recipe (default: the seed recipe; flags override --config)": [
        "config",
        "arch",
        "size",
        "bs",
        "bs_per_worker",
        "sync_bn",
        "lr",
        "epochs",
        "freeze_epochs",
        "pretrained",
        "weights",
        "valid_pct",
        "seed",
    ],
    "Augmentation": ["do_flip", "flip_vert", "max_rotate", "max_lighting", "max_warp"],
    "Workers and resources": [
        "workers",
        "use_gpu",
        "cpus_per_worker",
        "loader_workers",
        "wait_for_resources",
        "nccl_timeout",
    ],
    "Checkpoints and failures": ["checkpoint_every", "optimizer_state", "max_failures"],
    "Operating point": ["positive_class", "target_recall", "target_precision"],
    "Tracking (MLflow)": ["mlflow_on", "mlflow_uri", "mlflow_experiment", "mlflow_run_name", "register_model"],
    "Run": ["dry_run", "as_json"],
}

SCORE_TOPICS = {
    "Model and input": ["model", "allow_pickle", "source", "images", "fn_col", "glob"],
    "Output": ["output", "incremental", "relist", "overwrite", "retry_errors", "commit_every", "commit_interval"],
    "TTA": ["tta", "tta_n", "tta_beta", "tta_max", "tta_mode", "tta_threshold", "tta_precision"],
    "Decisions and drift": ["calibration", "uncertain_band", "min_confidence", "fail_on_drift"],
    "Resources": [
        "batch_size",
        "actors",
        "cpus_per_actor",
        "gpus_per_actor",
        "backend",
        "in_process_up_to",
        "wait_for_resources",
        "max_pixels",
        "exact_decode",
    ],
    "One writer per --out (lease)": ["wait", "lease", "lease_ttl"],
    "Tracking (MLflow)": ["mlflow_on", "mlflow_uri", "mlflow_experiment", "mlflow_run_name"],
    "Run": ["dry_run", "as_json", "progress_interval"],
}

dry_run_option = click.option(
    "--dry-run/--no-dry-run",
    default=False,
    help="Check the options and input as the run would, print the plan (resources, counts, what would be "
    "written) and exit 0 without starting Ray or writing anything.",
)


@cli.command("sample-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--train",
    "n_train",
    cls=Option,
    default=400,
    show_default=True,
    metavar="N",
    help="Number of labeled training images.",
)
@click.option(
    "--test", "n_test", cls=Option, default=100, show_default=True, metavar="N", help="Number of test images."
)
@click.option("--size", default=64, show_default=True, metavar="PIXELS", help="Image size in pixels.")
@click.option("--seed", default=0, show_default=True, metavar="N", help="Random seed (same seed, same files).")
def sample_data_cmd(out: str, n_train: int, n_test: int, size: int, seed: int) -> None:
    """Write procedural sample data in the seed's layout: OUT/train.csv, OUT/test.csv,
    OUT/test_labels.csv and OUT/images/*.jpg."""
    from vehicle_ray.sample_data import write_sample_data

    counts = write_sample_data(out, train=n_train, test=n_test, size=size, seed=seed)
    click.echo(f"wrote {counts.train} training and {counts.test} test images to {out}")


@cli.command("train", cls=TopicCommand, topics=TRAIN_TOPICS)
@csv_options(multiple=True)
@click.option(
    "--out",
    required=True,
    metavar="DIR|URI",
    help="Model artifact to write: a directory or a URI (s3://bucket/models/x; model.json is written last).",
)
@recipe_options
@click.option(
    "--workers",
    default=default(TrainOptions, "workers"),
    show_default=True,
    metavar="N",
    help="Ray Train workers (data-parallel ranks).",
)
@click.option(
    "--bs-per-worker",
    type=int,
    help="DDP's convention instead of --bs: this batch on each worker, a global batch of it x --workers "
    "(the learning rates are not scaled: docs/scaling.md).",
)
@click.option(
    "--gpu/--cpu",
    "use_gpu",
    cls=Option,
    default=default(TrainOptions, "use_gpu"),
    show_default=True,
    help="One GPU per worker (NCCL) or CPU (gloo).",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    metavar="CPUS",
    help="CPUs per worker [default: the cluster's CPUs / workers; 1 while fewer CPUs than workers are up].",
)
@click.option(
    "--storage-path",
    metavar="DIR|URI",
    help="Where checkpoints and run state go (a URI on multi-node clusters) [default: ~/ray_results].",
)
@click.option("--name", metavar="NAME", help="Run name; rerun with the same --storage-path and --name to resume.")
@click.option(
    "--max-failures",
    default=default(TrainOptions, "max_failures"),
    show_default=True,
    metavar="N",
    help="Worker-group restarts allowed (each resumes from the last checkpoint).",
)
@click.option(
    "--wait-for-resources",
    type=float,
    metavar="SECONDS",
    help=WAIT_FOR_RESOURCES_HELP.format(what="the training workers"),
)
@click.option(
    "--checkpoint-every",
    default=default(TrainOptions, "checkpoint_every"),
    show_default=True,
    metavar="EPOCHS",
    help="Checkpoint every EPOCHS epochs (stage ends and the last epoch always); a resume repeats the epochs since.",
)
@click.option(
    "--optimizer-state/--no-optimizer-state",
    default=default(TrainOptions, "optimizer_state"),
    show_default=True,
    help="Keep the optimizer state in checkpoints (about 2x the weights for Adam); without it a resume "
    "restarts the optimizer's moments.",
)
@click.option(
    "--loader-workers",
    type=int,
    metavar="N",
    help="DataLoader worker processes per training worker [default: 0 on CPU; on GPU its CPUs - 1].",
)
@click.option(
    "--nccl-timeout",
    default=default(TrainOptions, "nccl_timeout"),
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="Process-group timeout (NCCL; gloo on CPU): how long a hung collective waits before failing.",
)
@click.option(
    "--overwrite/--no-overwrite", default=False, help="Replace a non-empty --out (at a URI: an existing model)."
)
@operating_point_options
@tracking_options("vehicle-ray-train")
@click.option("--register-model", metavar="NAME", help="Register the logged model as a new version of NAME (--mlflow).")
@dry_run_option
@json_option("the trained model's summary (or with --dry-run the plan)")
def train_cmd(
    csv_path: tuple[str, ...],
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    workers: int,
    bs_per_worker: int | None,
    use_gpu: bool,
    cpus_per_worker: float | None,
    storage_path: str | None,
    name: str | None,
    max_failures: int,
    wait_for_resources: float | None,
    checkpoint_every: int,
    optimizer_state: bool,
    loader_workers: int | None,
    nccl_timeout: float,
    overwrite: bool,
    positive_class: str | None,
    target_recall: float | None,
    target_precision: float | None,
    mlflow_on: bool,
    mlflow_uri: str | None,
    mlflow_experiment: str | None,
    mlflow_run_name: str | None,
    register_model: str | None,
    dry_run: bool,
    as_json: bool,
    **recipe_flags: Any,
) -> None:
    """Fine-tune the recipe on Ray Train and write a model artifact to --out."""
    from vehicle_ray.decision import target_from_flags
    from vehicle_ray.train.driver import train

    tracking = build_tracking(mlflow_on, mlflow_uri, mlflow_experiment, mlflow_run_name, register_model)

    opts = TrainOptions(
        csv=csv_path[0],
        more_csvs=csv_path[1:],
        images=images,
        out=out,
        fn_col=column(fn_col),
        label_col=column(label_col),
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        storage_path=storage_path,
        name=name,
        max_failures=max_failures,
        wait_for_resources=wait_for_resources,
        checkpoint_every=checkpoint_every,
        optimizer_state=optimizer_state,
        loader_workers=loader_workers,
        nccl_timeout=nccl_timeout,
        overwrite=overwrite,
        target=target_from_flags(positive_class, target_recall, target_precision),
    )
    recipe_flags["bs"] = global_batch(recipe_flags["bs"], bs_per_worker, workers)
    recipe, auto = build_recipe(**recipe_flags)  # lr-find for --lr auto runs in one process at this global batch
    if dry_run:
        from vehicle_ray.train.dry_run import training_plan

        return report_plan(training_plan(opts, recipe), as_json)
    with human_output_to_stderr(as_json), tempfile.TemporaryDirectory(prefix="vehicle_ray_lr_find_") as lr_dir:
        lr_find_png = None
        if auto:
            plot_dir = lr_dir if tracking.enabled else None  # the plot is kept only for the MLflow run
            recipe = _lr_auto(opts, recipe, plot_dir)
            lr_find_png = Path(lr_dir) / "lr_find.png" if plot_dir else None
        result = train(opts, recipe, tracking, lr_find_png)
    _echo_train_result(result, as_json, register_model)


def _lr_auto(opts: TrainOptions, recipe: Any, plot_dir: str | None) -> Any:
    """--lr auto: lr_find's valley, found in one process at the recipe's global batch."""
    from vehicle_ray.train.lr_find import find_lr

    suggestion = find_lr(opts.csvs, opts.images, plot_dir, recipe, opts.fn_col, opts.label_col, use_gpu=opts.use_gpu)
    click.echo(f"lr auto: using lr_find's valley {suggestion.valley:.2e}")
    return recipe.with_overrides(lr=suggestion.valley)


def _echo_train_result(result: Any, as_json: bool, register_model: str | None) -> None:
    if as_json:
        return echo_json(dataclasses.asdict(result))
    shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    click.echo(f"model written to {result.out} ({shown}) in {result.seconds:.1f}s")
    if result.mlflow_run_id:
        registered = f"; registered {register_model} version {result.model_version}" if result.model_version else ""
        click.echo(f"MLflow run {result.mlflow_run_id}{registered}")


@cli.command("lr-find")
@csv_options
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory for lr_find.png and lr_find.json.",
)
@recipe_options
@click.option(
    "--unfrozen/--no-unfrozen",
    default=False,
    help="Run on the unfrozen model (as the seed does after its first stage).",
)
@click.option(
    "--gpu/--cpu", "use_gpu", cls=Option, default=False, show_default=True, help="On one GPU or one node's CPUs."
)
def lr_find_cmd(
    csv_path: str,
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    unfrozen: bool,
    use_gpu: bool,
    **recipe_flags: Any,
) -> None:
    """Run fastai's lr_find (single process, in a Ray task): plot and suggestions."""
    from vehicle_ray.train.lr_find import find_lr

    recipe, _ = build_recipe(**recipe_flags)
    s = find_lr(csv_path, images, out, recipe, column(fn_col), column(label_col), unfrozen=unfrozen, use_gpu=use_gpu)
    click.echo(
        f"valley={s.valley:.2e} slide={s.slide:.2e} minimum={s.minimum:.2e} steep={s.steep:.2e}; "
        f"wrote {out}/lr_find.png and {out}/lr_find.json"
    )


@cli.command("score", cls=TopicCommand, topics=SCORE_TOPICS)
@click.option(
    "--model",
    required=True,
    metavar="DIR|URI|models:/...",
    help="Model artifact: a directory or URI, models:/NAME/VERSION or models:/NAME@ALIAS (MLflow registry), "
    "or an export.pkl with --allow-pickle.",
)
@click.option(
    "--input",
    "source",
    cls=Option,
    required=True,
    metavar="DIR|URI|CSV",
    help="Images: a directory (recursive), a URI (s3://bucket/prefix) or a CSV listing (with --images).",
)
@click.option("--images", metavar="DIR|URI", help="Root directory the file names of a CSV --input are relative to.")
@click.option(
    "--fn-col",
    default="0",
    show_default=True,
    metavar="NAME|INDEX",
    help="File-name column of a CSV --input (name or index).",
)
@click.option(
    "--out",
    "output",
    cls=Option,
    aliases=["--output"],
    required=True,
    metavar="DIR|URI",
    help="Output directory or URI (predictions/, errors/, summary.json).",
)
@click.option(
    "--glob", metavar="PATTERN", help="Pattern for the files to score, relative to --input (default: image extensions)."
)
@click.option("--tta/--no-tta", default=True, help="TTA's augmented passes; --no-tta: the plain pass only.")
@click.option("--tta-n", type=int, metavar="N", help="Augmented passes [default: model.json's, 4].")
@click.option(
    "--tta-beta", type=float, metavar="WEIGHT", help="Weight of the plain pass [default: model.json's, 0.25]."
)
@click.option(
    "--tta-max/--no-tta-max", default=False, help="Take the max over passes instead of the mean (fastai use_max)."
)
@click.option(
    "--tta-mode",
    type=click.Choice(TTA_MODES),
    default=default(ScoreOptions, "tta_mode"),
    show_default=True,
    help="adaptive: the augmented passes only for images whose plain pass is below the threshold "
    "(model.json's adaptive_tta, fitted at training); full: for every image.",
)
@click.option(
    "--tta-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    metavar="PROBABILITY",
    help="Adaptive TTA's plain-pass confidence at or above which an image skips the augmented passes "
    "[default: model.json's].",
)
@click.option(
    "--bs",
    "batch_size",
    cls=Option,
    aliases=["--batch-size"],
    default=default(ScoreOptions, "batch_size"),
    show_default=True,
    metavar="N",
    help="Images per model batch (and per decode batch).",
)
@click.option(
    "--actors",
    metavar="N|MIN..MAX",
    help="Model actors: N (a fixed pool) or MIN..MAX (an autoscaling pool) [default: from "
    "the cluster's CPUs/GPUs; on a cluster we joined: 1..as many as the autoscaler can place].",
)
@click.option("--cpus-per-actor", type=float, metavar="CPUS", help="CPUs reserved per actor (also its thread count).")
@click.option(
    "--gpus-per-actor",
    default=default(ScoreOptions, "gpus_per_actor"),
    show_default=True,
    metavar="GPUS",
    help="GPUs per actor (0: CPU actors).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=default(ScoreOptions, "backend"),
    show_default=True,
    help="auto: ONNX Runtime on CPU actors, PyTorch (bf16 or fp16 by GPU capability) on GPU actors.",
)
@click.option(
    "--tta-precision",
    type=click.Choice(TTA_PRECISIONS),
    default=default(ScoreOptions, "tta_precision"),
    show_default=True,
    help="Model for TTA's passes. auto: the artifact's int8 ONNX model on CPU actors (~2x faster), "
    "else full precision; --no-tta always runs full precision.",
)
@click.option(
    "--max-pixels",
    default=default(ScoreOptions, "max_pixels"),
    show_default=True,
    metavar="PIXELS",
    help="Larger images go to errors/ (decompression bombs).",
)
@click.option(
    "--exact-decode/--no-exact-decode",
    default=False,
    help="Decode every JPEG in full (default: JPEGs at least 4x the model input decode at reduced scale, "
    "keeping >= 2x, which is several times faster).",
)
@click.option(
    "--incremental/--no-incremental", default=False, help="Skip files already in --out (predictions or errors)."
)
@click.option(
    "--relist/--no-relist",
    default=False,
    help="With --incremental: list the whole input, not only names above the last run's watermark "
    "(finds files that arrived under older prefixes; each still scored once).",
)
@click.option(
    "--delete-previous-runs/--no-delete-previous-runs",
    "overwrite",
    cls=Option,
    aliases=["--overwrite"],
    default=False,
    help="Delete every earlier run in --out first (predictions, errors and run history), then score everything.",
)
@click.option(
    "--retry-errors",
    metavar="KIND[,KIND...]",
    callback=lambda ctx, param, value: parse_error_kinds(value),
    help="With --incremental: also score the committed errors/ rows of these kinds again (their old rows are "
    f"replaced in the same commit; predictions are untouched). Kinds: {', '.join(ERROR_KIND_NAMES)}, or all.",
)
@click.option(
    "--allow-pickle/--no-allow-pickle",
    default=False,
    help="Allow loading a plain fastai export.pkl (runs code from the file).",
)
@click.option(
    "--commit-every",
    default=default(ScoreOptions, "commit_every"),
    show_default=True,
    metavar="FILES",
    help="Files per chunk commit at most: a crash loses at most the chunk in flight.",
)
@click.option(
    "--commit-interval",
    type=float,
    metavar="SECONDS",
    default=default(ScoreOptions, "commit_interval"),
    show_default=True,
    help="Commit a chunk at the latest this long after its first row: a crash loses about this much work.",
)
@click.option(
    "--wait",
    default=default(ScoreOptions, "wait"),
    show_default=True,
    metavar="SECONDS",
    help="Seconds to wait while another run holds --out, then exit 75 (try later).",
)
@click.option(
    "--lease/--no-lease",
    default=True,
    help="Take the output's lease: one writer per --out (--no-lease only when nothing else can write to it).",
)
@click.option(
    "--lease-ttl",
    default=default(ScoreOptions, "lease_ttl"),
    show_default=True,
    metavar="SECONDS",
    help="Seconds without a heartbeat after which a holder is presumed dead.",
)
@click.option(
    "--wait-for-resources",
    type=float,
    metavar="SECONDS",
    help=WAIT_FOR_RESOURCES_HELP.format(what="the first model actor"),
)
@click.option(
    "--in-process-up-to",
    default=default(ScoreOptions, "in_process_up_to"),
    show_default=True,
    metavar="FILES",
    help="Score at most this many files (new ones, with --incremental) in this process, without Ray, when "
    "no cluster is given (RAY_ADDRESS): Ray's start-up costs more than scoring them. 0: always Ray.",
)
@click.option(
    "--progress-interval",
    default=default(ScoreOptions, "progress_interval"),
    show_default=True,
    metavar="SECONDS",
    help="Seconds between progress lines when stdout is not a terminal.",
)
@click.option(
    "--calibration/--no-calibration",
    default=True,
    help="Serve the temperature-scaled probabilities of model.json's calibration (--no-calibration: raw ones).",
)
@click.option(
    "--uncertain-band",
    metavar="LOW,HIGH",
    help="decision = uncertain where the positive class's probability is within [LOW, HIGH] "
    "(needs a model with an operating point).",
)
@click.option(
    "--min-confidence",
    type=float,
    metavar="PROBABILITY",
    help="decision = uncertain where the chosen class's probability is below this (multi-class abstention).",
)
@click.option(
    "--fail-on-drift",
    type=float,
    metavar="PSI",
    help="After committing the run, exit 3 if its drift from the validation baseline is above PSI (e.g. 0.25).",
)
@tracking_options("vehicle-ray-score")
@dry_run_option
@json_option("the run's summary (summary.json's content; or with --dry-run the plan)")
def score_cmd(
    model: str,
    source: str,
    images: str | None,
    fn_col: str,
    output: str,
    tta: bool,
    dry_run: bool,
    as_json: bool,
    allow_pickle: bool,
    actors: str | None,
    uncertain_band: str | None,
    mlflow_on: bool,
    mlflow_uri: str | None,
    mlflow_experiment: str | None,
    mlflow_run_name: str | None,
    **options: Any,
) -> None:
    """Score images with TTA on Ray Data and write Parquet predictions (exactly once per file)."""
    from vehicle_ray.score.driver import score

    tracking = build_tracking(mlflow_on, mlflow_uri, mlflow_experiment, mlflow_run_name)
    low, high = parse_actors(actors)
    opts = ScoreOptions(
        fn_col=column(fn_col),
        actors=low,
        max_actors=high,
        uncertain_band=parse_band(uncertain_band),
        no_tta=not tta,
        **options,
    )
    if dry_run:
        from vehicle_ray.score.dry_run import scoring_plan

        return report_plan(scoring_plan(model, source, output, images, opts, allow_pickle, mlflow_uri), as_json)
    alert = None
    try:
        with human_output_to_stderr(as_json):
            summary = score(
                model, source, output, images=images, allow_pickle=allow_pickle, opts=opts, tracking_uri=mlflow_uri
            )
    except DriftAlert as exc:  # the run is committed: report and log it like any other, then alert
        summary, alert = exc.summary, exc
    if as_json:
        echo_json(dataclasses.asdict(summary))
    else:
        click.echo(summary.line())
    if tracking.enabled:
        from vehicle_ray.tracking import log_scoring_run

        log_scoring_run(tracking, dataclasses.asdict(summary), {"model": model, "input": source, "output": output})
    if alert is not None:
        raise alert


@cli.command("runs")
@click.argument("positional_out", required=False, cls=HiddenArgument)
@click.option("--out", metavar="DIR|URI", help="A scoring output (score's --out): a directory or URI.")
@click.option(
    "--json/--no-json",
    "as_json",
    cls=Option,
    default=False,
    help="One JSON list of runs (for machines) instead of the table.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    metavar="FILE.png",
    help="Also draw class rates, confidence and drift over runs.",
)
def runs_cmd(positional_out: str | None, out: str | None, as_json: bool, plot: str | None) -> None:
    """List the committed scoring runs in --out: time, model and registry version, files, errors, class
    rates, mean confidence, drift from the validation baseline, flags. Reads only: a missing --out is an
    error, never created."""
    import json
    from pathlib import Path

    from vehicle_ray.monitoring import format_table, run_rows
    from vehicle_ray.score.store import OutputStore

    if positional_out and out and positional_out != out:
        raise click.UsageError("give the output once: --out OUT")
    output = out or positional_out
    if output is None:
        raise click.UsageError("Missing option '--out'.")
    rows = run_rows(OutputStore.open(output).run_records())
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
    if plot:
        from vehicle_ray.report.plots import runs_plot

        runs_plot(rows, Path(plot))


@cli.command("evaluate")
@click.option(
    "--model",
    required=True,
    metavar="DIR|URI",
    help="Model artifact directory (or an export.pkl with --allow-pickle).",
)
@csv_options
@click.option("--out", required=True, type=click.Path(file_okay=False), metavar="DIR", help="Report directory.")
@click.option("--tta/--no-tta", default=True, help="TTA's augmented passes; --no-tta: the plain pass only.")
@click.option("--tta-n", type=int, metavar="N", help="Augmented passes [default: model.json's].")
@click.option("--tta-beta", type=float, metavar="WEIGHT", help="Weight of the plain pass [default: model.json's].")
@click.option(
    "--bs",
    "batch_size",
    cls=Option,
    aliases=["--batch-size"],
    default=default(ScoreOptions, "batch_size"),
    show_default=True,
    metavar="N",
    help="Images per batch.",
)
@click.option("--backend", type=click.Choice(BACKENDS), default=default(ScoreOptions, "backend"), show_default=True)
@click.option("--allow-pickle/--no-allow-pickle", default=False, help="Allow loading a plain fastai export.pkl.")
@operating_point_options
@click.option(
    "--save-operating-point/--no-save-operating-point",
    default=False,
    help="Record the operating point picked here in the model's model.json.",
)
@json_option("metrics.json's content")
def evaluate_cmd(
    model: str,
    csv_path: str,
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    tta: bool,
    allow_pickle: bool,
    positive_class: str | None,
    target_recall: float | None,
    target_precision: float | None,
    save_operating_point: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Score a labeled set through the scoring pipeline: metrics.json, confusion matrix, top losses,
    reliability diagram, PR/ROC curves and threshold table, report."""
    from vehicle_ray.data import LabeledFiles
    from vehicle_ray.decision import target_from_flags
    from vehicle_ray.report.evaluate import evaluate

    with human_output_to_stderr(as_json):
        m = evaluate(
            model,
            LabeledFiles(csv_path, images, column(fn_col), column(label_col)),
            out,
            ScoreOptions(no_tta=not tta, **options),
            allow_pickle=allow_pickle,
            target=target_from_flags(positive_class, target_recall, target_precision),
            save_operating_point=save_operating_point,
        )
    if as_json:
        return echo_json(m)
    click.echo(
        f"accuracy {m['accuracy']:.4f} (no TTA {m['accuracy_no_tta']:.4f}) on {m['n']} images; report: {out}/report.md"
    )


@cli.command("review")
@click.argument("output", required=False)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Page directory (index.html, thumbs/).")
@click.option("--run", help="Scoring run of OUTPUT to review [default: the latest finished run].")
@click.option("--lowest", default=50, show_default=True, help="Least confident images beyond the uncertain ones.")
@click.option("--qc-per-class", default=10, show_default=True, help="Random quality-control images per class.")
@click.option("--max-uncertain", default=2000, show_default=True, help="Uncertain images at most (least confident).")
@click.option(
    "--image-root", help="Directory the exported file names are relative to [default: the images' common directory]."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the quality-control sample.")
@click.option("--training", "training_csv", help="Review a labeled CSV instead: its images the --model disagrees with.")
@click.option("--images", help="With --training: the image root its file names are relative to.")
@click.option("--model", help="With --training: the model artifact (directory, URI or models:/...).")
@click.option("--top", default=100, show_default=True, help="With --training: images shown, highest loss first.")
@click.option("--fn-col", default="0", show_default=True, help="With --training: file-name column.")
@click.option("--label-col", default="1", show_default=True, help="With --training: label column.")
@click.option("--no-tta", is_flag=True, help="With --training: plain pass only.")
def review_cmd(
    output: str | None,
    out: str,
    run: str | None,
    lowest: int,
    qc_per_class: int,
    max_uncertain: int,
    image_root: str | None,
    seed: int,
    training_csv: str | None,
    images: str | None,
    model: str | None,
    top: int,
    fn_col: str,
    label_col: str,
    no_tta: bool,
) -> None:
    """Write a static review page (OUT/index.html, works from file://) for the images of scoring run OUTPUT
    that need a person (uncertain, least confident, a QC sample per class), or with --training for the
    training images whose label the model disagrees with most. The page exports a training CSV."""
    if (output is None) == (training_csv is None):
        raise InputError("review takes a scoring OUTPUT or --training CSV (with --images and --model), not both")
    if training_csv is not None and not (images and model):
        raise InputError("review --training needs --images and --model")
    from vehicle_ray.data import LabeledFiles
    from vehicle_ray.report.review import review_run, review_training

    if training_csv is not None:
        labeled = LabeledFiles(training_csv, images, column(fn_col), column(label_col))
        page = review_training(labeled, model, out, top, ScoreOptions(no_tta=no_tta))
    else:
        page = review_run(output, out, run, lowest, qc_per_class, max_uncertain, image_root, seed)
    groups = ", ".join(f"{n} {g}" for g, n in page.groups.items())
    left_off = f"; {page.skipped} unreadable images left off" if page.skipped else ""
    click.echo(
        f"review page: {page.path} ({page.items} images: {groups}{left_off}); "
        f"exported file names are relative to {page.image_root}"
    )


@cli.command("promote")
@click.argument("candidate")
@click.option("--champion", required=True, help="The model in production: a directory, URI or models:/NAME@ALIAS.")
@click.option("--holdout", required=True, help="Labeled holdout CSV (file name + label) both models are scored on.")
@click.option("--images", required=True, help="Image root of the holdout's file names: a directory or a URI.")
@click.option("--fn-col", default="0", show_default=True, help="File-name column: a name or a 0-based index.")
@click.option("--label-col", default="1", show_default=True, help="Label column: a name or a 0-based index.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory (report.md, PNGs).")
@click.option(
    "--metric",
    default="accuracy",
    show_default=True,
    help="Gate metric: accuracy, precision or recall (the positive class at each model's operating point), ece.",
)
@click.option("--max-drop", default=0.0, show_default=True, help="How much worse than the champion may pass.")
@click.option("--alias", help="On a pass, point this MLflow alias (e.g. production) at the candidate's version.")
@click.option("--publish-to", help="On a pass, publish the candidate's artifact here (a directory or URI; replaced).")
@click.option("--no-tta", is_flag=True, help="Plain pass only.")
@tracking_options("vehicle-ray-promote")
def promote_cmd(
    candidate: str,
    champion: str,
    holdout: str,
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    metric: str,
    max_drop: float,
    alias: str | None,
    publish_to: str | None,
    no_tta: bool,
    mlflow_on: bool,
    mlflow_uri: str | None,
    mlflow_experiment: str | None,
    mlflow_run_name: str | None,
) -> None:
    """Score CANDIDATE and --champion on the same labeled holdout and promote the candidate (move --alias,
    publish to --publish-to) unless it is worse by more than --max-drop on --metric: then exit 77."""
    from vehicle_ray.data import LabeledFiles
    from vehicle_ray.report.promote import Gate, PromoteTarget, promote

    result = promote(
        candidate,
        champion,
        LabeledFiles(holdout, images, column(fn_col), column(label_col)),
        out,
        Gate(metric, max_drop),
        PromoteTarget(alias=alias, publish_to=publish_to),
        ScoreOptions(no_tta=no_tta),
        build_tracking(mlflow_on, mlflow_uri, mlflow_experiment, mlflow_run_name),
    )
    click.echo(result.line())


@cli.command("demo")
@click.option(
    "--out",
    default="demo_output",
    show_default=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Directory for the demo's data, model and scores (a directory an earlier demo made is replaced).",
)
@click.option("--workers", default=2, show_default=True, metavar="N", help="Ray Train workers.")
@click.option(
    "--force/--no-force",
    default=False,
    help="Replace --out even when it is not empty and no demo made it, or is the current or home directory.",
)
def demo_cmd(out: str, workers: int, force: bool) -> None:
    """Run the whole pipeline on generated sample data in local single-node mode."""
    from vehicle_ray.demo import run_demo

    run_demo(out, workers=workers, force=force)


@cli.group("recipe")
def recipe_group() -> None:
    """Training recipes: the staged fastai schedule `train --config` takes (bundled names or TOML files)."""


@recipe_group.command("show")
@click.argument("recipe", required=False, metavar="[NAME|FILE]")
def recipe_show_cmd(recipe: str | None) -> None:
    """Print the effective recipe as TOML, every key with its value (defaults filled in): a bundled NAME,
    a FILE, or without either the seed recipe that `train` uses by default. The output is a valid
    --config file."""
    from vehicle_ray.recipe import load_recipe

    click.echo(load_recipe(recipe).to_toml(), nl=False)


def main() -> None:
    use_cli_logging()
    cli(prog_name="vehicle-ray")


def run_job(command: str) -> None:
    """Entry for jobs/*.py (`ray job submit -- python jobs/train.py ...`): one subcommand, same options."""
    use_cli_logging()
    cli([command, *sys.argv[1:]], prog_name=f"jobs/{command.replace('-', '_')}.py")


if __name__ == "__main__":
    main()
