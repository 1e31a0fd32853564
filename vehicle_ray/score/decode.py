"""Bytes → model-sized RGB uint8 arrays, once per image, with a reason for every file that fails.

Runs in Ray Data CPU tasks. Decoding is Pillow's; what we add is the guard rails a nightly job over
millions of files needs: EXIF orientation, every mode to RGB (16-bit and float scaled, not clipped),
a pixel limit against decompression bombs, and a per-file error instead of a crashed run.

Camera-size JPEGs (1920x1080 from traffic and dash cameras) are decoded at reduced scale unless
`exact` is set: libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 of the size for a fraction of a
full decode's cost, as far as both sides stay at least REDUCED_DECODE_MIN_FACTOR times the model
input; the same bilinear resize fastai's Resize uses then makes the model-sized image, so the
model sees it at the quality fastai users expect (measured against the full decode:
bench/bench_decode.py). Smaller JPEGs and other formats are always decoded in full.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vehicle_ray.data import ImageRoot
from vehicle_ray.score.options import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
REDUCED_DECODE_MIN_FACTOR = 2  # a reduced-scale decode keeps at least 2x the model input on each side


class DecodeError(Exception):
    """One file that cannot be scored; the message becomes its row in errors/."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGB")  # Pillow composites nothing: transparent areas keep their colour
    return img if img.mode == "RGB" else img.convert("RGB")


def reduce_on_decode(img: Image.Image, size: int) -> None:
    """Ask a JPEG to decode at the smallest DCT scale (1/2, 1/4, 1/8) whose both sides stay at least
    REDUCED_DECODE_MIN_FACTOR x `size` (Pillow's `draft`: it picks no reduction for smaller images).
    Other formats have no scaled decode and are left alone."""
    if img.format == "JPEG":
        img.draft("RGB", (REDUCED_DECODE_MIN_FACTOR * size, REDUCED_DECODE_MIN_FACTOR * size))


def decode_image(
    data: bytes,
    size: int,
    resize_method: str = "squish",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exact: bool = False,
) -> np.ndarray:
    """Decode one encoded image to a (size, size, 3) uint8 array as fastai's Resize would see it;
    a large JPEG at reduced scale first unless `exact` (see the module's docstring)."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    # Pillow's own bomb guard (a warning above 89.5 Mpx, an error above twice that) follows this
    # process-wide setting; aligned with --max-pixels so that the flag, not Pillow's default, decides.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise DecodeError(f"image too large: {img.width}x{img.height} exceeds the {max_pixels}-pixel limit")
            if not exact:
                reduce_on_decode(img, size)
            img.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"image too large: {exc}") from exc
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised or unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from exc
    img = _to_rgb(ImageOps.exif_transpose(img))
    if resize_method == "crop":
        img = ImageOps.fit(img, (size, size), method=Image.BILINEAR)
    else:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_batch(
    batch: dict[str, np.ndarray],
    root: ImageRoot,
    size: int,
    resize_method: str,
    max_pixels: int,
    exact: bool = False,
) -> dict[str, Any]:
    """Ray Data map_batches UDF: {path, rel} → {path, image, error}. Error rows carry a zero image and
    a reason; OK rows an empty string (a column of all-None would not survive Arrow as strings)."""
    n = len(batch["path"])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    errors = [""] * n
    for i, rel in enumerate(batch["rel"]):
        try:
            with root.fs.open_input_file(root.path(str(rel))) as f:
                data = f.read()
            images[i] = decode_image(data, size, resize_method, max_pixels, exact)
        except DecodeError as exc:
            errors[i] = str(exc)
        except FileNotFoundError:
            errors[i] = "file not found"
        except OSError as exc:
            errors[i] = f"cannot read file: {exc}"
    return {"path": batch["path"], "image": images, "error": np.array(errors, dtype=object)}
