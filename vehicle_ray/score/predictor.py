"""The Ray Data model actor and its backends: ONNX Runtime on CPU (about twice eager PyTorch's speed on
CPU; on CPU, TTA's passes can run the artifact's static-int8 ONNX model, about twice fp32 ONNX again)
and eager PyTorch (autocast on GPU, channels_last: bf16 where the GPU has it natively, else fp16).
Without TTA the plain pass always runs the full-precision model.

The device follows the plan (`device`, from --gpus-per-actor on the driver), never what the actor can
see: Ray no longer hides a node's GPUs from actors that reserved none.

A CPU actor on ONNX files runs TTA's augmentation fused (score/augment.py: NumPy + OpenCV) and never
imports torch or fastai; GPU actors, --backend torch and --allow-pickle run fastai's own batch transforms
on the model's device. torch and fastai are imported inside the functions that use them: the driver
pickles `Predictor` by reference and would otherwise pay seconds of imports it never uses.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from vehicle_ray import columns as col
from vehicle_ray.adaptive_tta import served_probabilities
from vehicle_ray.artifact import WEIGHTS, Artifact, open_artifact
from vehicle_ray.decision import decide
from vehicle_ray.device import fastai_on_cpu, gpu_precision
from vehicle_ray.network import artifact_batch_transforms, load_torch_model
from vehicle_ray.score.augment import AugmentSpec, FusedAugment
from vehicle_ray.score.model import ModelSpec, local_model, pass_files, pickle_learner
from vehicle_ray.score.planning import ran_precisions
from vehicle_ray.score.serving import ServingPolicy
from vehicle_ray.tta import TTAResult, TTASettings, fastai_passes, tta_probabilities

if TYPE_CHECKING:
    import torch

RowGate = Callable[[np.ndarray], np.ndarray] | None  # adaptive TTA: the rows that get the augmented passes


def onnx_forward(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """logits = forward(normalised NCHW float batch) on an ONNX Runtime CPU session of `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def forward(x: np.ndarray) -> np.ndarray:
        (logits,) = session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return logits

    return forward


def gpu_autocast_dtype(capability: tuple[int, int]) -> torch.dtype:
    """The GPU autocast dtype for a compute capability: bfloat16 from 8.0 (Ampere) on, else float16."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[gpu_precision(capability)]


def move_transform_tensors(transforms: list, device: torch.device | str) -> int:
    """Move every tensor a batch transform holds (fastai's Normalize keeps mean/std as tensors; fastai
    transforms have no `.to`) to `device`, also in lists, fastcore Ls, tuples and dicts and nested
    transforms among their attributes. Returns how many tensors it moved."""
    import torch
    from fastcore.foundation import CollBase

    seen: set[int] = set()

    def move(value: Any) -> tuple[Any, int]:
        if isinstance(value, torch.Tensor):
            return value.to(device), 1
        if isinstance(value, CollBase):  # fastcore's L (transforms keep their sub-functions in one)
            return value, move(value.items)[1]
        if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
            moved = [move(v) for v in value]
            count = sum(n for _, n in moved)
            if not count:
                return value, 0
            items = [v for v, _ in moved]
            if isinstance(value, list):
                value[:] = items  # in place: keeps fastcore's L and any other list subclass as it is
                return value, count
            return (type(value)(*items) if hasattr(value, "_fields") else type(value)(items)), count
        if isinstance(value, dict):
            count = 0
            for k, v in value.items():
                value[k], n = move(v)
                count += n
            return value, count
        if hasattr(value, "__dict__") and hasattr(value, "encodes") and id(value) not in seen:
            return value, walk(value)  # a nested transform, e.g. inside a fastai wrapper
        return value, 0

    def walk(t: Any) -> int:
        seen.add(id(t))
        count = 0
        for name, value in list(vars(t).items()):
            new, n = move(value)
            if n:
                setattr(t, name, new)
                count += n
        return count

    return sum(walk(t) for t in transforms if hasattr(t, "__dict__") and id(t) not in seen)


def _torch_forward(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits = forward(batch) on `device`, under `dtype` autocast on a GPU (None: full precision)."""
    import torch

    model = model.eval().to(device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            return model(torch.as_tensor(x)).float()

    return forward


class Predictor:
    """Ray Data actor: loads the model once, then turns decoded batches into prediction rows.

    `device` is the plan's (`planning.actor_device(gpus_per_actor)`): "cpu" keeps the actor off every
    GPU it may see. A GPU actor autocasts to bf16 or fp16 by its GPU's capability and records which
    in its rows (tta_plain_precision / tta_aug_precision). `serving` says how the served probabilities
    are calibrated, turned into the `decision` column, and (adaptive TTA) which rows get the augmented
    passes: each row's `tta_passes` says how many passes it got."""

    def __init__(
        self,
        spec: ModelSpec,
        tta: TTASettings,
        backend: str = "auto",
        threads: int = 1,
        emit_plain: bool = False,
        device: str = "cpu",
        serving: ServingPolicy | None = None,
        exact_decode: bool = False,
    ):
        directory = spec.directory if spec.directory.exists() else local_model(spec.source, spec.tracking_uri)
        files = None if spec.allow_pickle else pass_files(spec, tta, backend, device != "cpu")
        self.serving = serving or ServingPolicy()
        needs_tta = None if self.serving.gate is None else self.serving.gate.needs_tta
        if device == "cpu" and files is not None and WEIGHTS not in files:
            self.passes, ran = _onnx_passes(spec, tta, directory, files, threads, needs_tta), tta
        else:
            self.passes, ran = _torch_passes(spec, tta, directory, files, threads, device, needs_tta)
        self.spec, self.tta, self.emit_plain = spec, ran, emit_plain  # rows record what ran
        self.exact_decode = exact_decode  # how the decode tasks were told to decode, recorded in the rows
        self.classes = np.array(spec.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch[col.PATH])
        errors = [str(e) for e in batch[col.ERROR]]
        ok = np.array([e == "" for e in errors], dtype=bool)
        probs = np.zeros((n, len(self.classes)), dtype=np.float32)
        plain = probs.copy()
        augmented = np.zeros(n, dtype=bool)
        if ok.any():
            probs[ok], plain[ok], augmented[ok] = self.passes(np.ascontiguousarray(batch[col.IMAGE][ok]))
            probs[ok] = served_probabilities(
                probs[ok], ~augmented[ok], self.serving.plain_temperature, self.serving.tta_temperature
            )
        best = probs.argmax(axis=1)
        columns = {
            col.PATH: pa.array([str(p) for p in batch[col.PATH]], pa.string()),
            col.LABEL: pa.array(self.classes[best], pa.string(), mask=~ok),
            col.CONFIDENCE: pa.array(probs.max(axis=1), pa.float32(), mask=~ok),
            col.PROBABILITIES: _prob_lists(probs, ok),
            col.CLASS_PROBABILITIES: _class_maps(self.spec.classes, probs, ok),
            col.DECISION: pa.array(decide(probs, self.classes, self.serving.decision), pa.string(), mask=~ok),
            col.CALIBRATED: pa.array([self.serving.calibrated] * n, pa.bool_()),
            col.ERROR: pa.array([e or None for e in errors], pa.string()),
            col.MODEL_ID: pa.array([self.spec.model_id] * n, pa.string()),
            col.MODEL_SHA256: pa.array([self.spec.model_sha256] * n, pa.string()),
            col.MODEL_REGISTRY_NAME: pa.array([self.spec.registry_name] * n, pa.string()),
            col.MODEL_REGISTRY_VERSION: pa.array([self.spec.registry_version] * n, pa.string()),
            **{k: pa.array([v] * n) for k, v in self.tta.as_columns().items()},  # tta_n ... tta_*_precision
            col.TTA_PASSES: pa.array(np.where(augmented, self.tta.n + 1, 1), pa.int16(), mask=~ok),
            col.EXACT_DECODE: pa.array([self.exact_decode] * n, pa.bool_()),
            col.SCORED_AT: pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("ms", tz="UTC")),
        }
        if self.emit_plain:
            columns[col.PLAIN_PROBABILITIES] = _prob_lists(plain, ok)
        return pa.table(columns)


def _prob_lists(probs: np.ndarray, ok: np.ndarray) -> pa.Array:
    return pa.array([p.tolist() if good else None for p, good in zip(probs, ok, strict=True)], pa.list_(pa.float32()))


def _class_maps(classes: list[str], probs: np.ndarray, ok: np.ndarray) -> pa.Array:
    """`class_probabilities`: class name -> probability per row, so a row reads without model.json. A
    map keeps one schema whatever a model's classes (a struct per class set would not: runs of two
    models could not share a dataset); DuckDB reads it as a MAP, Spark as a MapType, pandas as
    (class, probability) pairs."""
    return pa.array(
        [list(zip(classes, p.tolist(), strict=True)) if good else None for p, good in zip(probs, ok, strict=True)],
        pa.map_(pa.string(), pa.float32()),
    )


def _onnx_passes(
    spec: ModelSpec, tta: TTASettings, directory: Path, files: tuple[str, str], threads: int, needs_tta: RowGate
) -> Callable[[np.ndarray], TTAResult]:
    """TTA on a CPU actor with ONNX Runtime and the fused augmentation: no torch or fastai in the actor
    (their imports were ~10 s of each actor's start-up), one resampling per image and pass.
    `files`: the (plain, augmented) passes' ONNX files; `needs_tta`: adaptive TTA's gate."""
    plain, aug = files
    art = _verified_artifact(spec, directory, set(files))
    forwards = {name: onnx_forward(art.path(name), threads) for name in set(files)}
    augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]))

    def passes(images: np.ndarray) -> TTAResult:
        return tta_probabilities(
            forwards[plain], images, augment.plain, augment.augmented, tta, forwards[aug], needs_tta
        )

    return passes


def _torch_passes(
    spec: ModelSpec,
    tta: TTASettings,
    directory: Path,
    files: tuple[str, str] | None,
    threads: int,
    device_name: str,
    needs_tta: RowGate,
) -> tuple[Callable[[np.ndarray], TTAResult], TTASettings]:
    """TTA with eager PyTorch and fastai's own batch transforms on the model's device (GPU actors,
    --backend torch, --allow-pickle: `files` None); also the TTA settings as they ran (a GPU's own
    precision). `files`: the (plain, augmented) passes' artifact files; `needs_tta`: adaptive TTA's gate."""
    import torch

    device = torch.device(device_name)
    use_gpu = device.type == "cuda"
    dtype, ran = None, tta
    if use_gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(f"this model actor was planned for {device} (--gpus-per-actor) but sees no GPU")
        capability = torch.cuda.get_device_capability(device)
        dtype = gpu_autocast_dtype(capability)
        ran = ran_precisions(tta, gpu_precision(capability))
    torch.set_num_threads(threads)
    with fastai_on_cpu():
        if files is None:
            _, learn = pickle_learner(directory)
            transforms = list(learn.dls.after_batch.fs)
            forward = aug_forward = _torch_forward(learn.model, device, dtype)
        else:
            plain, aug = files
            art = _verified_artifact(spec, directory, set(files))
            forwards = {
                name: _torch_forward(load_torch_model(art), device, dtype)
                if name == WEIGHTS
                else onnx_forward(art.path(name), threads)
                for name in set(files)
            }
            transforms, forward, aug_forward = artifact_batch_transforms(art.meta), forwards[plain], forwards[aug]
    move_transform_tensors(transforms, device)  # also on CPU: a pickle may hold them on cuda
    plain_tfms, aug_tfms = fastai_passes(transforms)

    def passes(images: np.ndarray) -> TTAResult:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
        return tta_probabilities(forward, x, plain_tfms, aug_tfms, ran, aug_forward, needs_tta)

    return passes, ran


def _verified_artifact(spec: ModelSpec, directory: Path, files: set[str]) -> Artifact:
    """The artifact at `directory` with `files` sha-verified, refused when it is not the run's model."""
    art = open_artifact(directory, verify=files)
    if art.meta["model_sha256"] != spec.model_sha256 or art.classes != spec.classes:
        # an actor that (re)started later downloads the model again: a model republished at the same
        # URI meanwhile must not score rows that are recorded under the run's model id
        raise RuntimeError(
            f"the model at {spec.source} changed since this run started ({spec.model_id} -> "
            f"{art.meta['model_id']}); rerun to score with the new model"
        )
    return art
