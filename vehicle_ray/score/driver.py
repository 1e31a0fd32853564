"""Batch TTA scoring with Ray Data: list → decode once (CPU tasks) → model actors → Parquet, in chunks.

The steps, in the order `score` runs them: validate options and model (no Ray yet), take the output's
lease (lease.py) and recover what a crashed run left (store.py), list the input into a manifest
(listing.py), plan the actor pool (planning.py), then stream the Ray Data pipeline
read_parquet → map_batches(decode_batch) → map_batches(Predictor) into the driver, whose chunk writer
(chunk_writer.py) commits every --commit-every files or --commit-interval seconds as one chunk under
the exactly-once protocol (store.py). A small listing on
no cluster (--in-process-up-to) runs the same decode_batch and Predictor in this process instead,
into the same commits: Ray's start-up would cost more than the scoring.

Why the driver writes instead of `write_parquet`: the commit has to follow the rows, chunk by chunk,
while one pipeline (one actor pool, models loaded once) streams the whole dump; a prediction row is
~200 bytes, so the driver handles millions of them per hour without noticing. A run killed at any
moment loses at most the chunk in flight (about --commit-interval seconds of work); an --incremental
rerun continues where it stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray

from vehicle_ray import columns as col
from vehicle_ray.artifact import open_artifact
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import ImageRoot
from vehicle_ray.errors import DriftAlert, InputError, ResourcesUnavailable
from vehicle_ray.monitoring import RunMonitor, drift_of
from vehicle_ray.score.chunk_writer import ChunkWriter
from vehicle_ray.score.decode import decode_batch
from vehicle_ray.score.done_index import path_hashes
from vehicle_ray.score.lease import Lease, lease_backend
from vehicle_ray.score.listing import ListingStats, iter_listing, listing_key, write_listing
from vehicle_ray.score.model import ModelSpec, pass_files, resolve_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import (
    Plan,
    actor_device,
    describe_precisions,
    in_process_plan,
    plan_resources,
    read_ahead_bytes,
    recorded_tta,
    tta_settings,
)
from vehicle_ray.score.predictor import Predictor
from vehicle_ray.score.progress import DATA_PROGRESS_ENV, Progress, Timeline
from vehicle_ray.score.serving import ServingPolicy, monitoring_reference, serving_policy
from vehicle_ray.score.store import ChunkCommit, OutputStore
from vehicle_ray.tta import TTASettings

logger = logging.getLogger(__name__)

ACTOR_INIT_DEATHS = 3  # a node lost while an actor loads the model; Ray Data's default 0 fails the run


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
    chunks: int = 0
    commit_every: int = 0
    commit_interval: float = 0.0
    calibration: dict = field(default_factory=dict)  # applied (bool) and the temperature
    decision: dict = field(default_factory=dict)  # the decision policy (DecisionPolicy.describe)
    monitoring: dict = field(default_factory=dict)  # class rates, confidence, error rate, drift, flags
    model_registry_name: str | None = None  # a models:/ model: its registered name and version
    model_registry_version: str | None = None
    timings: dict = field(default_factory=dict)  # Timeline.as_dict(): start-up phases, steady state, commits
    exact_decode: bool = False  # --exact-decode: every JPEG decoded in full (else large ones at reduced scale)
    listing: dict = field(default_factory=dict)  # how the input was listed: mode, watermark, entries, requests
    deferred: int = 0  # transient read failures: not done, scored by the next --incremental run
    retried_errors: int = 0  # --retry-errors: committed error rows listed to be scored again

    def line(self) -> str:
        deferred = f"{self.deferred} deferred, " if self.deferred else ""
        return (
            f"scored {self.scored} of {self.files_seen} files ({self.errors} errors, {deferred}{self.skipped_done} "
            f"skipped as already done) in {self.wall_seconds:.1f}s, {self.images_per_second:.1f} images/s; "
            f"run {self.run_id} -> {self.output}"
        )


@dataclass(frozen=True)
class PreparedModel:
    """The model as this run serves it, resolved and checked before anything is listed or written (a
    run and --dry-run alike), so a bad model or flag costs no lease and no Ray."""

    spec: ModelSpec
    tta: TTASettings
    serving: ServingPolicy  # what the actors serve beyond the passes: calibration, decision, adaptive gate
    reference: dict | None  # the validation baseline drift is measured against; None without one


@dataclass(frozen=True)
class RunContext:
    """What every step after the lease shares, passed as one value instead of a dozen arguments."""

    store: OutputStore
    run_id: str
    lease: Lease | None
    root: ImageRoot
    opts: ScoreOptions
    elastic: bool  # a cluster we joined (RAY_ADDRESS) may grow; the embedded one cannot
    timeline: Timeline
    model: PreparedModel
    output: str  # --output as given: summary.json's `output` and the shared-path check
    input_flag: str  # the flag that named the images (--images or --input), for the shared-path message


@dataclass(frozen=True)
class Manifest:
    """The run's listing as written (listing.write_listing): the manifest directory, the files listed,
    the files to score, and --retry-errors' committed error rows listed again (path -> error file)."""

    path: str
    listed: int
    new: int
    retried: Mapping[str, str]


