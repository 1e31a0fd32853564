"""Which model scoring runs: a vehicle_ray artifact (model.json + safetensors/ONNX, sha256-verified,
never unpickled) or, with --allow-pickle, any fastai export.pkl (its augmentation and input size come
from the learner). Read on the driver before any actor starts; the actors load what `pass_files` names.

fastai is imported only on the --allow-pickle path: the driver never loads torch or fastai otherwise.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from vehicle_ray.artifact import EXPORT_PKL, MODEL_JSON, ONNX, ONNX_INT8, WEIGHTS, open_artifact, sha256_file
from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri, resolve_location
from vehicle_ray.tracking import (
    RegisteredModel,
    fetch_registered,
    install_cache_entry,
    is_registry_uri,
    model_cache_root,
)
from vehicle_ray.tta import TTASettings


@dataclass(frozen=True)
class ModelSpec:
    """What the driver knows about the model before any actor starts (decode needs size and resize)."""

    source: str  # what the user passed: a local path, or a URI every actor downloads from (models:/ pinned)
    directory: Path  # the local copy on the driver
    allow_pickle: bool
    classes: list[str]
    size: int
    resize_method: str
    model_id: str
    model_sha256: str
    tta_defaults: TTASettings
    has_onnx: bool
    has_int8: bool = False
    # fitted on the validation set at training (model.json; None in older artifacts and pickles)
    calibration: dict | None = None
    operating_point: dict | None = None
    baseline: dict | None = None
    adaptive_tta: dict | None = None  # the adaptive TTA threshold and its validation table
    registry_name: str | None = None  # --model models:/NAME/VERSION or models:/NAME@ALIAS
    registry_version: str | None = None
    tracking_uri: str | None = None  # the registry an actor on another node downloads from


def pickle_learner(directory: Path):
    from fastai.learner import load_learner

    path = directory / EXPORT_PKL if directory.is_dir() else directory
    if not path.is_file():
        raise InputError(f"no {EXPORT_PKL} at {directory}")
    try:
        return path, load_learner(path, cpu=True)
    except Exception as exc:  # unpickling raises anything
        raise InputError(f"cannot load fastai learner {path}: {type(exc).__name__}: {exc}") from exc


def _learner_resize(learn) -> tuple[int, str]:
    from fastai.vision.augment import Resize, ResizeMethod

    resizes = [t for t in learn.dls.after_item.fs if isinstance(t, Resize)]
    if not resizes:
        raise InputError("the exported learner has no Resize item transform: cannot tell the input size")
    r = resizes[0]
    return int(r.size[0]), "squish" if r.method == ResizeMethod.Squish else "crop"


def local_model(model: str | Path, tracking_uri: str | None = None) -> Path:
    """A local path as is; a URI (s3://bucket/models/x) is copied once into the model cache, under a key
    that changes when the files at the URI do (`uri_cache_key`); a registry model (models:/...) is
    downloaded once per version to the model cache. A nightly job scoring with the same model reuses
    one copy per node instead of leaving a fresh temp copy behind on every run and in every actor."""
    if is_registry_uri(model):
        return fetch_registered(str(model), tracking_uri).directory
    if not is_uri(model):
        return Path(model)
    fs, base, info = resolve_location(model, "model")
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"model not found: {model}")
    single = info.type == pafs.FileType.File  # a bare export.pkl at a URI
    files = [info] if single else fs.get_file_info(pafs.FileSelector(base, recursive=True))
    manifest = posixpath.join(base, MODEL_JSON)
    described = b"" if single or not any(f.path == manifest for f in files) else _read(fs, manifest)
    target = model_cache_root() / URI_CACHE_SUBDIR / uri_cache_key(str(model), files, described)
    if not target.is_dir():
        _copy_into_cache(fs, base, single, target)
    return target / posixpath.basename(base) if single else target


URI_CACHE_SUBDIR = "by-uri"  # beside the registry's NAME/VERSION entries


def uri_cache_key(uri: str, files: list[pafs.FileInfo], model_json: bytes = b"") -> str:
    """The cache entry of the model at `uri`: a digest of the URI (without a trailing slash), of
    model.json's bytes (which name every other file's sha256, so the key follows the content) and of
    every file's path, size and modification time (what a bare export.pkl has; object stores keep
    whole seconds). A model overwritten at the same URI gets a new entry; the sha256s are verified
    on every load, as for any artifact."""
    digest = hashlib.sha256(uri.rstrip("/").encode() + b"\0" + model_json)
    for f in sorted(files, key=lambda f: f.path):
        if f.type == pafs.FileType.File:
            digest.update(f"\0{f.path}\0{f.size}\0{f.mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_file(path) as f:
        return f.read()


def _copy_into_cache(fs: pafs.FileSystem, base: str, single: bool, target: Path) -> None:
    def copy(staging: Path) -> Path:
        dest = staging / posixpath.basename(base) if single else staging
        pafs.copy_files(base, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return staging

    install_cache_entry(target, copy)


def resolve_model(model: str | Path, allow_pickle: bool = False, tracking_uri: str | None = None) -> ModelSpec:
    """Read (and verify) the model's description on the driver. `tracking_uri`: the MLflow server of a
    models:/ model (default: MLFLOW_TRACKING_URI)."""
    registered = fetch_registered(str(model), tracking_uri) if is_registry_uri(model) else None
    directory = registered.directory if registered else local_model(model)
    if not directory.exists():
        raise InputError(f"model not found: {model}")
    if directory.is_dir() and (directory / MODEL_JSON).is_file():
        art = open_artifact(directory)
        tta = art.meta["tta"]
        return ModelSpec(
            source=registered.uri if registered else str(model),
            directory=directory,
            allow_pickle=False,
            classes=art.classes,
            size=art.size,
            resize_method=art.meta["input"]["resize_method"],
            model_id=art.meta["model_id"],
            model_sha256=art.meta["model_sha256"],
            tta_defaults=TTASettings(tta["n"], tta["beta"]),
            has_onnx=ONNX in art.meta["files"],
            has_int8=ONNX_INT8 in art.meta["files"],
            calibration=art.meta.get("calibration"),
            operating_point=art.meta.get("operating_point"),
            baseline=art.meta.get("monitoring_baseline"),
            adaptive_tta=art.meta.get("adaptive_tta"),
            **_registry_fields(registered, tracking_uri),
        )
    if registered:
        raise InputError(f"{model} is not a vehicle_ray model artifact (no {MODEL_JSON} in {directory})")
    if not allow_pickle:
        raise InputError(
            f"{model} has no model.json; pass --allow-pickle to score a plain fastai export.pkl "
            "(unpickling runs code from the file: only for models you trust)"
        )
    path, learn = pickle_learner(directory)
    size, method = _learner_resize(learn)
    sha = sha256_file(path)
    return ModelSpec(
        source=str(model),
        directory=path,
        allow_pickle=True,
        classes=[str(c) for c in learn.dls.vocab],
        size=size,
        resize_method=method,
        model_id=f"fastai-export-{sha[:12]}",
        model_sha256=sha,
        tta_defaults=TTASettings(),
        has_onnx=False,
    )


def _registry_fields(registered: RegisteredModel | None, tracking_uri: str | None) -> dict[str, str | None]:
    if registered is None:
        return {}
    return {"registry_name": registered.name, "registry_version": registered.version, "tracking_uri": tracking_uri}


ONNX_ON_GPU = "--backend onnx runs on CPU actors; use --backend torch (or auto) with --gpus-per-actor"


def require_backend_device(backend: str, use_gpu: bool) -> None:
    """The ONNX backend is an ONNX Runtime CPU session: GPU actors would feed it CUDA tensors."""
    if backend == "onnx" and use_gpu:
        raise InputError(ONNX_ON_GPU)


def pass_files(spec: ModelSpec, tta: TTASettings, backend: str, use_gpu: bool) -> tuple[str, str]:
    """(plain-pass file, augmented-pass file): the artifact files the model actors load, so the driver
    can verify them before any actor starts and each actor loads and verifies only those. `use_gpu` is
    the plan's (gpus_per_actor > 0), never whether a GPU happens to be visible."""
    require_backend_device(backend, use_gpu)
    use_onnx = backend == "onnx" or (backend == "auto" and not use_gpu and spec.has_onnx)
    if use_onnx and not spec.has_onnx:
        raise InputError(f"--backend onnx: {spec.source} has no {ONNX}")
    full = ONNX if use_onnx else WEIGHTS
    return (ONNX_INT8 if tta.plain_precision == "int8" else full, ONNX_INT8 if tta.aug_precision == "int8" else full)
