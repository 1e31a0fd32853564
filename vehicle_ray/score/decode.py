"""Bytes → model-sized RGB uint8 arrays, once per image, with a reason for every file that fails.

Runs in Ray Data CPU tasks. Decoding is Pillow's; what we add is the guard rails a nightly job over
millions of files needs: EXIF orientation, every mode to RGB (16-bit and float scaled, not clipped),
a pixel limit against decompression bombs, and a per-file error instead of a crashed run.
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


def decode_image(
    data: bytes, size: int, resize_method: str = "squish", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode one encoded image to a (size, size, 3) uint8 array as fastai's Resize would see it."""
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
    batch: dict[str, np.ndarray], root: ImageRoot, size: int, resize_method: str, max_pixels: int
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
            images[i] = decode_image(data, size, resize_method, max_pixels)
        except DecodeError as exc:
            errors[i] = str(exc)
        except FileNotFoundError:
            errors[i] = "file not found"
        except OSError as exc:
            errors[i] = f"cannot read file: {exc}"
    return {"path": batch["path"], "image": images, "error": np.array(errors, dtype=object)}