@dataclass(frozen=True)
class Committed:
    """The chunks a run committed and their row counts, checked against the files it had to score."""

    chunks: list[ChunkCommit]
    scored: int
    errors: int
    deferred: int

    @classmethod
    def check(cls, chunks: list[ChunkCommit], expected: int) -> Committed:
        """Every listed file ends up in exactly one of predictions, errors or deferred: a mismatch fails
        the run before finish_run records it."""
        scored, errors = sum(c.predictions for c in chunks), sum(c.errors for c in chunks)
        deferred = sum(c.deferred for c in chunks)
        if scored + errors + deferred != expected:
            raise RuntimeError(
                f"accounting mismatch: {expected} files to score but {scored} predictions + {errors} "
                f"errors + {deferred} deferred were committed; the next --incremental run scores the rest"
            )
        return cls(chunks, scored, errors, deferred)


class RowTally:
    """What the rows tell the driver, updated once per batch: the run monitor (labels and confidences,
    for summary.json's `monitoring` and drift), the precisions the actors recorded (a GPU's bf16 or
    fp16: each actor picks its own, so only the rows know) and the rows by the number of TTA passes
    they got (adaptive TTA: 1 or n+1)."""

    def __init__(self, classes: list[str]):
        self.monitor = RunMonitor(classes)
        self.precisions: dict[str, set[str]] = {}  # column -> precisions seen (planning.recorded_tta's `ran`)
        self.passes: dict[int, int] = {}  # passes -> rows that got them

    def update(self, batch: pa.Table, rows: pa.Table) -> None:
        """One batch as it arrived and its `rows` without those already received (_SeenPaths)."""
        self.monitor.update(rows.column(col.LABEL).to_pylist(), rows.column(col.CONFIDENCE).to_numpy())
        for column in col.TTA_PRECISIONS:  # a GPU actor: bf16 or fp16
            self.precisions.setdefault(column, set()).update(batch.column(column).unique().to_pylist())
        for count, rows_with in Counter(rows.column(col.TTA_PASSES).drop_null().to_pylist()).items():
            self.passes[count] = self.passes.get(count, 0) + rows_with

    def tta_record(self, model: PreparedModel) -> dict:
        """summary.json's `tta`: the settings as they ran, the mode, and how many rows got the plain
        pass alone and how many the augmented passes too."""
        gate, passes = model.serving.gate, self.passes
        return {
            **asdict(recorded_tta(model.tta, self.precisions)),
            "mode": "full" if gate is None else "adaptive",
            "threshold": None if gate is None else gate.threshold,
            "plain_only": passes.get(1, 0),
            "augmented": sum(k for p, k in passes.items() if p > 1),
            "passes_per_image": round(sum(p * k for p, k in passes.items()) / max(sum(passes.values()), 1), 4),
        }


