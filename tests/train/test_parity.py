"""Scaling out does not cost accuracy: the same real-image task trained by plain fastai in one process and
by vehicle-ray on 2 Ray Train workers, over several seeds."""

import statistics

import pytest

from bench.digits_task import digits_recipe, holdout_accuracy, plain_fastai, vehicle_ray, write_digits

# Six trainings: 16 minutes on 2 cores at a load average of 20-40 (other sessions' runs); the suite's 900 s
# default is too short for that.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

SEEDS = (1, 2, 3)
SIZE, EPOCHS = 16, 5  # px (the digits are 8x8 scans), epochs: bench/bench_parity.py's defaults
LEARNED = 0.9  # both sides must have learned the task, or comparing them means nothing
MARGIN = 0.01  # see the test's docstring


def test_two_workers_are_not_below_one_process_over_seeds(tmp_path, ray_local):
    """Mean holdout accuracy (400 digits never trained on) of vehicle-ray at 2 workers is at least plain
    fastai's mean minus MARGIN, over SEEDS (each seed: the validation split, the init, the shuffles).

    The margin: bench/bench_parity.py (BENCHMARKS.md, "Accuracy across worker counts") measured per-seed
    standard deviations of 0.0069 (plain fastai) and 0.0116 (2 workers) over 5 seeds, and over seeds 1-3
    means of 0.9758 and 0.9767. vehicle-ray's side is seeded end to end (split, init, each epoch's order,
    augmentation), so from one run of this test to the next it is plain fastai's mean that moves, through
    its unseeded shuffle: by about 0.0069 / sqrt(3) = 0.004, and MARGIN is 2.5 of those. One-sided,
    because the harm is lost accuracy (issue #27: `--bs` per worker, twice the global batch and half the
    optimizer steps, was below plain fastai on every seed); equality is proven exactly by the fast tests
    (each step's global batch is one process's, BatchNorm over the global batch).
    """
    data = write_digits(tmp_path / "digits", SIZE)
    plain, ray = [], []
    for seed in SEEDS:
        recipe = digits_recipe(seed, SIZE, EPOCHS)
        plain.append(holdout_accuracy(plain_fastai(data, recipe), data))
        ray.append(holdout_accuracy(vehicle_ray(data, recipe, 2, tmp_path / f"seed{seed}"), data))
    assert min(plain + ray) >= LEARNED, (plain, ray)
    assert statistics.mean(ray) >= statistics.mean(plain) - MARGIN, (plain, ray)
