"""Distributed fine-tuning: the recipe's staged fastai schedule on Ray Train workers.

The steps, in the order `train` runs them: validate options and input (no Ray yet), fetch pretrained
weights once on the driver, connect to Ray, run a TorchTrainer whose workers (loop.py) each build the
same fastai learner and run `fit_one_cycle` per stage with the callbacks of callback.py attached, and
publish the artifact that the workers wrote into the final checkpoint to --out atomically. The driver only
imports the light half (config.py, launch.py), never fastai; torch only once the options and the CSV
are validated (Ray's TorchConfig needs it; on a thread while Ray starts), so those errors come back
without it.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import ray
from ray.train import CheckpointConfig, ControllerError, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

from vehicle_ray.artifact import open_artifact, sha256_file
from vehicle_ray.cluster import cpus_per_gpu, init_ray, largest_node_cpus, node_resources, require_shared_path
from vehicle_ray.data import LABEL, LabeledSet, check_split, read_labeled_csv, split_indices
from vehicle_ray.decision import OperatingTarget
from vehicle_ray.errors import InputError, ResourcesUnavailable
from vehicle_ray.location import is_uri
from vehicle_ray.recipe import Recipe, per_worker_batch
from vehicle_ray.tracking import TrackingOptions
from vehicle_ray.train.artifact_writer import publish, require_free_output
from vehicle_ray.train.config import (
    ARTIFACT_SUBDIR,
    FAIL_AFTER_EPOCH_ENV,
    TRAIN_LOG_LEVEL,
    TrainOptions,
    WorkerConfig,
    forwarded_env,
)
from vehicle_ray.train.launch import EpochPrinter, run_worker
from vehicle_ray.train.ray_private import RESOURCE_WAIT_FAILURES, WORKER_GROUP_START_TIMEOUT_ENV
from vehicle_ray.train.tracking import (
    MlflowEpochLogger,
    TrainTracking,
    fail_run,
    finish_run,
    ray_run_key,
    start_run,
    training_tags,
)

logger = logging.getLogger(__name__)
# Checkpoints kept under --storage-path: the newest is what a resume restores; one older is kept as a
# fallback should storage lose part of the newest.
CHECKPOINTS_KEPT = 2

# With --wait-for-resources the Train controller would also print a timed-out start as a full traceback
# (it logs every controller failure with logger.exception) before the driver reports it in one line;
# its full logs stay in the session's logs/train/ files. Failures of the training itself still reach the
# driver as the exception that fit() raises.
BOUNDED_WAIT_LOG_LEVEL = "CRITICAL"


@dataclass(frozen=True)
class TrainResult:
    out: str | Path  # a local path or the URI the model was published to
    metrics: dict[str, float]
    seconds: float
    mlflow_run_id: str | None = None
    model_version: str | None = None  # the registered version (--register-model)


def cpus_per_worker(opts: TrainOptions, nodes: list[dict[str, float]]) -> float:
    """--cpus-per-worker, else what fits the nodes that are up (`nodes`: each live node's resources).

    CPU workers: an equal share of the cluster's CPUs, at most one node's worth (a worker cannot span
    nodes), or 1 when fewer CPUs are up than workers: on an autoscaling cluster the nodes that will run
    the workers may not exist yet (a fresh cluster reports 0 CPUs), and a share of what happens to be
    up says nothing about them.
    GPU workers: `cluster.cpus_per_gpu`, never a share of CPU-only nodes' CPUs, which no GPU worker
    can use."""
    if opts.cpus_per_worker is not None:
        return opts.cpus_per_worker
    if opts.use_gpu:
        return cpus_per_gpu(nodes)
    total = sum(n.get("CPU", 0) for n in nodes)
    return max(1, int(min(total // opts.workers, largest_node_cpus(nodes))))


def worker_resources(opts: TrainOptions, cpus: float) -> dict[str, float]:
    """One Train worker's bundle, exactly as Ray Train places it (ScalingConfig.resources_per_worker)."""
    return {"CPU": cpus, "GPU": 1} if opts.use_gpu else {"CPU": cpus}


def missing_resources(opts: TrainOptions, per_worker: dict[str, float], cluster: dict[str, float]) -> dict[str, float]:
    """What the worker group needs beyond what the cluster has now (empty: it fits)."""
    need = {k: v * opts.workers for k, v in per_worker.items()}
    return {k: v for k, v in need.items() if cluster.get(k, 0) < v}


def _describe(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


@contextmanager
def resource_wait(
    opts: TrainOptions, per_worker: dict[str, float], cluster: dict[str, float]
) -> Iterator[FailureConfig]:
    """Ray Train's own wait for the worker group's placement group, bounded by --wait-for-resources.

    Ray Train V2 waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) per attempt and retries a timed-out
    start as a controller failure, without limit by default: on an autoscaling cluster the workers start
    when their nodes are up. With --wait-for-resources S the attempt lasts S seconds and no controller
    failure is retried (the driver propagates that variable to the Train controller), so the timeout
    comes back as one ResourcesUnavailable (exit 69, try later) naming what is missing. Yields the
    FailureConfig to train with."""
    missing = missing_resources(opts, per_worker, cluster)
    if missing:
        until = f"up to {opts.wait_for_resources:g}s" if opts.wait_for_resources else "until they appear"
        logger.info(
            f"waiting for resources: {opts.workers} workers x {_describe(per_worker)} "
            f"(cluster has {_describe({k: cluster.get(k, 0) for k in per_worker})}); {until}"
        )
    if opts.wait_for_resources is None:
        yield FailureConfig(max_failures=opts.max_failures)
        return
    saved = os.environ.get(WORKER_GROUP_START_TIMEOUT_ENV)
    os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = str(opts.wait_for_resources)
    try:
        yield FailureConfig(max_failures=opts.max_failures, controller_failure_limit=0)
    except ControllerError as exc:
        if not isinstance(exc.controller_failure, RESOURCE_WAIT_FAILURES):
            raise
        still = missing_resources(opts, per_worker, ray.cluster_resources()) or missing
        raise ResourcesUnavailable(
            f"gave up waiting for resources after {opts.wait_for_resources:g}s (--wait-for-resources): "
            f"{opts.workers} workers x {_describe(per_worker)} need "
            f"{', '.join(f'{k} {v:g}' for k, v in still.items()) or 'more than is free'}; "
            f"the cluster has {_describe(ray.cluster_resources())}"
        ) from None
    finally:
        if saved is None:
            os.environ.pop(WORKER_GROUP_START_TIMEOUT_ENV, None)
        else:
            os.environ[WORKER_GROUP_START_TIMEOUT_ENV] = saved


def require_positives(data: LabeledSet, valid_idx: np.ndarray, target: OperatingTarget) -> None:
    """The operating point is picked on the validation split after training: refuse at once a positive
    class that is unknown or that the split leaves without positive or negative examples."""
    target.check_classes(list(data.classes))
    labels = data.items[LABEL].iloc[valid_idx]
    positives = int((labels == target.positive_class).sum())
    if positives == 0 or positives == len(labels):
        raise InputError(
            f"--positive-class {target.positive_class!r}: the validation split has {positives} of {len(labels)} "
            "images in that class; the operating point needs both (change --valid-pct or --seed)"
        )


class CheckedInput(NamedTuple):
    """What `check_input` resolved: the model's location, the labeled set, the split, the per-worker batch."""

    out: str | Path
    data: LabeledSet
    train_idx: np.ndarray
    valid_idx: np.ndarray
    worker_bs: int


def check_input(opts: TrainOptions, recipe: Recipe) -> CheckedInput:
    """Every check that needs no Ray (train runs it first, --dry-run runs only it): the batch split,
    a free --out, the CSVs and their images, the split, the positive class."""
    worker_bs = per_worker_batch(recipe.bs, opts.workers)  # an uneven split is refused before any work
    out = opts.out if is_uri(opts.out) else Path(opts.out).resolve()
    require_free_output(out, opts.overwrite)
    data = read_labeled_csv(opts.csvs, opts.images, opts.fn_col, opts.label_col)
    train_idx, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    check_split(data, train_idx)
    if opts.target is not None:
        require_positives(data, valid_idx, opts.target)
    return CheckedInput(out, data, train_idx, valid_idx, worker_bs)


def train(
    opts: TrainOptions,
    recipe: Recipe,
    tracking: TrackingOptions = TrackingOptions(),
    lr_find_png: Path | None = None,
) -> TrainResult:
    """Train the recipe on Ray Train and publish the artifact to `opts.out` (a local path or a URI);
    with `tracking` enabled, log it to MLflow (`lr_find_png`: the plot that chose --lr auto)."""
    t0 = time.perf_counter()
    out, data, train_idx, valid_idx, worker_bs = check_input(opts, recipe)
    state_dict = None
    if recipe.pretrained:  # fastai/torchvision are imported only when there are weights to fetch
        from vehicle_ray.train.learner import pretrained_state_dict

        state_dict = pretrained_state_dict(recipe)
    torch_import = import_in_background("ray.train.torch")
    resources = init_ray()
    require_shared_path(str(opts.images), "--images")
    require_shared_path(opts.storage_path or "~/ray_results", "--storage-path")
    require_shared_path(str(opts.out), "--out")
    cpus = cpus_per_worker(opts, node_resources())
    cfg = _worker_config(opts, recipe, data, (train_idx, valid_idx), cpus)
    torch_import.join()
    from ray.train.torch import TorchConfig, TorchTrainer

    run_name = opts.name or f"vehicle-ray-train-{time.strftime('%Y%m%d-%H%M%S')}"
    per_worker = worker_resources(opts, cpus)
    tracker = _start_tracking(tracking, opts, recipe, data, resources, run_name)
    logger.info(
        f"training {recipe.arch} on {len(train_idx)} images ({len(valid_idx)} validation), "
        f"{opts.workers} worker(s) x {cpus:g} CPU{', GPU' if opts.use_gpu else ''}, batch {recipe.bs} "
        f"({worker_bs} per worker); run {run_name}"
    )
    with resource_wait(opts, per_worker, resources) as failure_config:
        # Ray Train integration: every worker runs run_worker (launch.py → loop.train_worker); fit()
        # returns the last reported checkpoint, which holds the artifact (loop._final_report)
        trainer = TorchTrainer(
            run_worker,
            train_loop_config={
                "worker_config": pickle.dumps(cfg),
                "weights_ref": ray.put(state_dict) if state_dict is not None else None,
            },
            torch_config=TorchConfig(timeout_s=int(opts.nccl_timeout)),
            scaling_config=ScalingConfig(
                num_workers=opts.workers, use_gpu=opts.use_gpu, resources_per_worker=per_worker
            ),
            run_config=_run_config(opts, recipe, run_name, failure_config, tracker),
        )
        try:
            result = trainer.fit()
        except BaseException:
            if tracker:
                fail_run(tracker)
            raise
    meta, version = _publish_result(result, out, opts.overwrite, tracker, lr_find_png, tracking.register_model)
    return TrainResult(
        out=out,
        metrics=meta["metrics"],
        seconds=time.perf_counter() - t0,
        mlflow_run_id=tracker.run_id if tracker else None,
        model_version=version,
    )


def _publish_result(
    result, out: str | Path, overwrite: bool, tracker, lr_find_png: Path | None, register_model: str | None
) -> tuple[dict, str | None]:
    """Publish the artifact of the run's last checkpoint to `out` and finish the MLflow run (registering
    the model when asked); model.json's content and the registered version."""
    with result.checkpoint.as_directory() as d:
        artifact = Path(d) / ARTIFACT_SUBDIR
        meta = open_artifact(artifact).meta
        publish(artifact, out, overwrite=overwrite)
        version = finish_run(tracker, artifact, meta, lr_find_png, register_model) if tracker else None
    return meta, version


def _worker_config(
    opts: TrainOptions, recipe: Recipe, data: LabeledSet, split: tuple[np.ndarray, np.ndarray], cpus: float
) -> WorkerConfig:
    """What every worker needs, pickled once: the data and split, the recipe, its device settings and
    the test-only failure injection (FAIL_AFTER_EPOCH_ENV)."""
    train_idx, valid_idx = split
    fail_after_epoch = int(os.environ.get(FAIL_AFTER_EPOCH_ENV, "0"))
    return WorkerConfig(
        data=data,
        recipe=recipe,
        valid_idx=valid_idx,
        threads=max(1, int(cpus)),
        use_gpu=opts.use_gpu,
        loader_workers=opts.loader_workers,
        checkpoint_every=opts.checkpoint_every,
        optimizer_state=opts.optimizer_state,
        env=forwarded_env(os.environ),
        fail_after_epoch=fail_after_epoch,
        fail_marker=injected_failure_marker() if fail_after_epoch else "",
        target=opts.target,
        data_record=data_record(opts.csvs, data, train_idx, valid_idx),
    )


def _run_config(opts: TrainOptions, recipe: Recipe, run_name: str, failure_config, tracker) -> RunConfig:
    """Ray Train's RunConfig: where checkpoints live (resume by --storage-path + --name), how many are
    kept, the epoch printer and MLflow logger on the controller, and Ray Train's log level."""
    return RunConfig(
        name=run_name,
        storage_path=opts.storage_path,
        failure_config=failure_config,
        checkpoint_config=CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        callbacks=[EpochPrinter(recipe.metrics), *([MlflowEpochLogger(tracker)] if tracker else [])],
        logging_config=LoggingConfig(
            log_level=TRAIN_LOG_LEVEL if opts.wait_for_resources is None else BOUNDED_WAIT_LOG_LEVEL
        ),
    )


def data_record(
    csvs: tuple[str | Path, ...], data: LabeledSet, train_idx: np.ndarray, valid_idx: np.ndarray
) -> dict[str, Any]:
    """model.json's `data`: which label files (in override order, each with its sha256) and how many
    images the training and validation splits held, so a model names the labels it learned from."""
    return {
        "csv_sha256": sha256_file(csvs[0]),
        "csvs": [{"location": str(c), "sha256": sha256_file(c)} for c in csvs],
        "images": len(data.items),
        "train_images": len(train_idx),
        "valid_images": len(valid_idx),
    }


def import_in_background(module: str) -> threading.Thread:
    """Import `module` on a thread; join it before importing the module for use (an import that failed
    there fails again, with its traceback, at that import). The driver needs ray.train.torch only for
    the TorchTrainer, and its torch import (~3 s of CPU) overlaps `ray.init`, which mostly waits for
    the raylet and GCS processes it starts (~5 s embedded): measured in bench/bench_train.py."""
    thread = threading.Thread(target=_try_import, args=(module,), name=f"import {module}", daemon=True)
    thread.start()
    return thread


def _try_import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 (re-raised by the import after join)
        pass


def injected_failure_marker() -> str:
    """Test-only: a fresh path (on this machine, where the tests run their workers) for InjectedFailure."""
    return os.path.join(tempfile.gettempdir(), f"vehicle_ray_injected_failure_{uuid.uuid4().hex}")


def _start_tracking(
    tracking: TrackingOptions, opts: TrainOptions, recipe: Recipe, data, resources: dict[str, float], run_name: str
) -> TrainTracking | None:
    if not tracking.enabled:
        return None
    tags = training_tags(opts.csv, data, resources, opts.workers)
    return start_run(tracking, ray_run_key(opts.storage_path, run_name), run_name, recipe, tags)