def score(
    model: str | Path,
    source: str | Path,
    output: str | Path,
    images: str | Path | None = None,
    opts: ScoreOptions = ScoreOptions(),
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
) -> ScoreSummary:
    """Score every image file of `source` with TTA and commit predictions/errors Parquet to `output`.
    `tracking_uri`: the MLflow server of a models:/ model (default: MLFLOW_TRACKING_URI).
    With `opts.fail_on_drift`, a run whose drift exceeds it raises DriftAlert (carrying the summary)
    after it is committed."""
    timeline = Timeline()
    prepared = prepare_model(model, opts, allow_pickle, tracking_uri)
    timeline.mark("model_ready")
    root, chunks, listing = list_input(source, images, output, opts)
    elastic = bool(os.environ.get("RAY_ADDRESS"))  # a cluster we joined may grow; the embedded one cannot
    store = OutputStore.create(output)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    timeline.mark("output_opened")
    with _writer_lease(store, run_id, opts) as lease:  # before Ray: a run told to try later costs nothing
        timeline.mark("lease_taken")
        flag = "--images" if images is not None else "--input"
        ctx = RunContext(store, run_id, lease, root, opts, elastic, timeline, prepared, str(output), flag)
        planned = _plan_before_changes(ctx)
        _recover_output(ctx)
        ctx, manifest = _write_manifest(ctx, chunks)
        plan = _plan_for_manifest(ctx, manifest, planned)
        tally = RowTally(prepared.spec.classes)
        committed = Committed.check(_score_in_chunks(ctx, manifest, plan, tally) if manifest.new else [], manifest.new)
        timeline.mark("done")
        summary = _summary(ctx, manifest, plan, committed, tally, listing)
        ctx.store.finish_run(run_id, asdict(summary), committed.chunks, lease)
    _check_drift(summary, opts)
    return summary


def _plan_before_changes(ctx: RunContext) -> Plan | None:
    """The plan of a run that uses Ray whatever its size; None for the others (planned by
    _plan_for_manifest)."""
    # Planned before anything is changed, so bad flags never exit 2 after --overwrite deleted the
    # history: a run that uses Ray whatever its size now, the others (in-process or the embedded
    # Ray, by the number of files to score) checked against this machine's CPUs now and planned
    # once the manifest says how many files there are.
    if _needs_ray(ctx.opts, ctx.elastic):
        return _ray_plan(ctx)
    plan_resources({"CPU": float(os.cpu_count() or 1)}, ctx.opts)  # what the embedded Ray will have
    return None


def _recover_output(ctx: RunContext) -> None:
    """Put right what a crashed run left (store.recover), then delete the history (--overwrite) or
    check that this run may join it."""
    recovered = ctx.store.recover(ctx.lease)
    if any(recovered.values()):
        logger.info(
            f"recovered the output: {recovered['rolled_forward']} committed files moved into place, "
            f"{recovered['removed']} uncommitted files removed, {recovered['quarantined']} commit records "
            "quarantined (their data was gone; their files are scored again)"
        )
    if ctx.opts.overwrite:
        ctx.store.clear(ctx.lease)
    else:
        check_history(ctx.output, bool(ctx.store.committed_runs()), ctx.opts)


def _write_manifest(ctx: RunContext, chunks: Iterator[list[str]]) -> tuple[RunContext, Manifest]:
    """The manifest of the files to score (less those the done-index holds, with --incremental); the
    context comes back with a store whose commits replace the old error rows of --retry-errors."""
    with ctx.store.done_index(ctx.lease) if ctx.opts.incremental else contextlib.nullcontext() as done:
        path, listed, new, pending = write_listing(ctx.store, ctx.run_id, ctx.root, chunks, done, ctx.opts.retry_errors)
    ctx = replace(ctx, store=ctx.store.retrying(pending.retried))  # --retry-errors: commits replace the old rows
    ctx.timeline.mark("manifest_written")
    return ctx, Manifest(path, listed, new, pending.retried)


