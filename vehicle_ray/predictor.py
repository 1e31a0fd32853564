"""The model side of scoring: what to load, on which backend, and the Ray Data actor that runs it.

Two sources: a vehicle_ray artifact (model.json + safetensors/ONNX, sha256-verified, never unpickled)
or, with --allow-pickle, any fastai export.pkl (its augmentation and input size come from the learner).
Backends: ONNX Runtime on CPU (about twice eager PyTorch's speed on CPU), eager PyTorch (bf16 autocast
on GPU, channels_last). On CPU, TTA's passes can run the artifact's static-int8 ONNX model (about twice
fp32 ONNX again); without TTA the plain pass always runs the full-precision model.

torch and fastai are imported inside the functions that use them: the driver pickles `Predictor` by
reference and reads ModelSpec, and would otherwise pay seconds of imports it never uses.
"""

from __future__ import annotations

import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from vehicle_ray.artifact import EXPORT_PKL, ONNX, ONNX_INT8, WEIGHTS, load_torch_model, open_artifact, sha256_file
from vehicle_ray.data import resolve_location
from vehicle_ray.errors import InputError
from vehicle_ray.tta import TTASettings, batch_pipelines, tta_probabilities

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class ModelSpec:
    """What the driver knows about the model before any actor starts (decode needs size and resize)."""

    source: str  # what the user passed: a local path, or a URI every actor downloads from
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


def _pickle_learner(directory: Path):
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


