"""The README's five-minute path works as printed: its marked code blocks run verbatim in a fresh
directory, the demo block with the installed `vehicle-ray`, the `ray job submit` block against a real
one-node cluster started for the test (the README tells users to start one with `ray start --head`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def readme_block(marker: str) -> str:
    """The ```bash block right after `<!-- marker: ... -->` in README.md."""
    match = re.search(rf"<!-- {marker}:.*?-->\n```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    assert match, f"README.md has no block marked {marker}"
    return match.group(1)


def run_block(block: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_blocks_are_found():
    assert "vehicle-ray demo" in readme_block("five-minute-path")
    assert "ray job submit" in readme_block("ray-job-submit")


@contextlib.contextmanager
def one_node_cluster() -> Iterator[str]:
    """`ray start --head --block` on free ports (every one: other clusters may run beside it) in its own
    process group (stopped by its pid, never `ray stop`, which would stop every Ray on the machine); yields
    the dashboard's address. Its temp dir is short: Ray's socket paths under a pytest tmp_path exceed the
    107 bytes a Unix socket path may have."""
    temp_dir = tempfile.mkdtemp(prefix="vr-head-")
    dashboard = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"PATH": f"{BIN}:{env.get('PATH', '')}", "RAY_AUTH_MODE": "token"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(free_port())]
        + ["--dashboard-port", str(dashboard), "--temp-dir", temp_dir, "--disable-usage-stats"]
        # the ports with fixed defaults (the job agent's 52365, Ray Client's 10001) may be another cluster's
        + ["--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and head.poll() is None:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:  # it answers (token authentication refuses anonymous calls)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the one-node cluster's dashboard did not come up")
        yield address
    finally:
        _stop(head, temp_dir)


def submit(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the submit block; again while the fresh cluster's dashboard has no job agent registered yet
    (HTTP 500 "No available agent", which comes back before anything was submitted)."""
    for _ in range(6):
        job = run_block(block, cwd, env, timeout=900)
        if job.returncode == 0 or "No available agent" not in job.stderr:
            return job
        time.sleep(10)
    return job


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGKILL to the head's process group: SIGTERM would first drain the node for 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_the_five_minute_path_runs_verbatim(tmp_path):
    """A new user's first commands, in a fresh directory holding only what a checkout gives the job
    (jobs/): the demo, three lines of pandas on its predictions, the same scoring as a Ray job."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"  # what `export PATH="$PWD/.venv/bin:$PATH"` gives in a checkout

    demo = run_block(readme_block("five-minute-path"), tmp_path, env, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo summary" in demo.stdout and "confidence" in demo.stdout  # the pandas lines printed a table
    scored = pd.read_parquet(tmp_path / "demo_output" / "scores" / "predictions")
    assert len(scored) == 100

    with one_node_cluster() as address:  # started now: the README starts it after the demo too
        job = submit(readme_block("ray-job-submit"), tmp_path, env | {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"})
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert re.search(r"Job '.*' succeeded", job.stdout + job.stderr)
    by_job = pd.read_parquet(tmp_path / "demo_output" / "job_scores" / "predictions")
    assert sorted(by_job["path"]) == sorted(scored["path"])
