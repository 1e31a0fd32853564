"""Model-only bounds for bench_score.py, on images decoded (and augmented) before the clock starts.

    forward_bound.py MODEL_DIR IMAGES THREADS                  eager fp32, 5 passes per image
    forward_bound.py MODEL_DIR IMAGES THREADS --int8 [--n 4]   the artifact's int8 ONNX model alone

--int8 is the bound for `vehicle-ray score`'s CPU default, which runs TTA's n+1 passes on
model.int8.onnx: the same ONNX Runtime session settings as the model actor (`onnx_forward`, THREADS
intra-op threads) and the same batch shapes (the plain pass on a batch, the n augmented passes as
one n-times larger batch), on batches that already went through the scorer's own plain and
augmented transforms (score/augment.py). Model time does not depend on the pixels, so at most MAX_BATCHES distinct
batches are prepared (bounded memory) and cycled over until every image has had its n+1 passes.
Prints one JSON line: seconds and ms per image per pass.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vehicle_ray.artifact import ONNX_INT8, open_artifact
from vehicle_ray.network import load_torch_model
from vehicle_ray.score.decode import decode_image

MAX_BATCHES = 4


def decoded_batches(art, files: list[Path], batch_size: int) -> list[torch.Tensor]:
    """uint8 NCHW batches, decoded as the scorer decodes."""
    method = art.meta["input"]["resize_method"]
    return [
        torch.from_numpy(np.stack([decode_image(f.read_bytes(), art.size, method) for f in files[i : i + batch_size]]))
        .permute(0, 3, 1, 2)
        .contiguous()
        for i in range(0, len(files), batch_size)
    ]


def eager_seconds(art, files: list[Path]) -> float:
    """The eager fp32 model's 5 forward passes over every image (batches of 64, normalised here)."""
    model = load_torch_model(art)
    norm = art.meta["input"]["normalize"]
    mean, std = torch.tensor(norm["mean"]).view(1, 3, 1, 1), torch.tensor(norm["std"]).view(1, 3, 1, 1)
    batches = [(b.float() / 255 - mean) / std for b in decoded_batches(art, files, 64)]
    with torch.inference_mode():
        model(batches[0])  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            for b in batches:
                model(b)
        return time.perf_counter() - t0


def int8_seconds(art, files: list[Path], threads: int, n: int, batch_size: int) -> float:
    """The int8 ONNX model's n+1 passes over every image, on pre-augmented batches."""
    from vehicle_ray.score.augment import AugmentSpec, FusedAugment
    from vehicle_ray.score.predictor import onnx_forward

    augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]))
    forward = onnx_forward(art.path(ONNX_INT8), threads)
    prepared = []
    for batch in decoded_batches(art, files[: MAX_BATCHES * batch_size], batch_size):
        images = batch.permute(0, 2, 3, 1).numpy()  # the actor's uint8 NHWC
        aug = np.concatenate([augment.augmented(images) for _ in range(n)]) if n else None
        prepared.append((augment.plain(images), aug))
    sizes = [len(files[i : i + batch_size]) for i in range(0, len(files), batch_size)]
    for batch in prepared[0]:  # warm-up: ONNX Runtime allocates on its first run of each shape
        if batch is not None:
            forward(batch)
    t0 = time.perf_counter()
    for k, size in enumerate(sizes):
        plain, aug = prepared[k % len(prepared)]
        forward(plain[:size])
        if aug is not None:
            forward(aug.reshape(n, -1, *aug.shape[1:])[:, :size].reshape(-1, *aug.shape[1:]))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("threads", type=int)
    ap.add_argument("--int8", action="store_true", help="the artifact's int8 ONNX model, TTA's n+1 passes")
    ap.add_argument("--n", type=int, default=4, help="augmented passes (with --int8)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    art = open_artifact(args.model)
    files = sorted(Path(args.images).iterdir())
    if args.int8:
        passes, seconds = args.n + 1, int8_seconds(art, files, args.threads, args.n, args.batch_size)
    else:
        passes, seconds = 5, eager_seconds(art, files)
    print(
        json.dumps(
            {
                "n": len(files),
                "passes": passes,
                "seconds": seconds,
                "ms_per_image_pass": 1000 * seconds / (passes * len(files)),
            }
        )
    )


if __name__ == "__main__":
    main()
