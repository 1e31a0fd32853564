"""Batch TTA scoring with Ray Data: list → decode once (CPU tasks) → model actors → Parquet.

The listing is streamed into a Parquet manifest in chunks (never one giant Python list on the driver),
already-done files are dropped by 64-bit hash for --incremental, and the output is committed per run
(see outputs.py), so a killed run never leaves anything a later run mistakes for complete output.
"""

from __future__ import annotations

import fnmatch
import itertools
import posixpath
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from vehicle_ray.artifact import open_artifact
from vehicle_ray.cluster import init_ray, require_shared_path
from vehicle_ray.data import ImageRoot, check_file_names, open_root, read_csv, resolve_column
from vehicle_ray.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_batch
from vehicle_ray.errors import InputError
from vehicle_ray.outputs import ERRORS, PREDICTIONS, STAGING, OutputStore, path_hashes
from vehicle_ray.predictor import BACKENDS, ModelSpec, Predictor, pass_files, resolve_model
from vehicle_ray.tta import TTASettings

MANIFEST_CHUNK = 100_000
MIN_READ_AHEAD_BYTES = 256 * 2**20
READ_AHEAD_BATCHES = 8  # decoded batches per actor that may wait in the object store
ERROR_COLUMNS = ["path", "error", "model_id", "model_sha256"]


@dataclass(frozen=True)
class ScoreOptions:
    tta_n: int | None = None  # None: model.json's default
    tta_beta: float | None = None
    tta_max: bool = False
    no_tta: bool = False
    batch_size: int = 64
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    backend: str = "auto"
    tta_precision: str = "auto"  # of TTA's passes: auto (int8 where possible), int8, full
    max_pixels: int = DEFAULT_MAX_PIXELS
    incremental: bool = False
    overwrite: bool = False
    glob: str | None = None
    fn_col: str | int = 0
    rows_per_file: int = 100_000
    emit_plain: bool = False  # also write the plain pass's probabilities (evaluate's TTA-off accuracy)


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


@dataclass(frozen=True)
class Plan:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int


