"""Camera-size JPEGs from real photos, for the decode and scoring benches.

Traffic and dash cameras write 1920x1080 JPEGs; the repository's sample images are 64-320 px
renderings. This makes N camera-size JPEGs from the real photos scikit-learn ships
(`sklearn.datasets.load_sample_images`, no download): each a random 16:9 crop (30-100% of the
photo's width, anywhere in it, mirrored half of the time), scaled to the camera's size, with
random colour jitter (brightness, contrast, saturation), light sensor-like noise (the photos are
smaller than 1920x1080, so scaling alone would leave the file unnaturally smooth) and a random JPEG
quality of 80-95. Deterministic for a --seed. Labels are not needed: the benches compare two ways
of scoring the same files.

    .venv/bin/python bench/camera_jpegs.py OUT_DIR [--n 300] [--width 1920] [--height 1080] [--seed 0]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from sklearn.datasets import load_sample_images


def camera_frame(photo: Image.Image, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One random crop/scale/jitter of `photo` at width x height."""
    crop_w = int(photo.width * rng.uniform(0.3, 1.0))
    crop_h = min(photo.height, int(crop_w * height / width))
    crop_w = int(crop_h * width / height)
    x0, y0 = rng.integers(0, photo.width - crop_w + 1), rng.integers(0, photo.height - crop_h + 1)
    img = photo.crop((int(x0), int(y0), int(x0) + crop_w, int(y0) + crop_h)).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 4.0, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_camera_jpegs(out: Path, n: int, width: int = 1920, height: int = 1080, seed: int = 0) -> list[Path]:
    """N JPEGs named cam_00000.jpg... under `out` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    paths = []
    for i in range(n):
        path = out / f"cam_{i:05d}.jpg"
        frame = camera_frame(photos[i % len(photos)], rng, width, height)
        frame.save(path, "JPEG", quality=int(rng.integers(80, 96)))
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = write_camera_jpegs(args.out, args.n, args.width, args.height, args.seed)
    print(f"wrote {len(paths)} {args.width}x{args.height} JPEGs to {args.out}")


if __name__ == "__main__":
    main()
