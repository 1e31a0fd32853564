"""The "forward bound" for bench_score.py: only the model's eager fp32 forward passes that TTA with
n=4 needs (5 per image), on batches decoded and normalised before the clock starts."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vehicle_ray.artifact import load_torch_model, open_artifact
from vehicle_ray.score.decode import decode_image


def main(model_dir: str, images: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    art = open_artifact(model_dir)
    model = load_torch_model(art)
    files = sorted(Path(images).iterdir())
    size = art.size
    arr = np.stack([decode_image(f.read_bytes(), size) for f in files])
    norm = art.meta["input"]["normalize"]
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    batches = list(torch.split(x, 64))
    with torch.inference_mode():
        model(batches[0])  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            for b in batches:
                model(b)
        seconds = time.perf_counter() - t0
    print(json.dumps({"n": len(files), "seconds": seconds, "ms_per_image_pass": 1000 * seconds / (5 * len(files))}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
