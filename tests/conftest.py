"""Shared fixtures: real sample data on disk and one real local Ray cluster per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    """moto's standalone S3-compatible server on loopback, for real pyarrow S3 traffic."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    yield env
    proc.terminate()
    proc.wait(timeout=10)


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
