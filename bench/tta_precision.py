"""How much the int8 augmented passes change TTA results, with the augmentation noise taken out.

Runs the scorer's own TTA on the same decoded images twice with the same random augmentations
(same seed): once with every pass on the fp32 ONNX model, once with every pass on the
artifact's int8 model (what `--tta-precision auto` runs on CPU). Prints label agreement and |dp|
between the two, and the same figures for two fp32 runs with different seeds (fastai-style TTA's own noise), for scale.

    .venv/bin/python bench/tta_precision.py MODEL_DIR IMAGE_DIR [--images 600] [--n 4]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from vehicle_ray.artifact import ONNX, ONNX_INT8, open_artifact
from vehicle_ray.score.augment import AugmentSpec, FusedAugment
from vehicle_ray.score.decode import decode_image
from vehicle_ray.score.predictor import onnx_forward
from vehicle_ray.tta import TTASettings, tta_probabilities


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Label agreement and |dp| between two (images, classes) probability arrays."""
    d = np.abs(a - b)
    return {
        "label_agreement": round(float((a.argmax(1) == b.argmax(1)).mean()), 4),
        "mean_abs_dp": round(float(d.mean()), 5),
        "max_abs_dp": round(float(d.max()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--images", dest="limit", type=int, default=600)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    art = open_artifact(args.model, verify=(ONNX, ONNX_INT8))
    fp32, int8 = onnx_forward(art.path(ONNX), args.threads), onnx_forward(art.path(ONNX_INT8), args.threads)
    settings = TTASettings(n=args.n, beta=art.meta["tta"]["beta"])
    files = sorted(Path(args.images).iterdir())[: args.limit]

    method = art.meta["input"]["resize_method"]
    decoded = [
        np.stack([decode_image(f.read_bytes(), art.size, method) for f in files[i : i + 64]])
        for i in range(0, len(files), 64)
    ]

    def run(seed: int, forward) -> np.ndarray:
        augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]), seed=seed)
        return np.concatenate(
            [tta_probabilities(forward, x, augment.plain, augment.augmented, settings)[0] for x in decoded]
        )

    reference = run(0, fp32)
    print(
        json.dumps(
            {
                "images": len(files),
                "tta_n": args.n,
                "int8_vs_fp32_same_augmentations": compare(run(0, int8), reference),
                "fp32_vs_fp32_other_augmentations": compare(run(1, fp32), reference),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