def _plan_for_manifest(ctx: RunContext, manifest: Manifest, planned: Plan | None) -> Plan:
    """The actor pool (or the in-process path) for the files to score, logged with the run's settings."""
    # In-process or Ray from the files to score, not the files listed: an --incremental night
    # that lists 20,000 names of which 500 are new is a small run.
    opts, spec, tta = ctx.opts, ctx.model.spec, ctx.model.tta
    plan = planned or in_process_plan(manifest.new, opts, os.cpu_count() or 1, on_cluster=False) or _ray_plan(ctx)
    logger.info(
        f"scoring {manifest.new} new of {manifest.listed} listed files with {spec.model_id} (TTA n={tta.n}, "
        f"beta={tta.beta}{', max' if tta.use_max else ''}, passes {describe_precisions(tta)}); {plan.describe()}; "
        f"committing every {opts.commit_every} files or {opts.commit_interval:g}s"
    )
    return plan


def _summary(
    ctx: RunContext,
    manifest: Manifest,
    plan: Plan,
    committed: Committed,
    tally: RowTally,
    listing: ListingStats | None,
) -> ScoreSummary:
    """summary.json for a run whose rows are all committed (its `done` mark set)."""
    opts, spec, serving, new = ctx.opts, ctx.model.spec, ctx.model.serving, manifest.new
    wall = ctx.timeline.marks["done"]
    return ScoreSummary(
        run_id=ctx.run_id,
        output=ctx.output,
        files_listed=manifest.listed,
        skipped_done=manifest.listed - new,
        files_seen=new,
        scored=committed.scored,
        errors=committed.errors,
        deferred=committed.deferred,
        retried_errors=len(manifest.retried),
        wall_seconds=round(wall, 3),
        images_per_second=round(new / wall, 2),
        model_id=spec.model_id,
        model_sha256=spec.model_sha256,
        tta=tally.tta_record(ctx.model),
        resources=asdict(plan),
        chunks=len(committed.chunks),
        commit_every=opts.commit_every,
        commit_interval=opts.commit_interval,
        calibration=serving.describe(ctx.model.tta),
        decision=serving.decision.describe(spec.classes),
        monitoring=tally.monitor.summary(new, committed.errors, ctx.model.reference),
        model_registry_name=spec.registry_name,
        model_registry_version=spec.registry_version,
        timings=ctx.timeline.as_dict(),
        exact_decode=opts.exact_decode,
        listing=_listing_record(ctx.root, listing, opts),
    )


def _check_drift(summary: ScoreSummary, opts: ScoreOptions) -> None:
    """--fail-on-drift: DriftAlert (exit 3) for a committed run whose drift exceeds it."""
    drift = drift_of(asdict(summary))
    if opts.fail_on_drift is not None and drift is not None and drift > opts.fail_on_drift:
        raise DriftAlert(
            f"run {summary.run_id} drifted from the validation baseline: PSI {drift:.3f} > --fail-on-drift "
            f"{opts.fail_on_drift:g} (flags: {', '.join(summary.monitoring['flags']) or 'none'}); the run is "
            f"committed ({summary.scored} scored, {summary.errors} errors)",
            summary,
        )


def prepare_model(
    model: str | Path, opts: ScoreOptions, allow_pickle: bool = False, tracking_uri: str | None = None
) -> PreparedModel:
    """The model, checked before anything is listed or written (a run and --dry-run alike): its spec,
    TTA settings, what the actors serve, and the monitoring baseline (None without one)."""
    spec = resolve_model(model, allow_pickle, tracking_uri)
    tta = tta_settings(spec, opts)
    serving = serving_policy(spec, tta, opts)
    reference = monitoring_reference(spec, tta, serving)
    if opts.fail_on_drift is not None and reference is None:
        raise InputError(
            f"--fail-on-drift: {spec.model_id} has no validation baseline (monitoring_baseline in model.json); "
            "retrain it with this version"
        )
    if not spec.allow_pickle:  # the actors verify again, but a tampered file is refused here without Ray
        use_gpu = actor_device(opts.gpus_per_actor) == "cuda"
        open_artifact(spec.directory, verify=set(pass_files(spec, tta, opts.backend, use_gpu)))
    return PreparedModel(spec, tta, serving, reference)


