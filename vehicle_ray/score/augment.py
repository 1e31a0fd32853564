"""fastai's training augmentation (`aug_transforms` + Normalize) for TTA, fused: one resampling and one
table lookup per image and pass, on the decoded uint8 images, in NumPy and OpenCV (no torch).

fastai runs each augmented pass as separate float steps over the whole batch: IntToFloatTensor, an
affine grid + `grid_sample` (flip/dihedral, rotate, zoom composed into one matrix, the perspective warp
applied to that grid), lighting in logit space, Normalize. Per image and pass that is ~4 ms on one CPU
core at 224 px (a profiled scoring run: ~17 ms per image for TTA's 4 passes), more than the int8
model's own ~4 ms. Here the same draws, from the same distributions, become:

* one 3x3 homography per image, src = warp(affine(dst)) in fastai's normalised coordinates, mapped to
  pixels as `grid_sample(align_corners=True)` maps them and resampled by OpenCV bilinearly with
  reflection about the border pixels' centres (BORDER_REFLECT_101 is `padding_mode="reflection"`
  with align_corners=True) — on uint8, so the only difference is rounding to 1/255;
* lighting, IntToFloat and Normalize folded into one 256-entry table per image and channel, since
  each is a function of the pixel value alone: v -> (sigmoid((logit(v/255) + logit(b)) * c) - mean) / std.

Measured at 224 px on one core of the development machine: 0.56 ms per image and augmented pass
(warpAffine ~0.4, the lookup ~0.13), 0.17 ms for the plain pass; fastai's ~4 ms per pass.

`tests/score/test_augment.py` checks the fused result against fastai's own transforms given the same
draws; the scoring tests check TTA against `learn.tta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# aug_transforms' defaults that the recipe does not change (fastai 2.8)
P_AFFINE = 0.75
P_LIGHTING = 0.75
MIN_ZOOM = 1.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # fastai's imagenet_stats
IMAGENET_STD = (0.229, 0.224, 0.225)
_LOGIT_EPS = 1e-7  # fastai.torch_core.logit clamps to [eps, 1 - eps]

# fastai's dihedral_mat: index -> (xs, ys, m0, m1); 0 is the identity, 1 the horizontal flip (Flip)
_DIHEDRAL = np.array(
    [[1, -1, 1, -1, -1, 1, 1, -1], [1, 1, -1, 1, -1, -1, 1, -1], [1, 1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 1, 1, 1]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class AugmentSpec:
    """The recipe's augmentation knobs, as fastai's `aug_transforms` reads them."""

    do_flip: bool = True
    flip_vert: bool = False
    max_rotate: float = 10.0
    max_zoom: float = 1.1
    max_warp: float = 0.2
    max_lighting: float = 0.2
    normalize: bool = True  # imagenet stats

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> AugmentSpec:
        """From model.json's `recipe` (the keys of vehicle_ray.recipe.Recipe)."""
        return cls(
            do_flip=bool(recipe["do_flip"]),
            flip_vert=bool(recipe["flip_vert"]),
            max_rotate=float(recipe["max_rotate"]),
            max_zoom=float(recipe["max_zoom"]),
            max_warp=float(recipe["max_warp"]),
            max_lighting=float(recipe["max_lighting"]),
            normalize=recipe["normalize"] == "imagenet",
        )


@dataclass(frozen=True)
class Draws:
    """One pass's random parameters, one entry per image; the neutral value where a transform was not
    drawn (fastai's `_draw_mask`): dihedral 0, rotate 0, zoom 1, warp 0, brightness 0.5, contrast 1."""

    dihedral: np.ndarray  # int, 0..7 (Flip: 0 or 1)
    rotate: np.ndarray  # degrees
    zoom: np.ndarray  # >= 1
    zoom_col: np.ndarray  # zoom centre, 0..1
    zoom_row: np.ndarray
    warp_x: np.ndarray
    warp_y: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray


