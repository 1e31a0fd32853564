"""Shared fixtures: real sample data on disk and one real local Ray cluster per test session."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from vehicle_ray.sample_data import write_sample_data

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# "The model learned", for a `tiny_cpu` model trained on the sample data: accuracy on its 80 validation or
# 100 test images (40% positive, so 0.6 is the majority-class rate). From-scratch training on 320 images
# lands in a spread that depends on the seed, and any change in the order of random draws moves the seeded
# run to another point of it: `bench/tiny_recipe_seeds.py /tmp/seeds --seeds 42,1,2,3,4,5` gave validation
# 0.8875-1.0 and test accuracy with TTA 0.87-0.97 (median 0.96). A bound of 0.9 failed CI on a correct
# change (test accuracy 0.88 and 0.89, the seeded run at the recipe's former lr 0.01).
LEARNED_ACCURACY = 0.85


# Ray forwards its own processes' log lines to the driver's stderr, colour-prefixed with the process name:
# the raylet's "over 95% full" disk warning on a crowded CI disk, the placement-group cleaner's ConnectionError
# beside other Ray instances. They are Ray's, not ours; the one-line error contract is about the rest.
_RAY_PROCESS_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|PlacementGroupCleaner|autoscaler|monitor)\b")


def our_stderr(stderr: str) -> str:
    """`stderr` without the lines Ray's own processes forwarded into it."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not _RAY_PROCESS_LINE.match(line))


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
def s3_server(tmp_path_factory):
    """moto's standalone S3-compatible server on loopback, for real pyarrow S3 traffic.

    Ready means moto answers HTTP, not merely that the port accepts connections: with a Ray session in
    this process its workers take ports from the same ephemeral range, so a free port can be taken
    before moto binds it (moto then exits, and another attempt gets a new port)."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _moto_ready(proc, port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("moto's S3 server did not start")
    yield {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # models scored from s3:// are cached per node: in the test's own directory, not ~/.cache
        "VEHICLE_RAY_MODEL_CACHE": str(tmp_path_factory.mktemp("model_cache")),
    }
    proc.terminate()
    proc.wait(timeout=10)


def _moto_ready(proc: subprocess.Popen, port: int, timeout: float = 60) -> bool:
    """True once the moto process on `port` answers an S3 ListBuckets; False if it exits or never does."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if b"ListAllMyBucketsResult" in r.read():
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def run_cluster_script(script: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a `ray.cluster_utils.Cluster` script in a fresh interpreter, away from any RAY_ADDRESS
    (its simulated nodes, not a cluster the caller may be joined to)."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `vehicle-ray ARGS` in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "vehicle_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def trained_model(ray_local, sample_dir, tmp_path_factory) -> Path:
    """One real 2-worker Ray Train run of the tiny CPU recipe; scoring and evaluation tests reuse it.
    Class "1" (emergency) is the positive class, with an operating point for recall 0.95."""
    from vehicle_ray.decision import OperatingTarget
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.driver import train

    out = tmp_path_factory.mktemp("trained") / "model"
    train(
        TrainOptions(
            csv=sample_dir / "train.csv",
            images=sample_dir / "images",
            out=out,
            workers=2,
            storage_path=str(tmp_path_factory.mktemp("ray_runs")),
            target=OperatingTarget("1", target_recall=0.95),
        ),
        load_recipe("tiny_cpu"),
    )
    return out


@dataclass
class MlflowServer:
    """A real `mlflow server` (SQLite backend store, local artifact store under `root`) on loopback."""

    root: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> bool:
        """Start (or restart, on the same port and stores) in its own process group; True once /health answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}"]
            + ["--artifacts-destination", str(self.root / "artifacts")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        return _http_ok(self.proc, f"{self.uri}/health")

    def stop(self) -> None:
        """Stop the server and the workers it spawned: its own process group, by its pid."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` for one test, which may stop and restart it; retried on another port should
    Ray's workers take the first one (as for s3_server)."""
    pytest.importorskip("mlflow", reason="the tests of the mlflow extra need the dev extra")
    server = MlflowServer(root=tmp_path / "mlflow")
    server.root.mkdir()
    for _ in range(3):
        server.port = free_port()
        if server.start():
            break
        server.stop()
    else:
        pytest.fail("mlflow server did not start")
    yield server
    server.stop()


def _http_ok(proc: subprocess.Popen, url: str, timeout: float = 90) -> bool:
    """True once `url` answers 200; False if the process exits or it never does."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False