def list_input(
    source: str | Path, images: str | Path | None, output: str | Path, opts: ScoreOptions
) -> tuple[ImageRoot, Iterator[list[str]], ListingStats | None]:
    """The input's listing (from the output's watermarks with --incremental) as chunks of names; an
    input without any image file is InputError, while nothing above the watermark is a night with
    nothing new (deferred files may still be owed)."""
    root, chunks, listing = iter_listing(source, images, opts, watermark=_watermarks(output, opts))
    first = next(chunks, None)
    if first is None and (listing is None or listing.after is None):
        raise InputError(f"no image files found in {source}" + (f" matching --glob {opts.glob}" if opts.glob else ""))
    return root, itertools.chain([first] if first else [], chunks), listing


def check_history(output: str | Path, has_runs: bool, opts: ScoreOptions) -> None:
    """An output that holds scored runs is continued (--incremental) or deleted first
    (--delete-previous-runs), never silently mixed with a second full run."""
    if has_runs and not opts.incremental and not opts.overwrite:
        raise InputError(
            f"{output} already holds scored runs; pass --incremental to score only new files, "
            "or --delete-previous-runs to delete them and start again"
        )


def _watermarks(output: str | Path, opts: ScoreOptions) -> Callable[[str], str | None] | None:
    """Where the previous runs stopped listing (--incremental on an existing output only; read
    before the lease: a watermark any finished run wrote is safe to list from)."""
    if not opts.incremental or opts.overwrite:  # --overwrite forgets the history the watermark stands for
        return None
    try:
        return OutputStore.open(output).listing_watermark
    except InputError:
        return None


def _needs_ray(opts: ScoreOptions, elastic: bool) -> bool:
    """Ray whatever the run's size: a cluster (RAY_ADDRESS, or Ray started by the caller), GPU actors
    or --in-process-up-to 0."""
    return elastic or ray.is_initialized() or opts.gpus_per_actor > 0 or opts.in_process_up_to == 0


def _listing_record(root: ImageRoot, listing: ListingStats | None, opts: ScoreOptions) -> dict:
    """summary.json's `listing`, and what finish_run keeps as the next run's watermark."""
    if listing is None:
        return {"mode": "csv"}
    return {
        "mode": "full" if listing.after is None else "from_watermark",
        "key": listing_key(root, opts.glob),
        "root": root.uri,
        "glob": opts.glob,
        "after": listing.after,
        "watermark": max(filter(None, (listing.after, listing.last)), default=None),
        "entries": listing.entries,
        "requests": listing.requests,
    }


def _ray_plan(ctx: RunContext) -> Plan:
    """Start (or join) Ray, check that the paths are shared with its nodes and size the actor pool."""
    resources = init_ray()
    ctx.timeline.mark("ray_ready")
    require_shared_path(ctx.root.uri, ctx.input_flag)
    require_shared_path(ctx.output, "--output")
    return plan_resources(resources, ctx.opts, elastic=ctx.elastic)


def _writer_lease(store: OutputStore, run_id: str, opts: ScoreOptions) -> contextlib.AbstractContextManager:
    """The output's lease for this run (or nothing with --no-lease)."""
    if not opts.lease:
        return contextlib.nullcontext()
    lease = Lease(lease_backend(store.uri, store.base, store.is_local), run_id, ttl=opts.lease_ttl)
    lease.acquire(wait=opts.wait)
    return lease