def plan_resources(resources: dict[str, float], opts: ScoreOptions) -> Plan:
    """Size the actor pool from the cluster, always leaving CPU for the read/decode tasks: an actor
    pool that reserves every CPU deadlocks Ray Data (the decode tasks wait forever)."""
    total_cpu, total_gpu = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    if opts.gpus_per_actor > 0:
        if total_gpu < opts.gpus_per_actor:
            raise InputError(f"--gpus-per-actor {opts.gpus_per_actor:g} but the cluster has {total_gpu:g} GPUs")
        actors = opts.actors or max(1, int(total_gpu // opts.gpus_per_actor))
        cpus = opts.cpus_per_actor or 1.0
    else:
        reserve = max(1.0, total_cpu // 4)
        actors = opts.actors or max(1, int((total_cpu - reserve) // 4))
        cpus = opts.cpus_per_actor or max(1.0, float((total_cpu - reserve) // actors))
    if actors * cpus > total_cpu - 1:
        raise InputError(f"{actors} actors x {cpus:g} CPUs leaves no CPU for reading and decoding on a "
                         f"{total_cpu:g}-CPU cluster; lower --actors or --cpus-per-actor")
    threads = int(opts.cpus_per_actor) if opts.cpus_per_actor else max(1, int(total_cpu // actors))
    return Plan(actors=actors, cpus_per_actor=cpus, gpus_per_actor=opts.gpus_per_actor, threads=threads)


def _walk(root: ImageRoot, glob: str | None) -> Iterator[str]:
    """Relative names of image files under root, one directory listing at a time (sorted, streamed)."""
    stack = [root.base]
    while stack:
        infos = root.fs.get_file_info(pafs.FileSelector(stack.pop(), recursive=False))
        for info in sorted(infos, key=lambda i: i.path, reverse=True):
            if info.type == pafs.FileType.Directory:
                stack.append(info.path)
            elif info.type == pafs.FileType.File:
                rel = posixpath.relpath(info.path, root.base)
                if fnmatch.fnmatch(rel, glob) if glob else rel.lower().endswith(IMAGE_EXTENSIONS):
                    yield rel


def _chunks(names: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_listing(source: str | Path, images: str | Path | None, opts: ScoreOptions) -> tuple[ImageRoot, Iterator[list[str]]]:
    """(image root, chunks of relative names) for a directory/URI or a CSV listing."""
    text = str(source)
    if text.lower().endswith(".csv") and "://" not in text:
        if images is None:
            raise InputError("a CSV --input needs --images (the directory its file names are relative to)")
        df = read_csv(source)
        names = df[resolve_column(df, opts.fn_col, "file-name", source)].str.strip()
        check_file_names(names, source)
        return open_root(images), _chunks(iter(names.tolist()), MANIFEST_CHUNK)
    root = open_root(source)
    return root, _chunks(_walk(root, opts.glob), MANIFEST_CHUNK)


def write_manifest(store: OutputStore, run_id: str, root: ImageRoot, chunks: Iterator[list[str]],
                   done: np.ndarray) -> tuple[str, int, int]:
    """Stream the listing into Parquet under staging; returns (manifest dir, listed, new)."""
    manifest = store.path(STAGING, run_id, "manifest")
    store.fs.create_dir(manifest, recursive=True)
    listed = new = 0
    for i, rel in enumerate(chunks):
        paths = [root.full_name(r) for r in rel]
        keep = ~np.isin(path_hashes(paths), done) if len(done) else np.ones(len(paths), dtype=bool)
        listed += len(paths)
        if keep.any():
            table = pa.table({"path": np.asarray(paths, dtype=object)[keep], "rel": np.asarray(rel, dtype=object)[keep]})
            pq.write_table(table, posixpath.join(manifest, f"part-{i:05d}.parquet"), filesystem=store.fs)
            new += int(keep.sum())
    return manifest, listed, new


def _split_outputs(store: OutputStore, run_id: str) -> tuple[int, int]:
    """Split the scored rows into predictions/ and errors/ (one staged file at a time)."""
    scored_dir = store.path(STAGING, run_id, "scored")
    counts = {PREDICTIONS: 0, ERRORS: 0}
    for kind in counts:
        store.fs.create_dir(store.path(STAGING, run_id, kind), recursive=True)
    files = store.fs.get_file_info(pafs.FileSelector(scored_dir, allow_not_found=True))
    for info in sorted(f.path for f in files if f.path.endswith(".parquet")):
        table = pq.read_table(info, filesystem=store.fs)
        failed = table.column("error").is_valid()
        parts = {PREDICTIONS: table.filter(pa.compute.invert(failed)).drop_columns(["error"]),
                 ERRORS: table.filter(failed).select(ERROR_COLUMNS)}
        for kind, part in parts.items():
            if part.num_rows:
                pq.write_table(part, store.path(STAGING, run_id, kind, posixpath.basename(info)), filesystem=store.fs)
                counts[kind] += part.num_rows
    return counts[PREDICTIONS], counts[ERRORS]


def full_precision(opts: ScoreOptions) -> str:
    return "bf16" if opts.gpus_per_actor > 0 else "fp32"


def tta_settings(spec: ModelSpec, opts: ScoreOptions) -> TTASettings:
    full = full_precision(opts)
    if opts.no_tta:
        return TTASettings(n=0, beta=1.0, use_max=False, aug_precision="none", plain_precision=full)
    d = spec.tta_defaults
    settings = TTASettings(n=d.n if opts.tta_n is None else opts.tta_n,
                           beta=d.beta if opts.tta_beta is None else opts.tta_beta, use_max=opts.tta_max)
    if settings.n < 0 or not 0.0 <= settings.beta <= 1.0:
        raise InputError("--tta-n must be >= 0 and --tta-beta within [0, 1]")
    if settings.n == 0:
        return replace(settings, aug_precision="none", plain_precision=full)
    precision = tta_precision(spec, opts)
    # evaluate reports the plain pass's accuracy on its own (TTA off): there that pass stays exact
    return replace(settings, aug_precision=precision, plain_precision=full if opts.emit_plain else precision)


def tta_precision(spec: ModelSpec, opts: ScoreOptions) -> str:
    """What TTA's passes run on. auto: the artifact's int8 ONNX model on CPU actors (about twice as
    fast; TTA's blend moves less under int8 than under a different draw of its own augmentations),
    else full precision: bf16 on GPU actors, fp32 on CPU. Without TTA the plain pass is always full."""
    int8_possible = spec.has_int8 and opts.gpus_per_actor == 0 and opts.backend != "torch"
    if opts.tta_precision not in ("auto", "int8", "full"):
        raise InputError("--tta-precision must be one of auto, int8, full")
    if opts.tta_precision == "int8" and not int8_possible:
        raise InputError("--tta-precision int8 needs CPU actors, the ONNX backend and a model artifact with "
                         "model.int8.onnx; use --tta-precision full")
    return "int8" if int8_possible and opts.tta_precision != "full" else full_precision(opts)


def score(model: str | Path, source: str | Path, output: str | Path, images: str | Path | None = None,
          opts: ScoreOptions = ScoreOptions(), allow_pickle: bool = False) -> ScoreSummary:
    """Score every image file of `source` with TTA and commit predictions/errors Parquet to `output`."""
    t0 = time.perf_counter()
    if opts.backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}")
    if opts.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
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
    print(f"scoring {new} new of {listed} listed files with {spec.model_id} (TTA n={tta.n}, beta={tta.beta}"
          f"{', max' if tta.use_max else ''}, passes {_precisions(tta)}); "
          f"{plan.actors} actor(s) x {plan.cpus_per_actor:g} CPU"
          f"{f' + {plan.gpus_per_actor:g} GPU' if plan.gpus_per_actor else ''}, {plan.threads} threads each",
          flush=True)
    if new:
        _run_pipeline(store, run_id, manifest, root, spec, tta, plan, opts)
    scored, errors = _split_outputs(store, run_id)
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


def read_ahead_bytes(plan: Plan, size: int, batch_size: int) -> int:
    """Object-store cap for the pipeline. Decoding runs far ahead of the model (~50x on CPU), and
    uncapped Ray Data buffers decoded blocks up to its whole object-store budget, so memory would
    grow with the dump; a few batches per actor keep every actor fed."""
    return max(MIN_READ_AHEAD_BYTES, plan.actors * READ_AHEAD_BATCHES * batch_size * size * size * 3)


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
    ds.write_parquet(store.path(STAGING, run_id, "scored"), filesystem=store.fs,
                     min_rows_per_file=opts.rows_per_file)
