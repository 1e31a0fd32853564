"""The fused TTA augmentation (score/augment.py) against fastai's own transforms given the same draws,
and its draws against the distributions fastai draws from."""

import math

import numpy as np
import pytest
import torch
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorImage
from fastai.vision.augment import Brightness, Contrast, Dihedral, Flip, Rotate, Warp, Zoom, setup_aug_tfms
from fastai.vision.core import imagenet_stats
from fasttransform import Pipeline

from vehicle_ray.score.augment import P_AFFINE, P_LIGHTING, AugmentSpec, Draws, FusedAugment, draw

SPEC = AugmentSpec(do_flip=True, flip_vert=True, max_rotate=50, max_zoom=1.3, max_warp=0.2, max_lighting=0.3)


def smooth_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images of smooth colour waves: bilinear resampling of them differs from fastai's
    float resampling by the uint8 rounding only, so any larger difference is a wrong transform."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    waves = [
        0.5 + 0.25 * np.sin(2 * np.pi * fx * xx + px) + 0.25 * np.cos(2 * np.pi * fy * yy + py)
        for fx, fy, px, py in rng.uniform([1, 1, 0, 0], [4, 4, 6, 6], (n * 3, 4))
    ]
    return (np.stack(waves).reshape(n, 3, height, width).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def fastai_reference(images: np.ndarray, d: Draws, spec: AugmentSpec) -> np.ndarray:
    """fastai's aug_transforms chain with p=1 and `d` as its draws (the neutral draws stand for "not drawn")."""

    def values(a):
        return [float(v) for v in a]

    tfms = setup_aug_tfms(
        [
            Dihedral(p=1.0, draw=values(d.dihedral)) if spec.flip_vert else Flip(p=1.0, draw=values(d.dihedral)),
            Warp(spec.max_warp, p=1.0, draw_x=values(d.warp_x), draw_y=values(d.warp_y)),
            Rotate(spec.max_rotate, p=1.0, draw=values(d.rotate)),
            Zoom(1.0, spec.max_zoom, p=1.0, draw=values(d.zoom), draw_x=values(d.zoom_col), draw_y=values(d.zoom_row)),
            Brightness(spec.max_lighting, p=1.0, draw=values(d.brightness)),
            Contrast(spec.max_lighting, p=1.0, draw=values(d.contrast)),
        ]
    )
    pipe = Pipeline([IntToFloatTensor(), *tfms, Normalize.from_stats(*imagenet_stats, cuda=False)], split_idx=0)
    return pipe(TensorImage(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()


def explicit_draws(n: int, seed: int) -> Draws:
    rng = np.random.default_rng(seed)
    return Draws(
        dihedral=rng.integers(0, 8, n),
        rotate=rng.uniform(-50, 50, n),
        zoom=rng.uniform(1, 1.3, n),
        zoom_col=rng.uniform(0, 1, n),
        zoom_row=rng.uniform(0, 1, n),
        warp_x=rng.uniform(-0.2, 0.2, n),
        warp_y=rng.uniform(-0.2, 0.2, n),
        brightness=rng.uniform(0.35, 0.65, n),
        contrast=np.exp(rng.uniform(math.log(0.7), -math.log(0.7), n)),
    )


@pytest.mark.parametrize("height, width", [(32, 32), (48, 64)])
def test_fused_pass_is_fastais_augmentation_up_to_uint8_rounding(height, width):
    images = smooth_images(16, height, width)
    d = explicit_draws(16, seed=height)
    ours, ref = FusedAugment(SPEC).apply(images, d), fastai_reference(images, d, SPEC)
    assert ours.shape == ref.shape == (16, 3, height, width) and ours.dtype == np.float32
    # half a uint8 step is 0.5/255/0.225 = 0.0087 after Normalize: the mean error is rounding's
    assert np.abs(ours - ref).mean() < 0.006
    assert np.abs(ours - ref).max() < 0.06


def test_flip_only_recipes_use_fastais_flip_and_neutral_draws_are_the_identity():
    spec = AugmentSpec(do_flip=True, flip_vert=False, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    images = smooth_images(8, 32, 32, seed=1)
    d = draw(spec, 8, np.random.default_rng(0))
    assert set(d.dihedral) <= {0, 1} and not d.rotate.any() and (d.zoom == 1).all() and (d.contrast == 1).all()
    ours = FusedAugment(spec).apply(images, d)
    plain = FusedAugment(spec).plain(images)
    flipped = d.dihedral == 1
    assert np.array_equal(ours[~flipped], plain[~flipped])
    assert np.array_equal(ours[flipped], plain[flipped][..., ::-1])


def test_plain_pass_is_fastais_valid_pipeline():
    images = smooth_images(4, 32, 32, seed=2)
    pipe = Pipeline([IntToFloatTensor(), Normalize.from_stats(*imagenet_stats, cuda=False)], split_idx=1)
    ref = pipe(TensorImage(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(FusedAugment(SPEC).plain(images), ref, atol=1e-6)


def test_draws_follow_fastais_distributions_and_probabilities():
    n = 40_000
    d = draw(SPEC, n, np.random.default_rng(5))
    # Dihedral(p=0.5) over 8 elements, element 0 the identity
    assert abs((d.dihedral == 0).mean() - (0.5 + 0.5 / 8)) < 0.01 and set(d.dihedral) == set(range(8))
    for drawn, p in [(d.rotate != 0, P_AFFINE), (d.zoom != 1, P_AFFINE), (d.warp_x != 0, P_AFFINE)]:
        assert abs(drawn.mean() - p) < 0.01
    assert abs((d.brightness != 0.5).mean() - P_LIGHTING) < 0.01 and abs((d.contrast != 1).mean() - P_LIGHTING) < 0.01
    assert np.abs(d.rotate).max() <= 50 and d.zoom.max() <= 1.3 and np.abs(d.warp_y).max() <= 0.2
    assert 0.35 <= d.brightness.min() and d.brightness.max() <= 0.65
    assert 0.7 <= d.contrast.min() and d.contrast.max() <= 1 / 0.7
