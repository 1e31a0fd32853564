"""`vehicle-ray` command line: one subcommand per stage, each a thin shell over a library function.

InputError → one line on stderr and exit code 2; anything else propagates (exit 1).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from vehicle_ray.errors import (
    EXIT_DRIFT,
    EXIT_INPUT,
    EXIT_LEASE_LOST,
    EXIT_TRY_LATER,
    EXIT_UNAVAILABLE,
    DriftAlert,
    InputError,
    LeaseLost,
    ResourcesUnavailable,
    TryLater,
)
from vehicle_ray.log import use_cli_logging
from vehicle_ray.recipe import bundled_recipes
from vehicle_ray.score.options import (
    BACKENDS,
    ERROR_KIND_NAMES,
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
    code 76, ResourcesUnavailable into `Unavailable: ...` and exit code 69 (EX_UNAVAILABLE), from any subcommand,
    with no traceback."""

    OUTCOMES: tuple[tuple[type[Exception], str, int], ...] = (
        (InputError, "Error", EXIT_INPUT),
        (TryLater, "Busy", EXIT_TRY_LATER),
        (DriftAlert, "Drift", EXIT_DRIFT),
        (LeaseLost, "Lease lost", EXIT_LEASE_LOST),
        (ResourcesUnavailable, "Unavailable", EXIT_UNAVAILABLE),
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


def csv_options(f: Callable) -> Callable:
    f = click.option("--label-col", default="1", show_default=True, help="Label column: a name or a 0-based index.")(f)
    f = click.option(
        "--fn-col",
        default="0",
        show_default=True,
        help="File-name column (relative to --images): a name or a 0-based index.",
    )(f)
    f = click.option("--images", required=True, help="Image root: a directory or a URI (s3://...).")(f)
    f = click.option(
        "--csv",
        "csv_path",
        required=True,
        type=click.Path(dir_okay=False),
        help="Labeled CSV (file name + label): a path or a URI.",
    )(f)
    return f


_RECIPE_OPTIONS = [
    click.option(
        "--config",
        help=f"TOML recipe file, or a bundled name: {', '.join(bundled_recipes())}. "
        "Default: the seed recipe (emergency_vehicles).",
    ),
    click.option("--arch", help="torchvision architecture known to fastai (resnet18, resnet50, ...)."),
    click.option("--size", type=int, help="Input size in pixels (square)."),
    click.option("--bs", type=int, help="Batch size per worker."),
    click.option("--lr", help="Peak learning rate of every stage, or 'auto' (lr_find's valley)."),
    click.option("--epochs", type=int, help="One one-cycle stage of N epochs (replaces the recipe's stages)."),
    click.option("--freeze-epochs", type=int, help="Frozen epochs before --epochs (default 1 when pretrained)."),
    click.option("--pretrained/--no-pretrained", default=None, help="Start from ImageNet weights."),
    click.option(
        "--weights", type=click.Path(dir_okay=False), help="torchvision state_dict file (air-gapped clusters)."
    ),
    click.option("--valid-pct", type=float, help="Validation fraction."),
    click.option("--seed", type=int, help="Seed for the split, init and shuffles."),
    click.option("--flip/--no-flip", "do_flip", default=None, help="Horizontal flips."),
    click.option("--flip-vert/--no-flip-vert", "flip_vert", default=None, help="Vertical flips (and dihedral)."),
    click.option("--max-rotate", type=float, help="Max rotation in degrees (0 turns it off)."),
    click.option("--max-lighting", type=float, help="Max lighting change."),
    click.option("--max-warp", type=float, help="Max perspective warp."),
]


def operating_point_options(f: Callable) -> Callable:
    """--positive-class with --target-recall or --target-precision (train, evaluate)."""
    f = click.option("--target-precision", type=float, help="Pick the lowest threshold reaching this precision.")(f)
    f = click.option(
        "--target-recall", type=float, help="Pick the highest threshold reaching this recall (e.g. 0.95)."
    )(f)
    f = click.option(
        "--positive-class",
        help="The class that matters: an operating point (threshold on its probability) is picked for "
        "--target-recall or --target-precision and recorded in model.json.",
    )(f)
    return f


def tracking_options(experiment: str) -> Callable[[Callable], Callable]:
    """--mlflow and its settings (train and score); the command receives them as one `tracking` keyword."""

    def decorate(f: Callable) -> Callable:
        options = [
            click.option("--mlflow", "mlflow_on", is_flag=True, help="Log this run to MLflow (the mlflow extra)."),
            click.option("--mlflow-uri", help="MLflow tracking server [default: MLFLOW_TRACKING_URI]."),
            click.option("--mlflow-experiment", help=f"MLflow experiment [default: {experiment}]."),
            click.option("--mlflow-run-name", help="MLflow run name [default: the run's own name]."),
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


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """vehicle_ray: the fastai emergency-vehicle recipe as a Ray Train / Ray Data batch system.

    Runs in local single-node mode by default; set RAY_ADDRESS (or use `ray job submit`)
    to run on a cluster.
    """


@cli.command("sample-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--train", "n_train", default=400, show_default=True, help="Number of labeled training images.")
@click.option("--test", "n_test", default=100, show_default=True, help="Number of test images.")
@click.option("--size", default=64, show_default=True, help="Image size in pixels.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same files).")
def sample_data_cmd(out: str, n_train: int, n_test: int, size: int, seed: int) -> None:
    """Write procedural sample data in the seed's layout: OUT/train.csv, OUT/test.csv,
    OUT/test_labels.csv and OUT/images/*.jpg."""
    from vehicle_ray.sample_data import write_sample_data

    counts = write_sample_data(out, train=n_train, test=n_test, size=size, seed=seed)
    click.echo(f"wrote {counts.train} training and {counts.test} test images to {out}")


@cli.command("train")
@csv_options
@click.option(
    "--out",
    required=True,
    help="Model artifact to write: a directory or a URI (s3://bucket/models/x; model.json is written last).",
)
@recipe_options
@click.option(
    "--workers",
    default=default(TrainOptions, "workers"),
    show_default=True,
    help="Ray Train workers (data-parallel ranks).",
)
@click.option(
    "--gpu/--cpu",
    "use_gpu",
    default=default(TrainOptions, "use_gpu"),
    show_default=True,
    help="One GPU per worker (NCCL) or CPU (gloo).",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    help="CPUs per worker [default: the cluster's CPUs / workers; 1 while fewer CPUs than workers are up].",
)
@click.option(
    "--storage-path", help="Where checkpoints and run state go (a URI on multi-node clusters) [default: ~/ray_results]."
)
@click.option("--name", help="Run name; rerun with the same --storage-path and --name to resume.")
@click.option(
    "--max-failures",
    default=default(TrainOptions, "max_failures"),
    show_default=True,
    help="Worker-group restarts allowed (each resumes from the last checkpoint).",
)
@click.option(
    "--wait-for-resources",
    type=float,
    metavar="SECONDS",
    help="Give up (exit 69, try later) when the workers' CPUs/GPUs are not there within SECONDS "
    "[default: wait until the autoscaler provides them].",
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
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out (at a URI: an existing model).")
@operating_point_options
@tracking_options("vehicle-ray-train")
@click.option("--register-model", metavar="NAME", help="Register the logged model as a new version of NAME (--mlflow).")
def train_cmd(
    csv_path: str,
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    workers: int,
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
    **recipe_flags: Any,
) -> None:
    """Fine-tune the recipe on Ray Train and write a model artifact to --out."""
    from vehicle_ray.decision import target_from_flags
    from vehicle_ray.train.driver import train

    tracking = build_tracking(mlflow_on, mlflow_uri, mlflow_experiment, mlflow_run_name, register_model)

    opts = TrainOptions(
        csv=csv_path,
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
    recipe, auto = build_recipe(**recipe_flags)
    with tempfile.TemporaryDirectory(prefix="vehicle_ray_lr_find_") as lr_dir:
        lr_find_png = None
        if auto:
            from vehicle_ray.train.lr_find import find_lr

            plot_dir = lr_dir if tracking.enabled else None  # the plot is kept only for the MLflow run
            suggestion = find_lr(csv_path, images, plot_dir, recipe, column(fn_col), column(label_col), use_gpu=use_gpu)
            recipe = recipe.with_overrides(lr=suggestion.valley)
            lr_find_png = Path(lr_dir) / "lr_find.png" if plot_dir else None
            click.echo(f"lr auto: using lr_find's valley {suggestion.valley:.2e}")
        result = train(opts, recipe, tracking, lr_find_png)
    shown = " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    click.echo(f"model written to {result.out} ({shown}) in {result.seconds:.1f}s")
    if result.mlflow_run_id:
        registered = f"; registered {register_model} version {result.model_version}" if result.model_version else ""
        click.echo(f"MLflow run {result.mlflow_run_id}{registered}")


@cli.command("lr-find")
@csv_options
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory for lr_find.png and lr_find.json."
)
@recipe_options
@click.option("--unfrozen", is_flag=True, help="Run on the unfrozen model (as the seed does after its first stage).")
@click.option("--gpu/--cpu", "use_gpu", default=False, show_default=True, help="On one GPU or one node's CPUs.")
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


@cli.command("score")
@click.option(
    "--model",
    required=True,
    help="Model artifact: a directory or URI, models:/NAME/VERSION or models:/NAME@ALIAS (MLflow registry), "
    "or an export.pkl with --allow-pickle.",
)
@click.option(
    "--input",
    "source",
    required=True,
    help="Images: a directory (recursive), a URI (s3://bucket/prefix) or a CSV listing (with --images).",
)
@click.option("--images", help="Root directory the file names of a CSV --input are relative to.")
@click.option("--fn-col", default="0", show_default=True, help="File-name column of a CSV --input (name or index).")
@click.option("--output", required=True, help="Output directory or URI (predictions/, errors/, summary.json).")
@click.option("--glob", help="Pattern for the files to score, relative to --input (default: image extensions).")
@click.option("--tta-n", type=int, help="Augmented passes [default: model.json's, 4].")
@click.option("--tta-beta", type=float, help="Weight of the plain pass [default: model.json's, 0.25].")
@click.option("--tta-max", is_flag=True, help="Take the max over passes instead of the mean (fastai use_max).")
@click.option("--no-tta", is_flag=True, help="Plain pass only.")
@click.option(
    "--batch-size",
    default=default(ScoreOptions, "batch_size"),
    show_default=True,
    help="Images per model batch (and per decode batch).",
)
@click.option(
    "--actors",
    help="Model actors: N (a fixed pool) or MIN..MAX (an autoscaling pool) [default: from "
    "the cluster's CPUs/GPUs; on a cluster we joined: 1..as many as the autoscaler can place].",
)
@click.option("--cpus-per-actor", type=float, help="CPUs reserved per actor (also its thread count).")
@click.option(
    "--gpus-per-actor",
    default=default(ScoreOptions, "gpus_per_actor"),
    show_default=True,
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
    help="Larger images go to errors/ (decompression bombs).",
)
@click.option(
    "--exact-decode",
    is_flag=True,
    help="Decode every JPEG in full (default: JPEGs at least 4x the model input decode at reduced scale, "
    "keeping >= 2x, which is several times faster).",
)
@click.option("--incremental", is_flag=True, help="Skip files already in --output (predictions or errors).")
@click.option(
    "--relist",
    is_flag=True,
    help="With --incremental: list the whole input, not only names above the last run's watermark "
    "(finds files that arrived under older prefixes; each still scored once).",
)
@click.option("--overwrite", is_flag=True, help="Delete earlier runs in --output first.")
@click.option(
    "--retry-errors",
    metavar="KIND[,KIND...]",
    callback=lambda ctx, param, value: parse_error_kinds(value),
    help="With --incremental: also score the committed errors/ rows of these kinds again (their old rows are "
    f"replaced in the same commit; predictions are untouched). Kinds: {', '.join(ERROR_KIND_NAMES)}, or all.",
)
@click.option("--allow-pickle", is_flag=True, help="Allow loading a plain fastai export.pkl (runs code from the file).")
@click.option(
    "--commit-every",
    default=default(ScoreOptions, "commit_every"),
    show_default=True,
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
    help="Seconds to wait while another run holds --output, then exit 75 (try later).",
)
@click.option(
    "--no-lease",
    "lease",
    flag_value=False,
    default=True,
    help="Do not take the output's lease (only when nothing else can write to it).",
)
@click.option(
    "--lease-ttl",
    default=default(ScoreOptions, "lease_ttl"),
    show_default=True,
    help="Seconds without a heartbeat after which a holder is presumed dead.",
)
@click.option(
    "--wait-for-resources",
    type=float,
    help="Seconds for the first model actor to start before giving up (exit 69, try later) "
    "[default: 600 on a cluster].",
)
@click.option(
    "--in-process-up-to",
    default=default(ScoreOptions, "in_process_up_to"),
    show_default=True,
    help="Score at most this many files (new ones, with --incremental) in this process, without Ray, when "
    "no cluster is given (RAY_ADDRESS): Ray's start-up costs more than scoring them. 0: always Ray.",
)
@click.option(
    "--progress-interval",
    default=default(ScoreOptions, "progress_interval"),
    show_default=True,
    help="Seconds between progress lines when stdout is not a terminal.",
)
@click.option(
    "--no-calibration",
    "calibration",
    flag_value=False,
    default=True,
    help="Serve raw probabilities, not the temperature-scaled ones of model.json's calibration.",
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
    help="decision = uncertain where the chosen class's probability is below this (multi-class abstention).",
)
@click.option(
    "--fail-on-drift",
    type=float,
    metavar="PSI",
    help="After committing the run, exit 3 if its drift from the validation baseline is above PSI (e.g. 0.25).",
)
@tracking_options("vehicle-ray-score")
def score_cmd(
    model: str,
    source: str,
    images: str | None,
    fn_col: str,
    output: str,
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
        fn_col=column(fn_col), actors=low, max_actors=high, uncertain_band=parse_band(uncertain_band), **options
    )
    alert = None
    try:
        summary = score(
            model, source, output, images=images, allow_pickle=allow_pickle, opts=opts, tracking_uri=mlflow_uri
        )
    except DriftAlert as exc:  # the run is committed: report and log it like any other, then alert
        summary, alert = exc.summary, exc
    click.echo(summary.line())
    if tracking.enabled:
        from vehicle_ray.tracking import log_scoring_run

        log_scoring_run(tracking, dataclasses.asdict(summary), {"model": model, "input": source, "output": output})
    if alert is not None:
        raise alert


@cli.command("runs")
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="One JSON list of runs (for machines) instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also draw class rates, confidence and drift over runs.")
def runs_cmd(output: str, as_json: bool, plot: str | None) -> None:
    """List the committed scoring runs in OUTPUT (a directory or URI): time, files, errors, class rates,
    mean confidence, drift from the validation baseline, flags."""
    import json
    from pathlib import Path

    from vehicle_ray.monitoring import format_table, run_rows
    from vehicle_ray.score.store import OutputStore

    rows = run_rows(OutputStore.open_existing(output).run_records())
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
    if plot:
        from vehicle_ray.report.plots import runs_plot

        runs_plot(rows, Path(plot))


@cli.command("evaluate")
@click.option("--model", required=True, help="Model artifact directory (or an export.pkl with --allow-pickle).")
@csv_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--tta-n", type=int, help="Augmented passes [default: model.json's].")
@click.option("--tta-beta", type=float, help="Weight of the plain pass [default: model.json's].")
@click.option("--no-tta", is_flag=True, help="Plain pass only.")
@click.option("--batch-size", default=default(ScoreOptions, "batch_size"), show_default=True, help="Images per batch.")
@click.option("--backend", type=click.Choice(BACKENDS), default=default(ScoreOptions, "backend"), show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow loading a plain fastai export.pkl.")
@operating_point_options
@click.option(
    "--save-operating-point", is_flag=True, help="Record the operating point picked here in the model's model.json."
)
def evaluate_cmd(
    model: str,
    csv_path: str,
    images: str,
    fn_col: str,
    label_col: str,
    out: str,
    allow_pickle: bool,
    positive_class: str | None,
    target_recall: float | None,
    target_precision: float | None,
    save_operating_point: bool,
    **options: Any,
) -> None:
    """Score a labeled set through the scoring pipeline: metrics.json, confusion matrix, top losses,
    reliability diagram, PR/ROC curves and threshold table, report."""
    from vehicle_ray.decision import target_from_flags
    from vehicle_ray.report.evaluate import evaluate

    m = evaluate(
        model,
        csv_path,
        images,
        out,
        column(fn_col),
        column(label_col),
        ScoreOptions(**options),
        allow_pickle=allow_pickle,
        target=target_from_flags(positive_class, target_recall, target_precision),
        save_operating_point=save_operating_point,
    )
    click.echo(
        f"accuracy {m['accuracy']:.4f} (no TTA {m['accuracy_no_tta']:.4f}) on {m['n']} images; report: {out}/report.md"
    )


@cli.command("demo")
@click.option(
    "--out",
    default="demo_output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for the demo's data, model and scores (replaced).",
)
@click.option("--workers", default=2, show_default=True, help="Ray Train workers.")
def demo_cmd(out: str, workers: int) -> None:
    """Run the whole pipeline on generated sample data in local single-node mode."""
    from vehicle_ray.demo import run_demo

    run_demo(out, workers=workers)


def main() -> None:
    use_cli_logging()
    cli(prog_name="vehicle-ray")


def run_job(command: str) -> None:
    """Entry for jobs/*.py (`ray job submit -- python jobs/train.py ...`): one subcommand, same options."""
    use_cli_logging()
    cli([command, *sys.argv[1:]], prog_name=f"jobs/{command.replace('-', '_')}.py")


if __name__ == "__main__":
    main()
