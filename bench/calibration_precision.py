"""Calibration fitted in fp32, served in another precision: how far apart (issue #26).

model.json's temperature is fitted on fp32 probabilities (training's validation TTA pass runs the fp32
model), but CPU actors serve TTA from the int8 ONNX model and GPU actors from bf16 or fp16 autocast. On
the same labeled images with the same augmentations, this runs scoring's TTA with every pass in each
precision, fits a temperature on each, and compares what the fp32 temperature does to each precision's
probabilities against that precision's own fit: NLL and ECE, and the temperatures themselves.

bf16 and fp16 run as CPU autocast here (no GPU): the same rounding of convolution inputs and weights as
a GPU's autocast, with CPU kernels' accumulation, so a stand-in for the GPU numbers, not a GPU figure.

    .venv/bin/python bench/calibration_precision.py MODEL_DIR LABELED_CSV IMAGE_DIR [--n 4] [--images 600]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from vehicle_ray.artifact import ONNX, ONNX_INT8, open_artifact
from vehicle_ray.calibration import apply_temperature, ece, fit_temperature, nll
from vehicle_ray.network import load_torch_model
from vehicle_ray.score.augment import AugmentSpec, FusedAugment
from vehicle_ray.score.decode import decode_image
from vehicle_ray.score.predictor import onnx_forward
from vehicle_ray.tta import TTASettings, tta_probabilities


def autocast_forward(model: torch.nn.Module, dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """logits = forward(normalised NCHW batch) under CPU autocast to `dtype`, channels_last as GPU actors run."""
    model = model.eval().to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.autocast("cpu", dtype=dtype):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            return model(x.contiguous(memory_format=torch.channels_last)).float().numpy()

    return forward


def scores(probs: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, float]:
    calibrated = apply_temperature(probs, temperature)
    return {"nll": round(nll(calibrated, targets), 5), "ece": round(ece(calibrated, targets), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("csv", help="labeled CSV: file names in the first column, labels in the second")
    ap.add_argument("images")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--images", dest="limit", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    art = open_artifact(args.model, verify=(ONNX, ONNX_INT8))
    labeled = pd.read_csv(args.csv, dtype=str).head(args.limit)
    targets = labeled.iloc[:, 1].map({c: i for i, c in enumerate(art.classes)}).to_numpy()
    method = art.meta["input"]["resize_method"]
    files = [Path(args.images) / name for name in labeled.iloc[:, 0]]
    decoded = [
        np.stack([decode_image(f.read_bytes(), art.size, method) for f in files[i : i + 64]])
        for i in range(0, len(files), 64)
    ]
    model = load_torch_model(art)
    forwards = {
        "fp32": onnx_forward(art.path(ONNX), args.threads),
        "int8": onnx_forward(art.path(ONNX_INT8), args.threads),  # CPU actors' TTA (--tta-precision auto)
        "bf16": autocast_forward(model, torch.bfloat16),  # GPU actors from compute capability 8.0
        "fp16": autocast_forward(model, torch.float16),  # GPU actors below it (T4, V100)
    }
    settings = TTASettings(n=args.n, beta=art.meta["tta"]["beta"])

    def run(forward) -> np.ndarray:  # the same augmentations (seed 0) for every precision
        augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]), seed=0)
        return np.concatenate(
            [tta_probabilities(forward, x, augment.plain, augment.augmented, settings)[0] for x in decoded]
        )

    probs = {name: run(forward) for name, forward in forwards.items()}
    fitted_fp32 = fit_temperature(probs["fp32"], targets)
    report = {"images": len(files), "tta_n": args.n, "temperature_fitted_in_fp32": round(fitted_fp32, 4)}
    for name, p in probs.items():
        own = fit_temperature(p, targets)
        report[name] = {
            "own_temperature": round(own, 4),
            "mean_abs_dp_vs_fp32": round(float(np.abs(p - probs["fp32"]).mean()), 5),
            "with_fp32_temperature": scores(p, targets, fitted_fp32),
            "with_own_temperature": scores(p, targets, own),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
