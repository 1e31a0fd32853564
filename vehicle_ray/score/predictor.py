"""The Ray Data model actor and its backends: ONNX Runtime on CPU (about twice eager PyTorch's speed on
CPU; on CPU, TTA's passes can run the artifact's static-int8 ONNX model, about twice fp32 ONNX again)
and eager PyTorch (bf16 autocast on GPU, channels_last). Without TTA the plain pass always runs the
full-precision model.

torch and fastai are imported inside the functions that use them: the driver pickles `Predictor` by
reference and would otherwise pay seconds of imports it never uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from vehicle_ray.artifact import WEIGHTS, load_torch_model, open_artifact
from vehicle_ray.score.model import ModelSpec, local_model, pass_files, pickle_learner
from vehicle_ray.score.tta import TTASettings, batch_pipelines, tta_probabilities

if TYPE_CHECKING:
    import torch


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

    def __init__(
        self, spec: ModelSpec, tta: TTASettings, backend: str = "auto", threads: int = 1, emit_plain: bool = False
    ):
        import torch

        use_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        torch.set_num_threads(threads)
        directory = spec.directory if spec.directory.exists() else local_model(spec.source)
        if spec.allow_pickle:
            _, learn = pickle_learner(directory)
            transforms = list(learn.dls.after_batch.fs)
            self.forward = self.aug_forward = _torch_forward(learn.model, self.device)
        else:
            transforms, self.forward, self.aug_forward = _artifact_forwards(
                spec, tta, directory, backend, use_gpu, threads, self.device
            )
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
            blended, plain_pass = tta_probabilities(
                self.forward, images, self.plain, self.aug, self.tta, self.aug_forward
            )
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
    return pa.array([p.tolist() if good else None for p, good in zip(probs, ok, strict=True)], pa.list_(pa.float32()))


def _artifact_forwards(
    spec: ModelSpec, tta: TTASettings, directory: Path, backend: str, use_gpu: bool, threads: int, device: torch.device
) -> tuple[list, Callable, Callable]:
    """(batch transforms, plain-pass forward, augmented-pass forward) of a sha-verified artifact."""
    plain, aug = pass_files(spec, tta, backend, use_gpu)
    art = open_artifact(directory, verify={plain, aug})
    forwards = {
        name: _torch_forward(load_torch_model(art), device)
        if name == WEIGHTS
        else onnx_forward(art.path(name), threads)
        for name in {plain, aug}
    }
    return artifact_batch_transforms(art.meta), forwards[plain], forwards[aug]


def artifact_batch_transforms(meta: dict[str, Any]) -> list:
    """The training batch transforms recorded in model.json: IntToFloatTensor, fastai augs, Normalize."""
    from fastai.data.transforms import IntToFloatTensor

    from vehicle_ray.recipe import recipe_from_dict
    from vehicle_ray.train.learner import augment_transforms

    return [IntToFloatTensor(), *augment_transforms(recipe_from_dict(meta["recipe"], "model.json"))]
