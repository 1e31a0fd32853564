"""Writing and publishing the model artifact (vehicle_ray/artifact.py has its format and reader):
the files of a trained learner, ONNX export and int8 quantization, model.json with everything fitted
on the validation set, and the publish to --out that makes a finished artifact visible at once.

model.json is written last and is the commit point: locally the directory is moved into place in one
rename; at a URI (s3://...) the files are staged beside it and copied into place with model.json last.
Either way a reader never sees a half-written artifact: no model.json means no model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import posixpath
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from vehicle_ray import durable
from vehicle_ray.adaptive_tta import (
    AdaptiveGate,
    adaptive_probabilities,
    fit_adaptive_threshold,
    served_probabilities,
)
from vehicle_ray.artifact import (
    ARTIFACT_FILES,
    CURVES_PNG,
    EXPORT_PKL,
    FORMAT_VERSION,
    METRICS_CSV,
    MODEL_JSON,
    ONNX,
    ONNX_INT8,
    WEIGHTS,
    sha256_file,
)
from vehicle_ray.calibration import apply_temperature, calibration_record
from vehicle_ray.decision import OperatingTarget, pick_operating_point
from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri, resolve_location
from vehicle_ray.monitoring import baseline, confidence_histogram
from vehicle_ray.plotting import training_curves
from vehicle_ray.recipe import HISTORY_FIELDS, Recipe
from vehicle_ray.tta import ValidationSet

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

# Augmented training images that static int8 quantization calibrates its activation ranges on: the
# int8 agreement figures in BENCHMARKS.md (bench/tta_precision.py) were measured with this many.
CALIBRATION_IMAGES = 128
# ONNX opset of the exported model: the TorchScript exporter (dynamo=False) writes it and every
# onnxruntime the pins admit runs it; a ResNet needs nothing newer.
ONNX_OPSET = 17
PUBLISH_EXIT_AFTER_ENV = "VEHICLE_RAY_TEST_PUBLISH_EXIT_AFTER"  # test-only: die after N object writes of a publish
PUBLISH_EXIT_CODE = 86


def library_versions() -> dict[str, str]:
    import fastai
    import ray
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fastai": fastai.__version__,
        "ray": ray.__version__,
    }


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> None:
    """Trace the eval-mode network to ONNX with a dynamic batch axis (TorchScript exporter: no onnxscript)."""
    import torch

    model = model.eval().float().cpu()
    dummy = torch.zeros(2, 3, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
        opset_version=ONNX_OPSET,
    )


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
    # ONNX Runtime's quantizer warns through the root logger (logging.warning) about every rank-1
    # (BatchNorm1d) weight it quantizes per channel: noise for our users. Drop its warnings for the
    # call without touching the root logger's level.
    quiet = _BelowError()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(
            str(fp32),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        logging.getLogger().removeFilter(quiet)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def calibration_batches(learn, limit: int = CALIBRATION_IMAGES) -> Iterable[np.ndarray]:
    """Augmented, normalised training batches (what TTA's augmented passes feed the model), on the CPU."""
    import torch

    seen = 0
    for xb, *_ in learn.dls.train:
        yield torch.as_tensor(xb).float().cpu().numpy()
        seen += len(xb)
        if seen >= limit:
            return


CALIBRATION_PRECISION = "fp32"


def validation_fields(
    validation: ValidationSet, classes: list[str], target: OperatingTarget | None = None
) -> dict[str, Any]:
    """model.json's calibration, monitoring_baseline and (with a target) operating_point, fitted on the
    validation set. Temperature scaling is fitted on the served probabilities, after the TTA blend
    (bench/calibration_modes.py measured it against scaling each pass's logits before the blend: as
    good or better here, and it never changes a label), once for TTA as configured and once for the
    plain pass that `--no-tta` serves. Adaptive TTA's threshold (adaptive_tta.py) is fitted on the same
    set, and its drift baseline on what it serves there."""
    tta, plain = (calibration_record(p, validation.targets) for p in (validation.probs, validation.plain))
    served = {"tta": validation.probs, "plain": validation.plain}
    temperatures = {"tta": tta["temperature"], "plain": plain["temperature"]}
    calibrated = {mode: apply_temperature(p, temperatures[mode]) for mode, p in served.items()}
    fields: dict[str, Any] = {
        "calibration": {
            "method": "temperature",
            "applied_to": "served probabilities: softmax(log(p) / temperature), after the TTA blend",
            # the validation pass runs the fp32 model (after train.hardware.plain_fp32), while scoring serves
            # TTA from int8 on CPU actors and bf16/fp16 on GPU actors: bench/calibration_precision.py, BENCHMARKS.md
            "fitted_precision": CALIBRATION_PRECISION,
            "validation_images": int(len(validation.targets)),
            "tta": {"n": validation.tta.n, "beta": validation.tta.beta, **tta},
            "plain": plain,
        },
    }
    adaptive = fit_adaptive_threshold(validation.plain, validation.probs)
    fields["adaptive_tta"] = adaptive
    if adaptive["threshold"] is not None:  # what adaptive TTA serves, for its drift baseline
        gate = AdaptiveGate(adaptive["threshold"])
        served["adaptive"], skipped = adaptive_probabilities(validation.plain, validation.probs, gate)
        calibrated["adaptive"] = served_probabilities(
            served["adaptive"], skipped, temperatures["plain"], temperatures["tta"]
        )
    fields["monitoring_baseline"] = {
        mode: {
            **baseline(calibrated[mode], classes),
            "confidence_histogram_raw": confidence_histogram(served[mode].max(axis=1)),
        }
        for mode in served
    }
    if target is not None:
        positive = target.check_classes(classes)
        point = pick_operating_point(calibrated["tta"][:, positive], validation.targets == positive, target)
        fields["operating_point"] = {**point, "fitted_on": "validation set, calibrated TTA probabilities"}
    return fields


@dataclass(frozen=True)
class ArtifactContent:
    """What model.json records beyond the files: the recipe, classes and epoch history; `training`,
    how it was trained (device, precision, workers: train.hardware) as it ran; `validation`, the
    validation set as scoring serves it (calibration, drift baseline, adaptive TTA's threshold and the
    operating point for `target`); `data`, what it was trained on (every labeled CSV's sha256, image
    and split counts)."""

    recipe: Recipe
    classes: list[str]
    history: list[dict[str, Any]]
    training: dict[str, Any] = field(default_factory=dict)
    validation: ValidationSet | None = None
    target: OperatingTarget | None = None
    data: dict[str, Any] | None = None


def write_artifact(
    directory: Path,
    learn,
    content: ArtifactContent,
    rank: int = 0,
    onnx_rank: int = 0,
    gather: Callable[[dict[str, str]], list[dict[str, str]]] | None = None,
) -> dict | None:
    """Write the artifact of a trained learner into `directory` (existing, empty): training's end of
    run on its ranks, and any single process (rank 0 = onnx_rank 0, no gather). The ONNX rank exports
    the ONNX model and calibrates its int8 copy (the longest step after the validation pass: ONNX 1.2 s
    and int8 2.5 s of 4.7 s for resnet18 at 64 px) while rank 0 writes export.pkl, the weights,
    metrics and curves; `gather` brings every rank's {file: sha256} to rank 0 (a collective every rank
    calls), which then writes model.json, the commit point. Returns model.json's content on rank 0."""
    files: dict[str, str] = {}
    if rank == onnx_rank:
        files.update(write_onnx_files(directory, learn, content.recipe.size))
    if rank == 0:
        files.update(write_learner_files(directory, learn, content.history))
    if gather is not None:
        files = {name: sha for part in gather(files) for name, sha in part.items()}
    return write_model_json(directory, files, content) if rank == 0 else None


def write_learner_files(directory: Path, learn, history: list[dict[str, Any]]) -> dict[str, str]:
    """export.pkl, the safetensors weights, metrics.csv and the training curves; their sha256s."""
    from safetensors.torch import save_model

    learn.export(directory / EXPORT_PKL)
    save_model(learn.model.eval(), str(directory / WEIGHTS))
    pd.DataFrame(history).to_csv(directory / METRICS_CSV, index=False)
    names = [EXPORT_PKL, WEIGHTS, METRICS_CSV]
    if history:
        training_curves(pd.DataFrame(history), directory / CURVES_PNG)
        names.append(CURVES_PNG)
    return {name: sha256_file(directory / name) for name in names}


def write_onnx_files(directory: Path, learn, size: int) -> dict[str, str]:
    """The ONNX model and its int8 copy calibrated on augmented training batches; their sha256s."""
    export_onnx(learn.model.eval(), size, directory / ONNX)
    quantize_onnx(directory / ONNX, directory / ONNX_INT8, calibration_batches(learn))
    return {name: sha256_file(directory / name) for name in (ONNX, ONNX_INT8)}


def write_model_json(directory: Path, files: dict[str, str], content: ArtifactContent) -> dict:
    """model.json, the commit point, for the artifact `files` ({name: sha256}) already in `directory`."""
    recipe, classes, history = content.recipe, content.classes, content.history
    files = {name: files[name] for name in ARTIFACT_FILES if name in files}
    final = {k: v for k, v in (history[-1] if history else {}).items() if k not in HISTORY_FIELDS}
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
        "input": {"size": recipe.size, "resize_method": recipe.resize_method, "channels": 3, "normalize": normalize},
        "augmentation": {
            k: getattr(recipe, k)
            for k in ("do_flip", "flip_vert", "max_rotate", "max_lighting", "max_warp", "max_zoom")
        },
        "tta": {"n": recipe.tta_n, "beta": recipe.tta_beta},
        "metrics": final,
        **(validation_fields(content.validation, list(classes), content.target) if content.validation else {}),
        "recipe": recipe.to_dict(),
        "training": content.training,
        **({"data": content.data} if content.data is not None else {}),
        "versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    (directory / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def record_operating_point(model: str | Path, point: dict[str, Any]) -> None:
    """Set model.json's operating_point (evaluate --save-operating-point): one atomic write of model.json
    (a rename locally, a single PUT at a URI); no other file changes, so every sha256 stays valid."""
    fs, base, _ = resolve_location(model, "--model")
    path = posixpath.join(base, MODEL_JSON)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise InputError(f"--save-operating-point needs a vehicle_ray model directory with {MODEL_JSON}: {model}")
    with fs.open_input_stream(path) as f:
        meta = json.loads(f.read().decode())
    data = (json.dumps({**meta, "operating_point": point}, indent=2) + "\n").encode()
    if isinstance(fs, pafs.LocalFileSystem):
        durable.atomic_write(path, data, tmp=path + ".tmp")
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def require_free_output(out: str | Path, overwrite: bool) -> None:
    """A model location is never silently merged into. Locally: absent, empty, or --overwrite. At a URI:
    no model.json (the commit point; leftovers of an interrupted publish are not a model), or --overwrite."""
    if is_uri(out):
        fs, base, _ = resolve_location(out, "--out")
        if fs.get_file_info(posixpath.join(base, MODEL_JSON)).type != pafs.FileType.NotFound and not overwrite:
            raise InputError(f"a model already exists at {out} (pass --overwrite to replace it)")
        return
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output directory {out} is not empty (pass --overwrite to replace it)")


def publish(source: Path, out: str | Path, overwrite: bool = False) -> None:
    """Put a finished artifact directory at `out` (a local path or a URI) so that readers see either no
    model or a complete one, never a mix."""
    if is_uri(out):
        _publish_uri(source, str(out), overwrite)
    else:
        _publish_local(source, Path(out), overwrite)


def _publish_local(source: Path, out: Path, overwrite: bool) -> None:
    """Copy beside `out`, then one rename (a second one when replacing)."""
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


def _publish_uri(source: Path, out: str, overwrite: bool) -> None:
    """Object stores have no rename, so model.json is the commit point: upload every file under a
    staging prefix beside `out` (the slow, failure-prone part), drop the old model.json (from here on
    readers see "no model"), clear `out`, server-side copy the other files into place, and copy
    model.json last. A crash at any step leaves either no model.json or a complete model."""
    require_free_output(out, overwrite)
    fs, base, _ = resolve_location(out, "--out")
    parent, name = posixpath.split(base)
    staging = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    files = sorted(p.name for p in source.iterdir() if p.is_file())
    ordered = [n for n in files if n != MODEL_JSON] + [MODEL_JSON]  # model.json last, everywhere
    for n in ordered:
        with open(source / n, "rb") as src, fs.open_output_stream(posixpath.join(staging, n)) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        _publish_step()
    if fs.get_file_info(posixpath.join(base, MODEL_JSON)).type == pafs.FileType.File:
        fs.delete_file(posixpath.join(base, MODEL_JSON))
    if overwrite and fs.get_file_info(base).type == pafs.FileType.Directory:
        fs.delete_dir_contents(base, missing_dir_ok=True)  # --overwrite replaces the whole location
    elif fs.get_file_info(base).type == pafs.FileType.Directory:  # an interrupted publish's files only
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.type == pafs.FileType.File and posixpath.basename(info.path) in {*ordered, *ARTIFACT_FILES}:
                fs.delete_file(info.path)
    for n in ordered:
        fs.copy_file(posixpath.join(staging, n), posixpath.join(base, n))
        _publish_step()
    fs.delete_dir(staging)
    logger.info(f"published {len(ordered)} files to {out}")


_steps_done = 0


def _publish_step() -> None:
    """Test-only crash point: with PUBLISH_EXIT_AFTER_ENV=N the process dies after its N-th object
    write while publishing, as a killed driver would."""
    global _steps_done
    _steps_done += 1
    if os.environ.get(PUBLISH_EXIT_AFTER_ENV) == str(_steps_done):
        os._exit(PUBLISH_EXIT_CODE)