def draw(spec: AugmentSpec, n: int, rng: np.random.Generator) -> Draws:
    """Random parameters for `n` images, from the distributions and probabilities fastai draws them."""

    def masked(values: np.ndarray, p: float, neutral: float) -> np.ndarray:
        return np.where(rng.random(n) < p, values, neutral)

    if not spec.do_flip:
        dihedral = np.zeros(n, dtype=np.int64)
    elif spec.flip_vert:  # Dihedral(p=0.5)
        dihedral = masked(rng.integers(0, 8, n), 0.5, 0).astype(np.int64)
    else:  # Flip(p=0.5)
        dihedral = masked(np.ones(n), 0.5, 0).astype(np.int64)
    ones, zeros = np.ones(n), np.zeros(n)
    zooming = MIN_ZOOM < spec.max_zoom
    lighting = spec.max_lighting
    return Draws(
        dihedral=dihedral,
        rotate=masked(rng.uniform(-spec.max_rotate, spec.max_rotate, n), P_AFFINE, 0) if spec.max_rotate else zeros,
        zoom=masked(rng.uniform(MIN_ZOOM, spec.max_zoom, n), P_AFFINE, 1) if zooming else ones,
        zoom_col=rng.uniform(0, 1, n) if zooming else ones / 2,
        zoom_row=rng.uniform(0, 1, n) if zooming else ones / 2,
        warp_x=masked(rng.uniform(-spec.max_warp, spec.max_warp, n), P_AFFINE, 0) if spec.max_warp else zeros,
        warp_y=masked(rng.uniform(-spec.max_warp, spec.max_warp, n), P_AFFINE, 0) if spec.max_warp else zeros,
        brightness=masked(rng.uniform(0.5 * (1 - lighting), 0.5 * (1 + lighting), n), P_LIGHTING, 0.5)
        if lighting
        else ones / 2,
        contrast=masked(np.exp(rng.uniform(math.log(1 - lighting), -math.log(1 - lighting), n)), P_LIGHTING, 1)
        if lighting
        else ones,
    )


def homographies(d: Draws, height: int, width: int) -> np.ndarray:
    """(n, 3, 3) source-from-destination maps in fastai's normalised coordinates ([-1, 1], x first):
    affine = dihedral @ rotate @ zoom (AffineCoordTfm's product, `_prepare_mat`'s aspect correction),
    then the perspective warp of the affine grid (`_WarpCoord`): src = warp(affine(dst))."""
    n = len(d.dihedral)
    xs, ys, m0, m1 = (_DIHEDRAL[k][d.dihedral] for k in range(4))
    dihedral = _affine(xs * m0, xs * m1, 0 * xs, ys * m1, ys * m0, 0 * xs)
    theta = np.deg2rad(d.rotate)
    rotate = _affine(np.cos(theta), np.sin(theta), 0 * theta, -np.sin(theta), np.cos(theta), 0 * theta)
    s = 1 / d.zoom
    zoom = _affine(s, 0 * s, (1 - s) * (2 * d.zoom_col - 1), 0 * s, s, (1 - s) * (2 * d.zoom_row - 1))
    affine = dihedral @ rotate @ zoom
    affine[:, 0, 1] *= height / width
    affine[:, 1, 0] *= width / height
    return _warps(d.warp_x, d.warp_y, n) @ affine


def _affine(a, b, c, d, e, f) -> np.ndarray:
    m = np.zeros((len(a), 3, 3))
    m[:, 0], m[:, 1], m[:, 2, 2] = np.stack([a, b, c], 1), np.stack([d, e, f], 1), 1
    return m


def _warps(x_t: np.ndarray, y_t: np.ndarray, n: int) -> np.ndarray:
    """fastai's `find_coeffs(orig_pts, targ_pts)`: the homography taking the moved corners back to the corners."""
    orig = np.broadcast_to(np.array([[-1.0, -1], [-1, 1], [1, -1], [1, 1]]), (n, 4, 2))
    targ = np.stack(
        [
            np.stack([-1 - y_t, -1 - x_t], 1),
            np.stack([-1 + y_t, 1 + x_t], 1),
            np.stack([1 + y_t, -1 + x_t], 1),
            np.stack([1 - y_t, 1 - x_t], 1),
        ],
        1,
    )
    rows = []
    for i in range(4):
        (px, py), (qx, qy) = orig[:, i].T, targ[:, i].T
        one, zero = np.ones(n), np.zeros(n)
        rows.append(np.stack([qx, qy, one, zero, zero, zero, -px * qx, -px * qy], 1))
        rows.append(np.stack([zero, zero, zero, qx, qy, one, -py * qx, -py * qy], 1))
    coeffs = np.linalg.solve(np.stack(rows, 1), orig.reshape(n, 8, 1))[..., 0]
    return np.concatenate([coeffs, np.ones((n, 1))], 1).reshape(n, 3, 3)


