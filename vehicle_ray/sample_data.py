"""Procedural stand-in for the emergency-vehicle dataset, in the seed's layout.

The real competition data cannot be downloaded here, so tests and the demo need images that make the
task learnable but not trivial: every image is a vehicle-like shape on a varied background at a random
position, scale and colour; emergency vehicles carry red/blue light bars and livery stripes, while
ordinary ones sometimes carry look-alike distractors (a grey roof rack, a single dull stripe).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from vehicle_ray.errors import InputError

FN_COL = "image_names"
LABEL_COL = "emergency_or_not"

_DULL = [(90, 90, 90), (140, 140, 140), (40, 40, 40), (200, 200, 190), (120, 100, 80)]


@dataclass(frozen=True)
class SampleCounts:
    train: int
    test: int


def _background(rng: random.Random, size: int) -> Image.Image:
    top = tuple(rng.randint(60, 230) for _ in range(3))
    bottom = tuple(rng.randint(20, 160) for _ in range(3))
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        t = y / max(size - 1, 1)
        draw.line([(0, y), (size, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    for _ in range(rng.randint(0, 4)):  # clutter: buildings, trees, signs
        x0, y0 = rng.randint(0, size), rng.randint(0, size // 2)
        w, h = rng.randint(size // 10, size // 3), rng.randint(size // 10, size // 2)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return img


def _vehicle(rng: random.Random, img: Image.Image, emergency: bool) -> None:
    size = img.width
    draw = ImageDraw.Draw(img)
    scale = rng.uniform(0.45, 0.8)
    w, h = int(size * scale), int(size * scale * rng.uniform(0.35, 0.5))
    x0 = rng.randint(0, size - w)
    y0 = rng.randint(size // 4, size - h - max(2, size // 12))
    body = (
        (rng.randint(180, 255),) * 3
        if emergency and rng.random() < 0.6
        else tuple(rng.randint(0, 255) for _ in range(3))
    )
    draw.rectangle([x0, y0 + h // 3, x0 + w, y0 + h], fill=body)
    cab_x0 = x0 + int(w * rng.uniform(0.1, 0.45))
    cab_x1 = cab_x0 + int(w * 0.45)
    draw.rectangle([cab_x0, y0, cab_x1, y0 + h // 3], fill=body)
    pad = 2 if h >= 12 else 1  # window inset, smaller on tiny images
    draw.rectangle([cab_x0 + pad, y0 + pad, cab_x1 - pad, max(y0 + pad, y0 + h // 3 - 1)], fill=(150, 190, 220))
    r = max(2, h // 5)
    for cx in (x0 + w // 5, x0 + 4 * w // 5):
        draw.ellipse([cx - r, y0 + h - r, cx + r, y0 + h + r], fill=(15, 15, 15))
    bar_h = max(3, h // 6)
    if emergency:
        mid = (cab_x0 + cab_x1) // 2
        left, right = ((255, 20, 20), (20, 60, 255)) if rng.random() < 0.5 else ((20, 60, 255), (255, 20, 20))
        draw.rectangle([cab_x0 + 1, y0 - bar_h, mid, y0], fill=left)
        draw.rectangle([mid, y0 - bar_h, cab_x1 - 1, y0], fill=right)
        if rng.random() < 0.7:  # livery: a checkered or bright stripe along the body
            stripe_y = y0 + h // 3 + (2 * h) // 5
            colours = [(255, 60, 0), (20, 60, 255), (255, 220, 0), (0, 160, 60)]
            a, b = rng.sample(colours, 2)
            step = max(2, w // 8)
            for i, sx in enumerate(range(x0, x0 + w, step)):
                draw.rectangle([sx, stripe_y, min(sx + step, x0 + w), stripe_y + bar_h], fill=a if i % 2 else b)
    else:
        if rng.random() < 0.3:  # roof rack: same place as a light bar, dull colour
            draw.rectangle([cab_x0 + 1, y0 - bar_h, cab_x1 - 1, y0], fill=rng.choice(_DULL))
        if rng.random() < 0.3:
            stripe_y = y0 + h // 3 + (2 * h) // 5
            draw.rectangle([x0, stripe_y, x0 + w, stripe_y + bar_h], fill=rng.choice(_DULL))


def render_image(seed: int, emergency: bool, size: int) -> Image.Image:
    """One deterministic image: the same (seed, emergency, size) always gives the same pixels."""
    rng = random.Random(seed)
    img = _background(rng, size)
    _vehicle(rng, img, emergency)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    return img


def write_sample_data(
    out: str | Path, train: int = 400, test: int = 100, size: int = 64, seed: int = 0
) -> SampleCounts:
    """Write OUT/train.csv, OUT/test.csv, OUT/test_labels.csv and OUT/images/*.jpg (the seed's layout).

    Labels follow the competition: 1 = emergency, 0 = not; about 40% emergency.
    """
    if train < 2 or test < 0 or size < 16:
        raise InputError("sample-data needs --train >= 2, --test >= 0 and --size >= 16")
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(train + test):
        label = 1 if rng.random() < 0.4 else 0
        if i < 2:  # both classes are always present, however small the set
            label = i
        name = f"{1000 + i}.jpg"
        render_image(rng.getrandbits(32), bool(label), size).save(images / name, quality=92)
        rows.append((name, label))
    df = pd.DataFrame(rows, columns=[FN_COL, LABEL_COL])
    df.iloc[:train].to_csv(out / "train.csv", index=False)
    df.iloc[train:][[FN_COL]].to_csv(out / "test.csv", index=False)
    df.iloc[train:].to_csv(out / "test_labels.csv", index=False)
    return SampleCounts(train=train, test=test)
