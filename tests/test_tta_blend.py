"""TTA's blend (tta.py tta_probabilities) with a fixed fake model and hand-made pipelines.

The invariants are fastai's Learner.tta semantics: n=0 is the plain pass; otherwise the n augmented
passes are averaged (or maxed) and blended as beta*plain + (1-beta)*aug (use_max: elementwise max of
plain and aug); `aug_forward` runs the augmented passes only. The model is a fixed linear map of the
per-channel means of each image half, so a horizontal flip changes its output.
"""

import numpy as np
import pytest
import torch

from vehicle_ray.tta import TTASettings, tta_probabilities

W = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 4


def forward(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    w = x.shape[-1] // 2
    return torch.cat([x[..., :w].mean(dim=(2, 3)), x[..., w:].mean(dim=(2, 3))], dim=1) @ W


def plain_tfms(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).float() / 255


class Cycle:
    """The augmented pipeline: pass i applies the i-th of a fixed list of augmentations (and counts)."""

    def __init__(self):
        self.calls = 0
        self.augs = [lambda x: x.flip(-1), lambda x: x * 0.5, lambda x: x.flip(-2) * 1.5, lambda x: x]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        aug = self.augs[self.calls % len(self.augs)]
        self.calls += 1
        return aug(plain_tfms(x))


def tta(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """tta_probabilities, whose results are float32 NumPy arrays whatever the model's tensors are."""
    probs, plain, _ = tta_probabilities(*args, **kwargs)
    assert isinstance(probs, np.ndarray) and probs.dtype == plain.dtype == np.float32
    return torch.from_numpy(probs), torch.from_numpy(plain)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def expected(images: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain probabilities, stacked augmented probabilities of the n passes), computed directly."""
    cycle = Cycle()
    plain = torch.softmax(forward(plain_tfms(images)), -1)
    return plain, torch.stack([torch.softmax(forward(cycle(images)), -1) for _ in range(n)])


def test_no_augmented_pass_is_the_plain_pass(images):
    aug = Cycle()
    probs, plain = tta(forward, images, plain_tfms, aug, TTASettings(n=0, beta=0.25))
    want = torch.softmax(forward(plain_tfms(images)), -1)
    assert torch.allclose(probs, want) and torch.equal(probs, plain)
    assert aug.calls == 0


@pytest.mark.parametrize("n, beta", [(1, 0.25), (4, 0.25), (3, 0.6), (4, 0.0), (4, 1.0)])
def test_mean_blend_is_beta_plain_plus_rest_augmented_mean(images, n, beta):
    probs, plain = tta(forward, images, plain_tfms, Cycle(), TTASettings(n=n, beta=beta))
    want_plain, passes = expected(images, n)
    assert torch.allclose(plain, want_plain, atol=1e-6)
    assert torch.allclose(probs, beta * want_plain + (1 - beta) * passes.mean(0), atol=1e-6)
    assert probs.shape == (len(images), 3) and torch.allclose(probs.sum(-1), torch.ones(len(images)))


def test_beta_one_is_plain_and_beta_zero_is_the_augmented_mean(images):
    plain, passes = expected(images, 4)
    one, _ = tta(forward, images, plain_tfms, Cycle(), TTASettings(n=4, beta=1.0))
    zero, _ = tta(forward, images, plain_tfms, Cycle(), TTASettings(n=4, beta=0.0))
    assert torch.allclose(one, plain, atol=1e-6) and torch.allclose(zero, passes.mean(0), atol=1e-6)
    assert not torch.allclose(one, zero, atol=1e-3)  # the augmentations really change the output


def test_use_max_is_the_elementwise_max_of_plain_and_every_pass(images):
    probs, _ = tta(forward, images, plain_tfms, Cycle(), TTASettings(n=4, beta=0.25, use_max=True))
    plain, passes = expected(images, 4)
    assert torch.allclose(probs, torch.maximum(plain, passes.max(0).values), atol=1e-6)
    mean, _ = tta(forward, images, plain_tfms, Cycle(), TTASettings(n=4, beta=0.25))
    assert not torch.allclose(probs, mean, atol=1e-3)


def test_aug_forward_runs_the_augmented_passes_only(images):
    calls = {"plain": [], "aug": []}

    def plain_model(x):
        calls["plain"].append(len(x))
        return forward(x)

    def aug_model(x):
        calls["aug"].append(len(x))
        return forward(x)[:, [2, 1, 0]] * 2  # a different model, e.g. the int8 one

    n, beta = 3, 0.25
    probs, plain = tta(plain_model, images, plain_tfms, Cycle(), TTASettings(n=n, beta=beta), aug_model)
    assert calls == {"plain": [len(images)], "aug": [n * len(images)]}  # n passes as one batch
    want_plain = torch.softmax(forward(plain_tfms(images)), -1)
    cycle = Cycle()
    aug = torch.stack([torch.softmax(forward(cycle(images))[:, [2, 1, 0]] * 2, -1) for _ in range(n)]).mean(0)
    assert torch.allclose(plain, want_plain, atol=1e-6)
    assert torch.allclose(probs, beta * want_plain + (1 - beta) * aug, atol=1e-6)


def test_numpy_passes_blend_the_same_as_torch_ones(images):
    """The fused CPU path hands NumPy batches and a NumPy-returning model to the same blend."""
    settings = TTASettings(n=4, beta=0.25)
    want, want_plain = tta(forward, images, plain_tfms, Cycle(), settings)
    cycle = Cycle()
    got, got_plain = tta(
        lambda x: forward(torch.from_numpy(x)).numpy(),
        images.numpy(),
        lambda x: plain_tfms(torch.from_numpy(x)).numpy(),
        lambda x: cycle(torch.from_numpy(x)).numpy(),
        settings,
    )
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_plain, want_plain, atol=1e-6)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_adaptive_rows_get_full_tta_and_the_rest_keep_the_plain_pass(images, as_numpy):
    """`needs_tta` picks rows from the plain pass: only those go through the n augmented passes (one
    forward batch of n x rows), and they get exactly full TTA's blend; the others the plain pass."""
    settings = TTASettings(n=4, beta=0.25)
    full, plain = tta(forward, images, plain_tfms, Cycle(), settings)
    rows = np.array([True, False, True, False, False])
    sizes = []

    def counted(x):
        sizes.append(len(x))
        return forward(torch.as_tensor(x)) if not as_numpy else forward(torch.from_numpy(x)).numpy()

    cycle = Cycle()
    batch = images.numpy() if as_numpy else images
    to_numpy = (lambda f: lambda x: f(torch.from_numpy(x)).numpy()) if as_numpy else (lambda f: f)
    got = tta_probabilities(counted, batch, to_numpy(plain_tfms), to_numpy(cycle), settings, needs_tta=lambda p: rows)
    assert sizes == [len(images), settings.n * int(rows.sum())]
    assert got.augmented.tolist() == rows.tolist()
    assert torch.allclose(torch.from_numpy(got.probs[rows]), full[rows], atol=1e-6)
    assert torch.equal(torch.from_numpy(got.probs[~rows]), plain[~rows])
    assert torch.equal(torch.from_numpy(got.plain), plain)


def test_adaptive_with_no_row_below_the_gate_runs_no_augmented_pass(images):
    cycle = Cycle()
    got = tta_probabilities(forward, images, plain_tfms, cycle, TTASettings(n=4), needs_tta=lambda p: p[:, 0] > 2)
    assert cycle.calls == 0 and not got.augmented.any() and np.array_equal(got.probs, got.plain)