def lookup_tables(d: Draws, normalize: bool) -> np.ndarray:
    """(n, 3, 256) float32: pixel value -> lighting (logit space: + logit(brightness), * contrast; fastai's
    Brightness then Contrast), then Normalize; the identity lighting where neither was drawn."""
    x = np.clip(np.arange(256) / 255.0, _LOGIT_EPS, 1 - _LOGIT_EPS)
    logits = np.log(x / (1 - x))[None, :]
    shift = np.log(d.brightness / (1 - d.brightness))[:, None]
    return _normalized(1 / (1 + np.exp(-(logits + shift) * d.contrast[:, None])), normalize)


def _normalized(values: np.ndarray, normalize: bool) -> np.ndarray:
    """(n, 256) values in [0, 1] -> (n, 3, 256) float32 per channel, after Normalize when `normalize`."""
    tables = np.repeat(values[:, None, :], 3, axis=1)
    if normalize:
        tables = (tables - np.array(IMAGENET_MEAN)[None, :, None]) / np.array(IMAGENET_STD)[None, :, None]
    return tables.astype(np.float32)


class FusedAugment:
    """TTA's batch transforms on uint8 NHWC images, returning the model's float32 NCHW input."""

    def __init__(self, spec: AugmentSpec, seed: int | None = None):
        import cv2

        cv2.setNumThreads(1)  # one small image at a time: OpenCV's own thread pool only adds hand-offs
        self.spec, self.rng = spec, np.random.default_rng(seed)
        self._plain_table = _normalized(np.arange(256)[None, :] / 255.0, spec.normalize)[0]

    def plain(self, images: np.ndarray) -> np.ndarray:
        """The plain pass: IntToFloat + Normalize (fastai's valid-split pipeline)."""
        out = np.empty((len(images), 3, *images.shape[1:3]), dtype=np.float32)
        for image, planes in zip(images, out, strict=True):
            _apply_table(image, self._plain_table, planes)
        return out

    def augmented(self, images: np.ndarray) -> np.ndarray:
        """One augmented pass with fresh draws (fastai's train-split pipeline)."""
        return self.apply(images, draw(self.spec, len(images), self.rng))

    def apply(self, images: np.ndarray, d: Draws) -> np.ndarray:
        import cv2

        n, height, width = images.shape[:3]
        w, h = (width - 1) / 2, (height - 1) / 2  # align_corners=True: -1 and 1 are the border pixels' centres
        to_pixels = np.array([[w, 0, w], [0, h, h], [0, 0, 1]])
        maps = to_pixels @ homographies(d, height, width) @ np.linalg.inv(to_pixels)
        # no lighting in the recipe: fastai has no LightingTfm then (its neutral one is not quite the identity)
        tables = lookup_tables(d, self.spec.normalize) if self.spec.max_lighting else [self._plain_table] * n
        out = np.empty((n, 3, height, width), dtype=np.float32)
        flags, border = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, cv2.BORDER_REFLECT_101
        for i, (image, m) in enumerate(zip(images, maps, strict=True)):
            if np.allclose(m, np.eye(3), atol=1e-9):
                warped = image
            elif np.allclose(m[2], (0, 0, 1), atol=1e-12):
                warped = cv2.warpAffine(image, m[:2], (width, height), flags=flags, borderMode=border)
            else:
                warped = cv2.warpPerspective(image, m, (width, height), flags=flags, borderMode=border)
            _apply_table(warped, tables[i], out[i])
        return out


def _apply_table(image: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """uint8 HWC -> float32 CHW `out` through one 256-entry table per channel: OpenCV's LUT per plane,
    ~0.13 ms at 224 px where NumPy's fancy indexing of the strided channels took ~1.1 ms."""
    import cv2

    for c, plane in enumerate(cv2.split(image)):
        cv2.LUT(plane, table[c].reshape(256, 1), dst=out[c])
