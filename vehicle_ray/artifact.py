"""The model artifact: a self-contained directory that scoring can trust without unpickling.

    export.pkl         fastai learn.export (load_learner), for notebooks and --allow-pickle
    model.safetensors  the weights, no pickle
    model.onnx         the same network for ONNX Runtime (the fast CPU scoring backend)
    model.int8.onnx    a static-int8 copy of it, calibrated on augmented training batches: the CPU
                       backend for TTA's passes (scoring without TTA always runs model.onnx)
    model.json         arch, classes in order, input size/resize/normalisation, augmentation and
                       TTA defaults, validation metrics, library versions, sha256 of every file
    metrics.csv        one row per epoch: stage, epoch, losses, metrics, seconds
    training_curves.png  losses and metrics per epoch, stage boundaries marked

model.json is written last and the directory is moved into place in one rename, so a reader never
sees a half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd

from vehicle_ray.errors import InputError
from vehicle_ray.report.plots import training_curves
from vehicle_ray.recipe import HISTORY_FIELDS, Recipe

if TYPE_CHECKING:  # torch is imported where it is used: the scoring driver reads artifacts without it
    import torch

MODEL_JSON = "model.json"
EXPORT_PKL = "export.pkl"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
CALIBRATION_IMAGES = 128
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import fastai
    import ray
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "fastai": fastai.__version__, "ray": ray.__version__}


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> None:
    """Trace the eval-mode network to ONNX with a dynamic batch axis (TorchScript exporter: no onnxscript)."""
    import torch

    model = model.eval().float().cpu()
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(model, (dummy,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                      opset_version=17)


def quantize_onnx(fp32: Path, out: Path, batches: Iterable[np.ndarray]) -> None:
    """Static int8 copy of an ONNX model (QDQ, per-channel int8 weights, uint8 activations): about 2x
    fp32 ONNX Runtime on AVX2 CPUs. Activation ranges come from `batches` (float32 NCHW model inputs)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.feed = ({"image": np.ascontiguousarray(b, dtype=np.float32)} for b in batches)

        def get_next(self):
            return next(self.feed, None)

    # No quant_pre_process: the traced eval-mode graph has its BatchNorms folded already, and the
    # pre-pass cost every training run ~0.7 s (64 px) to ~3.4 s (224 px) for an int8 model of the
    # same speed and agreement with fp32 (BENCHMARKS.md).
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # per-channel quantization warns about every rank-1 (BatchNorm1d) weight
    try:
        quantize_static(str(fp32), str(out), Batches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def calibration_batches(learn, limit: int = CALIBRATION_IMAGES) -> Iterable[np.ndarray]:
    """Augmented, normalised training batches (what TTA's augmented passes feed the model), on the CPU."""
    import torch

    seen = 0
    for xb, *_ in learn.dls.train:
        yield torch.as_tensor(xb).float().cpu().numpy()
        seen += len(xb)
        if seen >= limit:
            return


def write_artifact(directory: Path, learn, recipe: Recipe, classes: list[str], history: list[dict[str, Any]]) -> dict:
    """Write every artifact file of a trained learner into `directory` (which must exist and be empty)."""
    from safetensors.torch import save_model

    learn.export(directory / EXPORT_PKL)
    model = learn.model.eval()
    save_model(model, str(directory / WEIGHTS))
    export_onnx(model, recipe.size, directory / ONNX)
    quantize_onnx(directory / ONNX, directory / ONNX_INT8, calibration_batches(learn))
    pd.DataFrame(history).to_csv(directory / METRICS_CSV, index=False)
    names = [EXPORT_PKL, WEIGHTS, ONNX, ONNX_INT8, METRICS_CSV]
    if history:
        training_curves(pd.DataFrame(history), directory / CURVES_PNG)
        names.append(CURVES_PNG)
    files = {name: sha256_file(directory / name) for name in names}
    final = {k: v for k, v in (history[-1] if history else {}).items()
             if k not in HISTORY_FIELDS}
    normalize = None
    if recipe.normalize == "imagenet":
        from fastai.vision.core import imagenet_stats

        normalize = {"mean": list(imagenet_stats[0]), "std": list(imagenet_stats[1])}
    meta = {
        "format_version": FORMAT_VERSION,
        "model_id": f"{recipe.arch}-{files[WEIGHTS][:12]}",
        "model_sha256": files[WEIGHTS],
        "arch": recipe.arch,
        "classes": list(classes),
        "input": {"size": recipe.size, "resize_method": recipe.resize_method, "channels": 3,
                  "normalize": normalize},
        "augmentation": {k: getattr(recipe, k) for k in
                         ("do_flip", "flip_vert", "max_rotate", "max_lighting", "max_warp", "max_zoom")},
        "tta": {"n": recipe.tta_n, "beta": recipe.tta_beta},
        "metrics": final,
        "recipe": recipe.to_dict(),
        "versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    (directory / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def require_free_output(out: Path, overwrite: bool) -> None:
    """A model directory is never silently merged into: it must be absent, empty, or --overwrite."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output directory {out} is not empty (pass --overwrite to replace it)")


def publish(source: Path, out: Path, overwrite: bool = False) -> None:
    """Copy a finished artifact directory to `out` atomically: copy beside it, then one rename."""
    out = out.resolve()
    require_free_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, staging)
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash)
    else:
        os.replace(staging, out)


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
        raise InputError(f"{meta_path} has format_version {meta.get('format_version')}; this vehicle_ray reads {FORMAT_VERSION}")
    for name in verify:
        expected = meta["files"].get(name)
        if expected is None or not (d / name).is_file():
            raise InputError(f"model directory {directory} lacks {name}")
        if sha256_file(d / name) != expected:
            raise InputError(f"{d / name} does not match the sha256 in {MODEL_JSON}: refusing a tampered or partial model")
    return Artifact(directory=d, meta=meta)


def load_torch_model(artifact: Artifact) -> torch.nn.Module:
    """Rebuild the fastai vision model from model.json and load the safetensors weights (no pickle)."""
    from fastai.vision.learner import create_vision_model
    from safetensors.torch import load_file

    from vehicle_ray.train.learner import arch_fn

    model = create_vision_model(arch_fn(artifact.meta["arch"]), len(artifact.classes), pretrained=False)
    model.load_state_dict(load_file(str(artifact.path(WEIGHTS))))
    return model.eval()
