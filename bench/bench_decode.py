"""Camera-size JPEGs: reduced-scale decode (the scorer's default) against the full decode (--exact-decode).

1. Decode time: `decode_image` over every file, exact and reduced, each timed --repeats times in
   this one process (one thread, as a decode task runs; the files' bytes are read before the clock
   starts); medians, ms per image and the speed-up.
   Beside them, the floor under any reduced decode of these files: libjpeg's decode alone (Pillow
   `draft`, no resize, no RGB/array work) at the scale the reduced decode uses and at 1/8, the
   smallest, where the entropy decoding that no DCT scaling shrinks is nearly all that is left;
   `max_speedup_at_reduced_scale` is the full decode's time over the reduced-scale decode alone.
2. What it changes in the scores: the scorer's own TTA (`tta_probabilities`, the passes on the
   artifact's int8 ONNX model as `--tta-precision auto` runs them on CPU) on the same files decoded
   both ways, with the same random augmentations (same seed), so only the decode differs:
   label agreement and |dp|. For scale, TTA's own noise: the exact decode scored twice with two
   different seeds. The reduced decode passes when its figures stay within that noise.

The files are bench/camera_jpegs.py's (made here unless --jpegs names a directory); the model is a
resnet18 artifact at --size trained briefly on generated data (bench_score.make_model) unless
--model names one.

    .venv/bin/python bench/bench_decode.py [--n 300] [--size 224] [--repeats 3] [--jpegs DIR] [--model DIR]
"""

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_score import make_model
from camera_jpegs import write_camera_jpegs
from PIL import Image
from tta_precision import compare

from vehicle_ray.artifact import ONNX_INT8, open_artifact
from vehicle_ray.score.augment import AugmentSpec, FusedAugment
from vehicle_ray.score.decode import decode_image, reduce_on_decode
from vehicle_ray.score.predictor import onnx_forward
from vehicle_ray.tta import TTASettings, tta_probabilities


def decode_all(data: list[bytes], size: int, method: str, exact: bool) -> tuple[np.ndarray, float]:
    """(N, size, size, 3) uint8 images and the seconds their decoding took."""
    t0 = time.perf_counter()
    images = np.stack([decode_image(d, size, method, exact=exact) for d in data])
    return images, time.perf_counter() - t0


def decode_times(data: list[bytes], size: int, method: str, repeats: int) -> dict:
    """Median ms per image of the exact and the reduced decode, timed in turn, and the speed-up."""
    seconds: dict[str, list[float]] = {"exact": [], "reduced": []}
    for _ in range(repeats):
        for mode in seconds:
            seconds[mode].append(decode_all(data, size, method, exact=mode == "exact")[1])
    ms = {mode: 1000 * statistics.median(s) / len(data) for mode, s in seconds.items()}
    return {
        "ms_per_image": {mode: round(v, 2) for mode, v in ms.items()},
        "per_repeat_s": {mode: [round(v, 2) for v in s] for mode, s in seconds.items()},
        "speedup": round(ms["exact"] / ms["reduced"], 2),
    }


def draft_decode_ms(data: list[bytes], size: int, repeats: int) -> dict:
    """Median ms per image of libjpeg's decode alone at the scale `reduce_on_decode` picks and at 1/8."""

    def decode(d: bytes, scale: int | None) -> None:
        img = Image.open(io.BytesIO(d))
        if scale is None:
            reduce_on_decode(img, size)
        else:
            img.draft("RGB", (img.width // scale, img.height // scale))
        img.load()

    seconds: dict[str, list[float]] = {"reduced_scale_alone": [], "eighth_scale_alone": []}
    for _ in range(repeats):
        for mode, scale in (("reduced_scale_alone", None), ("eighth_scale_alone", 8)):
            t0 = time.perf_counter()
            for d in data:
                decode(d, scale)
            seconds[mode].append(time.perf_counter() - t0)
    return {mode: round(1000 * statistics.median(s) / len(data), 2) for mode, s in seconds.items()}


def tta_scores(art, images: np.ndarray, seed: int, threads: int, n: int) -> np.ndarray:
    """The scorer's TTA probabilities for decoded images, every pass on the int8 model, seeded."""
    augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]), seed=seed)
    forward = onnx_forward(art.path(ONNX_INT8), threads)
    settings = TTASettings(n=n, beta=art.meta["tta"]["beta"])
    batches = [images[i : i + 64] for i in range(0, len(images), 64)]
    return np.concatenate(
        [tta_probabilities(forward, x, augment.plain, augment.augmented, settings)[0] for x in batches]
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300, help="JPEGs to make (without --jpegs)")
    ap.add_argument("--size", type=int, default=224, help="model input (without --model)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (the actors' count)")
    ap.add_argument("--tta-n", type=int, default=4)
    ap.add_argument("--jpegs", type=Path, help="a directory of JPEGs to use instead of making --n")
    ap.add_argument("--model", type=Path, help="a model artifact to use instead of training one")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    if args.model is None:
        make_model(work, args.size)
    art = open_artifact(args.model or work / "model", verify={ONNX_INT8})
    files = sorted(args.jpegs.glob("*.jp*g")) if args.jpegs else write_camera_jpegs(work / "jpegs", args.n)
    data = [f.read_bytes() for f in files]
    method = art.meta["input"]["resize_method"]
    timing = decode_times(data, art.size, method, args.repeats)
    floor = draft_decode_ms(data, art.size, args.repeats)
    floor["max_speedup_at_reduced_scale"] = round(timing["ms_per_image"]["exact"] / floor["reduced_scale_alone"], 2)
    timing["floor_ms_per_image"] = floor
    exact, reduced = (decode_all(data, art.size, method, exact=e)[0] for e in (True, False))
    reference = tta_scores(art, exact, 0, args.threads, args.tta_n)
    result = {
        "images": len(files),
        "first_source_size": list(Image.open(io.BytesIO(data[0])).size),
        "model_size": art.size,
        "decode": timing,
        "pixels_mean_abs_diff": round(float(np.abs(exact.astype(int) - reduced).mean()), 3),
        "tta_n": args.tta_n,
        "reduced_vs_exact_same_augmentations": compare(
            tta_scores(art, reduced, 0, args.threads, args.tta_n), reference
        ),
        "exact_vs_exact_other_augmentations": compare(tta_scores(art, exact, 1, args.threads, args.tta_n), reference),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
