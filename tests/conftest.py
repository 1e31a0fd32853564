"""Shared fixtures: real sample data on disk and one real local Ray cluster per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vehicle_ray.sample_data import write_sample_data

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """400 training + 100 test images at 64 px: the data every end-to-end test shares."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_data(out, train=400, test=100, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A real embedded Ray cluster with this machine's 2 CPUs, shared by the session's tests."""
    import ray

    from vehicle_ray.cluster import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `vehicle-ray ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "vehicle_ray.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def trained_model(ray_local, sample_dir, tmp_path_factory) -> Path:
    """One real 2-worker Ray Train run of the tiny CPU recipe; scoring and evaluation tests reuse it."""
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.driver import train

    out = tmp_path_factory.mktemp("trained") / "model"
    train(TrainOptions(csv=sample_dir / "train.csv", images=sample_dir / "images", out=out, workers=2,
                       storage_path=str(tmp_path_factory.mktemp("ray_runs"))), load_recipe("tiny_cpu"))
    return out
