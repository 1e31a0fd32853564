"""Batch TTA scoring with Ray Data: list → decode once (CPU tasks) → model actors → Parquet → commit.

The steps, in the order `score` runs them: validate options and model (no Ray yet), list the input
into a manifest (listing.py), plan the actor pool (planning.py), run the Ray Data pipeline
read_parquet → map_batches(decode_batch) → map_batches(Predictor) → write_parquet into the run's
staging directory, split rows into predictions/errors and commit (store.py). A killed run never
leaves anything a later run mistakes for complete output.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray

from vehicle_ray.artifact import open_artifact
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import ImageRoot
from vehicle_ray.errors import InputError
from vehicle_ray.score.decode import decode_batch
from vehicle_ray.score.listing import iter_listing, write_manifest
from vehicle_ray.score.model import ModelSpec, pass_files, resolve_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import Plan, plan_resources, read_ahead_bytes, tta_settings
from vehicle_ray.score.predictor import Predictor
from vehicle_ray.score.store import SCORED, STAGING, OutputStore
from vehicle_ray.score.tta import TTASettings

logger = logging.getLogger(__name__)

@dataclass
class ScoreSummary:
    run_id: str
    output: str
    files_listed: int
    skipped_done: int
    files_seen: int
    scored: int
    errors: int
    wall_seconds: float
    images_per_second: float
    model_id: str
    model_sha256: str
    tta: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"scored {self.scored} of {self.files_seen} files ({self.errors} errors, {self.skipped_done} "
                f"skipped as already done) in {self.wall_seconds:.1f}s, {self.images_per_second:.1f} images/s; "
                f"run {self.run_id} -> {self.output}")


def score(model: str | Path, source: str | Path, output: str | Path, images: str | Path | None = None,
          opts: ScoreOptions = ScoreOptions(), allow_pickle: bool = False) -> ScoreSummary:
    """Score every image file of `source` with TTA and commit predictions/errors Parquet to `output`."""
    t0 = time.perf_counter()
    spec = resolve_model(model, allow_pickle)
    tta = tta_settings(spec, opts)
    if not spec.allow_pickle:  # the actors verify again, but a tampered file is refused here without Ray
        open_artifact(spec.directory, verify=set(pass_files(spec, tta, opts.backend, opts.gpus_per_actor > 0)))
    root, chunks = iter_listing(source, images, opts)
    first = next(chunks, None)
    if first is None:
        raise InputError(f"no image files found in {source}" + (f" matching --glob {opts.glob}" if opts.glob else ""))
    chunks = itertools.chain([first], chunks)
    resources = init_ray()
    require_shared_path(root.uri, "--images" if images is not None else "--input")
    require_shared_path(str(output), "--output")
    plan = plan_resources(resources, opts)
    store = OutputStore.open(output)
    store.remove_uncommitted()
    if opts.overwrite:
        store.clear()
    elif store.committed_runs() and not opts.incremental:
        raise InputError(f"{output} already holds scored runs; pass --incremental to score only new files, "
                         "or --overwrite to start again")
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    done = store.done_hashes() if opts.incremental else np.empty(0, dtype=np.uint64)
    manifest, listed, new = write_manifest(store, run_id, root, chunks, done)
    logger.info(f"scoring {new} new of {listed} listed files with {spec.model_id} (TTA n={tta.n}, beta={tta.beta}"
          f"{', max' if tta.use_max else ''}, passes {_precisions(tta)}); "
          f"{plan.actors} actor(s) x {plan.cpus_per_actor:g} CPU"
          f"{f' + {plan.gpus_per_actor:g} GPU' if plan.gpus_per_actor else ''}, {plan.threads} threads each")
    if new:
        _run_pipeline(store, run_id, manifest, root, spec, tta, plan, opts)
    scored, errors = store.split_scored(run_id)
    if scored + errors != new:
        raise RuntimeError(f"accounting mismatch: {new} files to score but {scored} predictions + {errors} errors; "
                           "nothing was committed")
    wall = time.perf_counter() - t0
    summary = ScoreSummary(
        run_id=run_id, output=str(output), files_listed=listed, skipped_done=listed - new, files_seen=new,
        scored=scored, errors=errors, wall_seconds=round(wall, 3), images_per_second=round(new / wall, 2),
        model_id=spec.model_id, model_sha256=spec.model_sha256, tta=asdict(tta), resources=asdict(plan))
    store.commit(run_id, asdict(summary))
    return summary


def _precisions(tta: TTASettings) -> str:
    if tta.aug_precision in ("none", tta.plain_precision):
        return tta.plain_precision
    return f"plain {tta.plain_precision}, augmented {tta.aug_precision}"


def _run_pipeline(store: OutputStore, run_id: str, manifest: str, root: ImageRoot, spec: ModelSpec,
                  tta: TTASettings, plan: Plan, opts: ScoreOptions) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
        object_store_memory=read_ahead_bytes(plan, spec.size, opts.batch_size))
    # Manifest files hold up to MANIFEST_CHUNK rows each: split them into batch-sized blocks so each
    # decode task is one batch (decoding spreads over the cluster, progress moves batch by batch).
    ds = ray.data.read_parquet(manifest, filesystem=store.fs).repartition(target_num_rows_per_block=opts.batch_size)
    # num_cpus below the actors' keeps Ray Data from fusing decode into the actor: decoding stays in
    # parallel CPU tasks and the actors only run the model.
    ds = ds.map_batches(decode_batch, batch_size=opts.batch_size, num_cpus=0.5,
                        fn_kwargs={"root": root, "size": spec.size, "resize_method": spec.resize_method,
                                   "max_pixels": opts.max_pixels})
    ds = ds.map_batches(Predictor, batch_size=opts.batch_size, compute=ray.data.ActorPoolStrategy(size=plan.actors),
                        num_cpus=plan.cpus_per_actor, num_gpus=plan.gpus_per_actor or None,
                        fn_constructor_kwargs={"spec": spec, "tta": tta, "backend": opts.backend,
                                               "threads": plan.threads, "emit_plain": opts.emit_plain})
    ds.write_parquet(store.path(STAGING, run_id, SCORED), filesystem=store.fs,
                     min_rows_per_file=opts.rows_per_file)
