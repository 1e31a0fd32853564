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

A read that fails with a transient error (timeouts, throttling, 5xx, a reset or refused connection:
`is_transient`) is tried again after a jittered exponential backoff, within a per-batch budget; if it
still fails, its row carries a TRANSIENT message, and the store defers it (store.py: not done, not an
error; the next --incremental run scores it) instead of recording a permanent error. A file that
reads but cannot be decoded is a permanent error, as is a missing or forbidden one. Every error
message starts with one of ERROR_KINDS' prefixes, so `error_kind` can name its kind, also for rows
written before the kind was recorded (--retry-errors selects by kind).
"""

from __future__ import annotations

import errno
import io
import random
import re
import time
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vehicle_ray import columns as col
from vehicle_ray.data import ImageRoot
from vehicle_ray.score.options import DEFAULT_MAX_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
REDUCED_DECODE_MIN_FACTOR = 2  # a reduced-scale decode keeps at least 2x the model input on each side


# pyarrow's S3 client already retries a retryable error (throttling, 5xx, connection) every 200 ms for
# about 6 s before it raises (measured here against moto behind a 503 proxy: 31 requests in 6.0 s), so
# one of our tries is one such window on S3. Three tries with 1 s and 2 s (jittered) between them ride
# out a throttling burst of ~20 s; a longer outage is the next night's business (the file is deferred).
READ_TRIES = 3
BACKOFF_BASE_S = 1.0  # the wait before try k+1 is within [d/2, d], d = BACKOFF_BASE_S * 2**(k-1) ...
BACKOFF_CAP_S = 8.0  # ... capped here ("equal jitter": never a thundering herd of zero waits)
# The time one decode batch may lose to transient failures (failed tries and waits). In an outage every
# file fails: without this a 64-file batch would spend 64 x 3 windows; past it, a file gets one try.
BATCH_RETRY_BUDGET_S = 60.0

# Error messages and their kinds: every message written to errors/ starts with one of these prefixes.
TRANSIENT = "transient read error"  # still failing after the retries: deferred, never an errors/ row
ERROR_KINDS: dict[str, str] = {
    "empty file": "empty",
    "image too large": "too_large",
    "not an image": "not_image",
    "corrupt or truncated image": "corrupt",
    "file not found": "not_found",
    "cannot read file": "read",
    TRANSIENT: "transient",
}
OTHER_KIND = "other"

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EAGAIN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.ESTALE,  # an NFS handle gone stale under a remount
    }
)
# Words of transient failures in the messages of pyarrow's S3/GCS/Azure clients and of HTTP: throttling
# (SlowDown, 429, RESOURCE_EXHAUSTED, ServerBusy), timeouts (curl 28, RequestTimeout, 408,
# DEADLINE_EXCEEDED), a lost connection (curl 7/52/56, NETWORK_CONNECTION) and 5xx server errors.
_TRANSIENT_WORDS = re.compile(
    r"slow[ _]?down|throttl|too[ _]many[ _]requests|request[ _]?time[ _]?out|timed?[ _]?out|deadline[ _]exceeded"
    r"|resource[ _]exhausted|server[ _]?busy|connection[ _](?:reset|refused|aborted|closed)|broken[ _]pipe"
    r"|could ?n[o']t connect|network[ _]connection|empty reply|recv failure|send failure"
    r"|unavailable|internal[ _]?(?:error|failure)|bad[ _]gateway|temporarily|try again"
    r"|(?:status|code)[^0-9]{0,12}(?:5\d\d|408|429)\b",
    re.IGNORECASE,
)
# ... unless the message says the object is missing or forbidden: retrying cannot help those.
_PERMANENT_WORDS = re.compile(
    r"no ?such ?(?:key|bucket|file)|not found|access ?denied|forbidden|permission|"
    r"(?:status|code)[^0-9]{0,12}(?:40[0-7]|409|41\d)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # object keys and bucket names: never read as words


class DecodeError(Exception):
    """One file that cannot be scored; the message becomes its row in errors/."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed read may succeed if tried again: a timeout, throttling, a server-side (5xx)
    error or a lost connection. A missing or forbidden file, and anything unknown, are permanent."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    message = _QUOTED.sub("", str(exc))
    return bool(_TRANSIENT_WORDS.search(message)) and not _PERMANENT_WORDS.search(message)


def error_kind(message: str) -> str:
    """The kind of an error message of decode_batch ("corrupt", "read", ...; OTHER_KIND if unknown)."""
    for prefix, kind in ERROR_KINDS.items():
        if message.startswith(prefix):
            return kind
    return OTHER_KIND


def backoff_s(tries: int, uniform=random.uniform) -> float:
    """The wait after the `tries`-th failed try: equal jitter over a doubling, capped delay."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (tries - 1))
    return delay / 2 + uniform(0, delay / 2)


class RetryBudget:
    """Seconds one decode batch may still lose to transient failures (BATCH_RETRY_BUDGET_S)."""

    def __init__(self, seconds: float = BATCH_RETRY_BUDGET_S):
        self.left = seconds

    def spend(self, seconds: float) -> None:
        self.left -= seconds


def read_file(root: ImageRoot, rel: str, budget: RetryBudget | None = None, tries: int = READ_TRIES) -> bytes:
    """The bytes of one file; a transient failure is tried again (up to `tries` times, while `budget`
    lasts) after backoff_s. DecodeError with a TRANSIENT message when it still fails; other OSErrors
    (missing, forbidden, unknown) raise at once, as before."""
    budget = budget if budget is not None else RetryBudget()
    for attempt in range(1, tries + 1):
        started = time.monotonic()
        try:
            with root.fs.open_input_file(root.path(rel)) as f:
                return f.read()
        except OSError as exc:
            if not is_transient(exc):
                raise
            budget.spend(time.monotonic() - started)
            wait = backoff_s(attempt)
            if attempt == tries or budget.left < wait:
                raise DecodeError(f"{TRANSIENT} ({attempt} {'try' if attempt == 1 else 'tries'}): {exc}") from exc
            budget.spend(wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


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
    a reason; OK rows an empty string (a column of all-None would not survive Arrow as strings).
    Transient read failures are retried within one RetryBudget per batch (read_file)."""
    n = len(batch[col.PATH])
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    errors = [""] * n
    budget = RetryBudget()
    for i, rel in enumerate(batch[col.REL]):
        try:
            data = read_file(root, str(rel), budget)
            images[i] = decode_image(data, size, resize_method, max_pixels, exact)
        except DecodeError as exc:
            errors[i] = str(exc)
        except FileNotFoundError:
            errors[i] = "file not found"
        except OSError as exc:
            errors[i] = f"cannot read file: {exc}"
    return {col.PATH: batch[col.PATH], col.IMAGE: images, col.ERROR: np.array(errors, dtype=object)}