def local_model(model: str | Path) -> Path:
    """A local path as is; a URI (s3://bucket/models/x) is copied to a fresh local temp directory."""
    if "://" not in str(model):
        return Path(model)
    fs, base, info = resolve_location(model, "model")
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"model not found: {model}")
    target = Path(tempfile.mkdtemp(prefix="vehicle_ray_model_"))
    if info.type == pafs.FileType.File:
        pafs.copy_files(base, str(target / posixpath.basename(base)), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return target / posixpath.basename(base)
    pafs.copy_files(base, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def resolve_model(model: str | Path, allow_pickle: bool = False) -> ModelSpec:
    """Read (and verify) the model's description on the driver."""
    directory = local_model(model)
    if not directory.exists():
        raise InputError(f"model not found: {model}")
    if directory.is_dir() and (directory / "model.json").is_file():
        art = open_artifact(directory)
        tta = art.meta["tta"]
        return ModelSpec(source=str(model), directory=directory, allow_pickle=False, classes=art.classes, size=art.size,
                         resize_method=art.meta["input"]["resize_method"], model_id=art.meta["model_id"],
                         model_sha256=art.meta["model_sha256"], tta_defaults=TTASettings(tta["n"], tta["beta"]),
                         has_onnx=ONNX in art.meta["files"], has_int8=ONNX_INT8 in art.meta["files"])
    if not allow_pickle:
        raise InputError(f"{model} has no model.json; pass --allow-pickle to score a plain fastai export.pkl "
                         "(unpickling runs code from the file: only for models you trust)")
    path, learn = _pickle_learner(directory)
    size, method = _learner_resize(learn)
    sha = sha256_file(path)
    return ModelSpec(source=str(model), directory=path, allow_pickle=True, classes=[str(c) for c in learn.dls.vocab], size=size,
                     resize_method=method, model_id=f"fastai-export-{sha[:12]}", model_sha256=sha,
                     tta_defaults=TTASettings(), has_onnx=False)


def onnx_forward(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits = forward(normalised NCHW float batch) on an ONNX Runtime CPU session of `path`."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"image": np.ascontiguousarray(x.numpy(), dtype=np.float32)})
        return torch.from_numpy(logits)

    return forward


def _torch_forward(model: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    import torch

    model = model.eval().to(device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return model(torch.as_tensor(x)).float().cpu()

    return forward


class Predictor:
    """Ray Data actor: loads the model once, then turns decoded batches into prediction rows."""

    def __init__(self, spec: ModelSpec, tta: TTASettings, backend: str = "auto", threads: int = 1,
                 emit_plain: bool = False):
        import torch

        use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(threads)
        directory = spec.directory if spec.directory.exists() else local_model(spec.source)
        if spec.allow_pickle:
            _, learn = _pickle_learner(directory)
            transforms = list(learn.dls.after_batch.fs)
            self.forward = self.aug_forward = _torch_forward(learn.model, self.device)
        else:
            transforms, self.forward, self.aug_forward = _artifact_forwards(spec, tta, directory, backend, use_gpu,
                                                                            threads, self.device)
        if self.device.type == "cuda":
            for t in transforms:
                if hasattr(t, "to"):
                    t.to(self.device)
        self.plain, self.aug = batch_pipelines(transforms)
        self.spec, self.tta, self.emit_plain = spec, tta, emit_plain
        self.classes = np.array(spec.classes, dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["path"])
        errors = [str(e) for e in batch["error"]]
        ok = np.array([e == "" for e in errors], dtype=bool)
        probs = np.zeros((n, len(self.classes)), dtype=np.float32)
        plain = probs.copy()
        if ok.any():
            import torch

            images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok])).permute(0, 3, 1, 2).to(self.device)
            blended, plain_pass = tta_probabilities(self.forward, images, self.plain, self.aug, self.tta,
                                                      self.aug_forward)
            probs[ok], plain[ok] = blended.cpu().numpy(), plain_pass.cpu().numpy()
        best = probs.argmax(axis=1)
        columns = {
            "path": pa.array([str(p) for p in batch["path"]], pa.string()),
            "label": pa.array(self.classes[best], pa.string(), mask=~ok),
            "confidence": pa.array(probs.max(axis=1), pa.float32(), mask=~ok),
            "probabilities": _prob_lists(probs, ok),
            "error": pa.array([e or None for e in errors], pa.string()),
            "model_id": pa.array([self.spec.model_id] * n, pa.string()),
            "model_sha256": pa.array([self.spec.model_sha256] * n, pa.string()),
            **{k: pa.array([v] * n) for k, v in self.tta.as_columns().items()},
        }
        if self.emit_plain:
            columns["plain_probabilities"] = _prob_lists(plain, ok)
        return pa.table(columns)


def _prob_lists(probs: np.ndarray, ok: np.ndarray) -> pa.Array:
    return pa.array([p.tolist() if good else None for p, good in zip(probs, ok)], pa.list_(pa.float32()))


def pass_files(spec: ModelSpec, tta: TTASettings, backend: str, use_gpu: bool) -> tuple[str, str]:
    """(plain-pass file, augmented-pass file): the artifact files the model actors load, so the driver
    can verify them before any actor starts and each actor loads and verifies only those."""
    use_onnx = backend == "onnx" or (backend == "auto" and not use_gpu and spec.has_onnx)
    if use_onnx and not spec.has_onnx:
        raise InputError(f"--backend onnx: {spec.source} has no {ONNX}")
    full = ONNX if use_onnx else WEIGHTS
    return (ONNX_INT8 if tta.plain_precision == "int8" else full,
            ONNX_INT8 if tta.aug_precision == "int8" else full)


def _artifact_forwards(spec: ModelSpec, tta: TTASettings, directory: Path, backend: str, use_gpu: bool,
                       threads: int, device: torch.device) -> tuple[list, Callable, Callable]:
    """(batch transforms, plain-pass forward, augmented-pass forward) of a sha-verified artifact."""
    plain, aug = pass_files(spec, tta, backend, use_gpu)
    art = open_artifact(directory, verify={plain, aug})
    forwards = {name: _torch_forward(load_torch_model(art), device) if name == WEIGHTS
                else onnx_forward(art.path(name), threads) for name in {plain, aug}}
    return artifact_batch_transforms(art.meta), forwards[plain], forwards[aug]


def artifact_batch_transforms(meta: dict[str, Any]) -> list:
    """The training batch transforms recorded in model.json: IntToFloatTensor, fastai augs, Normalize."""
    from fastai.data.transforms import IntToFloatTensor

    from vehicle_ray.learner import augment_transforms
    from vehicle_ray.recipe import recipe_from_dict

    return [IntToFloatTensor(), *augment_transforms(recipe_from_dict(meta["recipe"], "model.json"))]

