"""The model artifact: a self-contained directory that scoring can trust without unpickling.

    export.pkl         fastai learn.export (load_learner), for notebooks and --allow-pickle
    model.safetensors  the weights, no pickle
    model.onnx         the same network for ONNX Runtime (the fast CPU scoring backend)
    model.int8.onnx    a static-int8 copy of it, calibrated on augmented training batches: the CPU
                       backend for TTA's passes (scoring without TTA always runs model.onnx)
    model.json         arch, classes in order, input size/resize/normalisation, augmentation and
                       TTA defaults, validation metrics, library versions, sha256 of every file;
                       fitted on the validation set as scoring serves it: calibration (temperature
                       scaling), monitoring_baseline (class rates, confidence histogram) and, for a
                       positive class, operating_point (threshold, achieved precision/recall);
                       adaptive_tta (the plain-pass confidence above which TTA's passes are skipped)
    metrics.csv        one row per epoch: stage, epoch, losses, metrics, seconds
    training_curves.png  losses and metrics per epoch, stage boundaries marked

This module is the format and its reader, shared by every layer; train/artifact_writer.py writes and
publishes artifacts. model.json is written last and is the commit point: no model.json means no model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri, resolve_location

MODEL_JSON = "model.json"
EXPORT_PKL = "export.pkl"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
ARTIFACT_FILES = (MODEL_JSON, EXPORT_PKL, WEIGHTS, ONNX, ONNX_INT8, METRICS_CSV, CURVES_PNG)
FORMAT_VERSION = 1


def sha256_stream(f: BinaryIO) -> str:
    """sha256 of everything a binary stream yields (a local file or a pyarrow input stream)."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(location: str | Path) -> str:
    """sha256 of a file at a local path or a URI (s3://..., file:///...)."""
    if not is_uri(location):
        with open(location, "rb") as f:
            return sha256_stream(f)
    fs, path, _ = resolve_location(location, "file")
    with fs.open_input_stream(path) as f:
        return sha256_stream(f)


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory: its model.json plus paths."""

    directory: Path
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def size(self) -> int:
        return self.meta["input"]["size"]

    def path(self, name: str) -> Path:
        return self.directory / name


def open_artifact(directory: str | Path, verify: Iterable[str] = (WEIGHTS,)) -> Artifact:
    """Read model.json and check the sha256 of the files about to be used."""
    d = Path(directory)
    meta_path = d / MODEL_JSON
    if not meta_path.is_file():
        raise InputError(f"not a model directory (no {MODEL_JSON}): {directory}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path} is not valid JSON: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{meta_path} has format_version {meta.get('format_version')}; this vehicle_ray reads {FORMAT_VERSION}"
        )
    for name in verify:
        expected = meta["files"].get(name)
        if expected is None or not (d / name).is_file():
            raise InputError(f"model directory {directory} lacks {name}")
        if sha256_file(d / name) != expected:
            raise InputError(
                f"{d / name} does not match the sha256 in {MODEL_JSON}: refusing a tampered or partial model"
            )
    return Artifact(directory=d, meta=meta)
