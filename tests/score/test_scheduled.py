"""Scheduled scoring as cron runs it: chunk commits that survive a SIGKILL, overlapping runs on one
output (local and on the moto S3 server), and a reader that never sees an uncommitted row.
Real CLI processes with their own embedded Ray, real Parquet, real S3 protocol."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import run_cli
from vehicle_ray.score.options import ScoreOptions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHUNK = 40
N_FILES = 300


@pytest.fixture
def dump(sample_dir, tmp_path) -> Path:
    out = tmp_path / "dump"
    out.mkdir()
    for f in sorted((sample_dir / "images").glob("*.jpg"))[:N_FILES]:
        shutil.copy(f, out / f.name)
    return out


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`vehicle-ray ARGS` in its own process group (its embedded Ray included), output to a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "vehicle_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def chunk_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in out.glob("_runs/*/chunk-*.json")]


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def read_out(out: Path, kind: str = "predictions") -> pd.DataFrame:
    files = list((out / kind).rglob("*.parquet")) if (out / kind).exists() else []
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame(columns=["path"])


def score_args(model: Path, dump: Path, out) -> list[str]:
    return [
        "score",
        "--model",
        str(model),
        "--input",
        str(dump),
        "--output",
        str(out),
        "--incremental",
        "--commit-every",
        str(CHUNK),
        "--batch-size",
        "8",
        "--tta-n",
        "2",
        "--progress-interval",
        "2",
        "--in-process-up-to",  # the embedded Ray's pipeline: a run long enough to kill and overlap
        "0",
    ]


def test_killed_run_keeps_its_committed_chunks(trained_model, dump, tmp_path):
    out = tmp_path / "out"
    run = start(*score_args(trained_model, dump, out))
    wait_for(lambda: len(chunk_records(out)) >= 2 or run.poll() is not None, what="two chunk commits")
    os.killpg(run.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-run
    run.wait()
    log = run.stdout.read()
    committed = {r["index"]: r["predictions"] + r["errors"] for r in chunk_records(out)}
    assert len(committed) >= 2 and all(n == CHUNK for n in committed.values()), log[-3000:]
    assert not list(out.glob("_runs/*.json"))  # the killed run never finished
    visible = read_out(out)
    assert len(visible) == sum(committed.values())  # what a reader sees is exactly the committed chunks

    r = run_cli(*score_args(trained_model, dump, out))  # takes over the dead run's lease at once
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    remainder = N_FILES - sum(committed.values())
    assert f"scored {remainder} of {remainder} files (0 errors, {N_FILES - remainder} skipped" in r.stdout, r.stdout
    assert "took over the lease of run" in r.stdout and "its process is gone" in r.stdout
    predictions = read_out(out)
    assert len(predictions) == N_FILES and predictions["path"].is_unique
    assert set(predictions["path"]) == {str(p) for p in dump.iterdir()}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overlapping_runs_never_score_a_file_twice(trained_model, dump, tmp_path, s3_server, monkeypatch, where):
    env = {}
    if where == "s3":
        import boto3

        for key, value in s3_server.items():
            monkeypatch.setenv(key, value)
        env = s3_server
        boto3.client("s3").create_bucket(Bucket="scores")
        out = "s3://scores/nightly"
    else:
        out = tmp_path / "out"
    first = start(*score_args(trained_model, dump, out), env=env)
    lease_seen = []

    def lease_held() -> bool:
        if where == "local":
            lease_seen.append((out / "_lease.json").exists())
        else:
            import boto3

            keys = boto3.client("s3").list_objects_v2(Bucket="scores", Prefix="nightly/_lease").get("KeyCount", 0)
            lease_seen.append(keys > 0)
        return lease_seen[-1] or first.poll() is not None

    wait_for(lease_held, what="the first run's lease")
    busy = run_cli(*score_args(trained_model, dump, out), "--wait", "0", env=env)
    assert busy.returncode == 75, (busy.stdout + busy.stderr)[-3000:]
    assert busy.stderr.startswith("Busy: another run holds the output") and "Traceback" not in busy.stderr
    waiting = start(*score_args(trained_model, dump, out), "--wait", "600", env=env)

    if where == "local":  # a reader during the run sees whole chunks only, never a row twice
        seen = []
        while first.poll() is None:
            seen.append(_duckdb_counts(out))
            time.sleep(0.3)
        assert all(total == distinct and (total % CHUNK == 0 or total == N_FILES) for total, distinct in seen), seen
    first_log = first.communicate()[0]
    assert first.returncode == 0, first_log[-3000:]
    waiting_log = waiting.communicate(timeout=600)[0]
    assert waiting.returncode == 0, waiting_log[-3000:]
    # it listed before it waited (no watermark yet), then found every file done
    assert f"scored 0 of 0 files (0 errors, {N_FILES} skipped" in waiting_log, waiting_log[-3000:]
    if where == "local":
        predictions = read_out(out)
        assert _duckdb_counts(out) == (N_FILES, N_FILES)  # and DuckDB after the run: every file, once
    else:
        import pyarrow.fs as pafs

        fs, _ = pafs.FileSystem.from_uri(out)
        predictions = pd.read_parquet("scores/nightly/predictions", filesystem=fs)
    assert len(predictions) == N_FILES and predictions["path"].is_unique


def _duckdb_counts(out: Path) -> tuple[int, int]:
    """(rows, distinct paths) of OUT/predictions as DuckDB reads it right now."""
    if not list(out.glob("predictions/*/*.parquet")):
        return 0, 0
    query = f"SELECT count(*), count(DISTINCT path) FROM read_parquet('{out}/predictions/*/*.parquet')"
    return duckdb.sql(query).fetchone()


# ~2.5 minutes on this 2-CPU machine's embedded Ray (tiny model, default TTA; 95-130 images/s steady,
# 25-60 s of start-up): long enough that 70% of the files minus one commit interval is over half of them
KILL_FILES = 15_000


def test_a_run_killed_at_70_percent_keeps_most_of_its_work_with_default_flags(trained_model, sample_dir, tmp_path):
    """Default commit flags (--commit-every 10000, --commit-interval 15): a run killed at ~70% of its
    files loses at most about one interval of work, so the rerun skips at least half of the files."""
    images = sorted((sample_dir / "images").glob("*.jpg"))
    dump = tmp_path / "big"
    dump.mkdir()
    for i in range(KILL_FILES):
        os.link(images[i % len(images)], dump / f"{i:06d}.jpg")
    out = tmp_path / "out"
    cmd = ["score", "--model", str(trained_model), "--input", str(dump), "--output", str(out), "--incremental"]
    run = start(*cmd, "--progress-interval", "2")
    started, seen = time.monotonic(), []
    for line in run.stdout:
        if line.startswith("progress "):
            done, total = map(int, line.split()[1].split("/"))
            seen.append((time.monotonic() - started, done))
            if done >= 0.7 * total:
                break
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    killed_at, arrived = seen[-1]
    assert arrived >= 0.7 * KILL_FILES, seen

    r = run_cli(*cmd)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # what the killed run kept: everything that had arrived one commit interval (and a batch) earlier
    arrived_earlier = max([n for t, n in seen if t <= killed_at - ScoreOptions().commit_interval - 5] or [0])
    assert summary["skipped_done"] >= max(KILL_FILES // 2, arrived_earlier), (summary["skipped_done"], seen)
    predictions = read_out(out)
    assert len(predictions) == KILL_FILES and predictions["path"].is_unique