def _dataset(
    store: OutputStore, manifest: str, plan: Plan, opts: ScoreOptions, decode: dict, predictor: dict
) -> ray.data.Dataset:
    """read_parquet(manifest) → map_batches(decode_batch) on CPU tasks → map_batches(Predictor) actors;
    `decode`/`predictor`: their keyword arguments, the same that the in-process path uses."""
    # Manifest files hold up to MANIFEST_CHUNK rows each: split them into batch-sized blocks so each
    # decode task is one batch (decoding spreads over the cluster, progress moves batch by batch).
    ds = ray.data.read_parquet(manifest, filesystem=store.fs).repartition(target_num_rows_per_block=opts.batch_size)
    # A decode request unlike the actors' keeps Ray Data from fusing decode into the actor (0.5 CPU
    # beside CPU actors; beside GPU actors 1 CPU, the GPU telling them apart: plan.decode_cpus), so
    # decoding stays in parallel CPU tasks and the actors only run the model. Ray Data's defaults are what a long run
    # on a changing cluster needs, so they are kept deliberately: a decode task lost with its node
    # is retried (tasks: max_retries=-1), a killed actor is restarted and its batch resubmitted
    # (actor pool: max_restarts=-1, max_task_retries=-1). _SeenPaths checks that no row comes twice.
    # An actor lost while it loads the model is replaced too (max_consecutive_actor_init_deaths,
    # set in _configure_data_context), a few times in a row, so a broken model still fails the run.
    ds = ds.map_batches(decode_batch, batch_size=opts.batch_size, num_cpus=plan.decode_cpus, fn_kwargs=decode)
    compute = (
        ray.data.ActorPoolStrategy(size=plan.actors)
        if plan.fixed
        else ray.data.ActorPoolStrategy(min_size=plan.actors, max_size=plan.max_actors)
    )
    return ds.map_batches(
        Predictor,
        batch_size=opts.batch_size,
        compute=compute,
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
        fn_constructor_kwargs=predictor,
    )


def _decode_kwargs(root: ImageRoot, spec: ModelSpec, opts: ScoreOptions) -> dict:
    return {
        "root": root,
        "size": spec.size,
        "resize_method": spec.resize_method,
        "max_pixels": opts.max_pixels,
        "exact": opts.exact_decode,
    }


def _predictor_kwargs(model: PreparedModel, plan: Plan, opts: ScoreOptions) -> dict:
    return {
        "spec": model.spec,
        "tta": model.tta,
        "backend": opts.backend,
        "threads": plan.threads,
        "emit_plain": opts.emit_plain,
        "device": actor_device(plan.gpus_per_actor),
        "serving": model.serving,
        "exact_decode": opts.exact_decode,
    }


def _in_process_rows(
    store: OutputStore, manifest: str, opts: ScoreOptions, decode: dict, predictor: dict
) -> Iterator[pa.Table]:
    """The pipeline's steps for a small local run, in this process: the same decode_batch and
    Predictor on the same manifest, one batch at a time (what one actor and its decode tasks do)."""
    model = Predictor(**predictor)
    for record_batch in pads.dataset(manifest, filesystem=store.fs, format="parquet").to_batches(
        batch_size=opts.batch_size
    ):
        columns = {name: record_batch.column(name).to_numpy(zero_copy_only=False) for name in (col.PATH, col.REL)}
        yield model(decode_batch(columns, **decode))


def _configure_data_context(plan: Plan, spec: ModelSpec, opts: ScoreOptions) -> float:
    """Read-ahead cap, Ray Data's progress output, and how long the first actor may take to start;
    returns that wait in seconds."""
    ctx = ray.data.DataContext.get_current()
    cap = read_ahead_bytes(plan, spec.size, opts.batch_size)
    if cap is not None:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=cap)
    ctx.enable_progress_bars = os.environ.get(DATA_PROGRESS_ENV) == "1"
    wait = opts.wait_for_resources or -1  # -1: as long as it takes (Ray Data's own convention)
    ctx.wait_for_min_actors_s = wait
    ctx.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    return wait


def _score_in_chunks(ctx: RunContext, manifest: Manifest, plan: Plan, tally: RowTally) -> list[ChunkCommit]:
    """Stream the pipeline's rows into the driver's chunk writer (commits by count and by time);
    `tally` sees every row once, and the timeline records when rows arrived and what commits cost."""
    seen = _SeenPaths()
    opts, timeline = ctx.opts, ctx.timeline
    writer = ChunkWriter(ctx.store, ctx.run_id, ctx.lease, opts.commit_every, opts.commit_interval, timeline)
    progress = Progress(manifest.new, interval=opts.progress_interval)
    batches, wait = _pipeline(ctx, manifest.path, plan)
    timeline.mark("pipeline_started")
    try:
        for batch in batches:
            rows = seen.drop_repeats(batch)
            timeline.rows(seen.count)
            tally.update(batch, rows)
            writer.add(rows)
            progress.update(seen.count, writer.errors + writer.pending_errors, len(writer.committed))
    except ray.exceptions.GetTimeoutError as exc:  # Ray Data's own wait, should the cluster shrink meanwhile
        if "starting actors" not in str(exc):
            raise
        raise ResourcesUnavailable(_no_actor_message(plan, wait)) from None
    writer.flush()
    progress.update(seen.count, writer.errors, len(writer.committed))
    progress.close()
    return writer.committed


def _pipeline(ctx: RunContext, manifest: str, plan: Plan) -> tuple[Iterator[pa.Table], float]:
    """The rows of the manifest's files, from this process (plan.in_process) or the Ray Data pipeline,
    and how long the first actor may take to start (-1: no limit; the in-process path has none)."""
    decode = _decode_kwargs(ctx.root, ctx.model.spec, ctx.opts)
    predictor = _predictor_kwargs(ctx.model, plan, ctx.opts)
    if plan.in_process:
        return _in_process_rows(ctx.store, manifest, ctx.opts, decode, predictor), -1.0
    wait = _configure_data_context(plan, ctx.model.spec, ctx.opts)
    if ctx.elastic:
        _wait_for_first_actor(plan, wait)
    ds = _dataset(ctx.store, manifest, plan, ctx.opts, decode, predictor)
    return ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1), wait


def _actor_bundle(plan: Plan) -> dict[str, float]:
    return {"CPU": plan.cpus_per_actor, **({"GPU": plan.gpus_per_actor} if plan.gpus_per_actor else {})}


def _no_actor_message(plan: Plan, wait: float) -> str:
    return (
        f"no model actor could start within {wait:g}s: no node can place {_actor_bundle(plan)} "
        f"(cluster now: {ray.available_resources()}); check the cluster's node types, or --wait-for-resources"
    )


def _wait_for_first_actor(plan: Plan, wait: float) -> None:
    """On a cluster we joined, ask for one actor's resources before starting the pipeline: a
    placement group is demand the autoscaler acts on, and one that cannot be placed within `wait`
    seconds becomes one clear line instead of Ray Data's internal-error traceback."""
    pg = ray.util.placement_group([_actor_bundle(plan)])
    try:
        if not pg.wait(timeout_seconds=0.5):
            until = f"up to {wait:g}s" if wait > 0 else "until one appears"
            logger.info(
                f"waiting {until} for a node that can run a model actor: {_actor_bundle(plan)} "
                f"(cluster now: {ray.available_resources()})"
            )
            try:
                ray.get(pg.ready(), timeout=wait if wait > 0 else None)
            except ray.exceptions.GetTimeoutError:
                raise ResourcesUnavailable(_no_actor_message(plan, wait)) from None
    finally:
        ray.util.remove_placement_group(pg)


class _SeenPaths:
    """Guards exactly-once inside a run: a batch that Ray Data re-ran after a failure cannot add a
    path twice (retries normally replace lost output, this makes that a checked property)."""

    def __init__(self):
        self.hashes: set[int] = set()  # ~70 bytes a file: 70 MB for a 1M-file night

    @property
    def count(self) -> int:
        return len(self.hashes)

    def drop_repeats(self, batch: pa.Table) -> pa.Table:
        hashes = path_hashes(batch.column(col.PATH).to_pylist()).tolist()
        repeated = np.array([h in self.hashes for h in hashes], dtype=bool)
        if repeated.any():
            logger.warning(f"dropped {int(repeated.sum())} rows already received in this run (a retried batch)")
            batch = batch.filter(pa.array(~repeated))
        self.hashes.update(hashes)
        return batch
