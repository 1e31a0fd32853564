"""A writer that wakes up late, as the CLI meets it: real `vehicle-ray score` processes, local and on
the moto S3 server.

Run A stops itself (SIGSTOP, heartbeat thread and all: a GC pause, a VM freeze, a suspended pod) at a
test-only pause point: between its lease check and its commit point, inside recovery, or inside
finish_run. Run B waits for the output, sees A's lease unchanged for its TTL, takes over, recovers
and commits. A is then resumed: it must stop with one line and exit 76, B must exit 0, and a further
--incremental run must find every file in exactly one of predictions/ or errors/ and nothing to do.
"""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.score.test_scheduled import start, wait_for
from vehicle_ray.score.pause import BEFORE_COMMIT, IN_FINISH_RUN, IN_RECOVER, PAUSE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N_FILES, CHUNK, TTL = 60, 20, 3


@pytest.fixture(scope="module")
def small_dump(sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fenced") / "dump"
    out.mkdir()
    for f in sorted((sample_dir / "images").glob("*.jpg"))[:N_FILES]:
        shutil.copy(f, out / f.name)
    return out


def args(model: Path, dump: Path, out: str) -> list[str]:
    return [
        "score", "--model", str(model), "--input", str(dump), "--output", out, "--incremental",
        "--commit-every", str(CHUNK), "--batch-size", "10", "--tta-n", "1", "--lease-ttl", str(TTL),
    ]  # fmt: skip


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def rows(out: str, kind: str, env: dict) -> pd.DataFrame:
    from vehicle_ray.score.store import OutputStore

    for key, value in env.items():
        os.environ[key] = value
    store = OutputStore.open(out)
    files = store.committed_files(kind)
    return (
        pd.concat([pd.read_parquet(f, filesystem=store.fs) for f in files]) if files else pd.DataFrame(columns=["path"])
    )


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("point", [f"{BEFORE_COMMIT}:2", IN_RECOVER, IN_FINISH_RUN])
def test_a_writer_that_wakes_up_late_is_refused_and_nothing_is_lost_or_doubled(
    trained_model, small_dump, tmp_path, s3_server, monkeypatch, where, point
):
    env = {}
    out = str(tmp_path / "out")
    if where == "s3":
        import boto3

        for key, value in s3_server.items():
            monkeypatch.setenv(key, value)
        env = dict(s3_server)
        boto3.client("s3").create_bucket(Bucket="scores")
        out = "s3://scores/fenced"
    a = start(*args(trained_model, small_dump, out), env={**env, PAUSE_ENV: point})
    try:
        wait_for(lambda: stopped(a.pid) or a.poll() is not None, timeout=120, what=f"run A to stop at {point}")
        assert a.poll() is None, a.stdout.read()[-3000:]
        t0 = time.monotonic()
        b = run_cli(*args(trained_model, small_dump, out), "--wait", "120", env=env)
        assert b.returncode == 0, (b.stdout + b.stderr)[-3000:]
        assert "took over the lease of run" in b.stdout + b.stderr and time.monotonic() - t0 >= TTL
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a_log = a.communicate(timeout=120)[0]
    assert a.returncode == 76, a_log[-3000:]
    last = a_log.strip().splitlines()[-1]
    assert last.startswith("Lease lost: ") and "Traceback" not in a_log, a_log[-3000:]

    again = run_cli(*args(trained_model, small_dump, out), "--relist", env=env)  # the done-index, not the watermark
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"scored 0 of 0 files (0 errors, {N_FILES} skipped" in again.stdout, again.stdout
    predictions, errors = rows(out, "predictions", env), rows(out, "errors", env)
    both = pd.concat([predictions["path"], errors["path"]])
    assert len(both) == N_FILES and both.is_unique  # every file in exactly one of the two, once
    assert set(both) == {str(p) for p in small_dump.iterdir()}
    if where == "local":  # a plain reader of the directory sees the same
        plain = pd.concat(pd.read_parquet(f) for f in Path(out, "predictions").rglob("*.parquet"))
        assert len(plain) == len(predictions) and plain["path"].is_unique
        summary = json.loads(Path(out, "summary.json").read_text())
        assert summary["files_listed"] == N_FILES  # the last run's, never A's late overwrite


def test_a_run_that_waited_longer_than_half_the_ttl_commits_at_once(trained_model, small_dump, sample_dir, tmp_path):
    """A holds the output for longer than TTL/2 (a slow last step; its heartbeat goes on) while B waits
    with --wait; B then scores a small new dump in-process and commits before its first heartbeat:
    its lease is as fresh as its acquisition, not as old as its wait. Both exit 0, every file once."""
    ttl, held = 20, 14  # B's first heartbeat comes TTL/4 = 5 s after it takes the lease; TTL/2 = 10 s
    out = tmp_path / "out"
    a = start(
        *args(trained_model, small_dump, str(out)), "--lease-ttl", str(ttl), env={PAUSE_ENV: f"{IN_FINISH_RUN}@{held}"}
    )
    new = tmp_path / "new"
    new.mkdir()
    for f in sorted((sample_dir / "images").glob("*.jpg"))[N_FILES : N_FILES + 10]:
        shutil.copy(f, new / f.name)
    wait_for(lambda: (out / "_runs").exists() or a.poll() is not None, timeout=120, what="run A's first commit")
    t0 = time.monotonic()
    b = run_cli(*args(trained_model, new, str(out)), "--lease-ttl", str(ttl), "--wait", "120")
    a_log = a.communicate(timeout=120)[0]
    assert a.returncode == 0, a_log[-3000:]
    assert b.returncode == 0 and "scored 10 of 10 files" in b.stdout, (b.stdout + b.stderr)[-3000:]
    assert time.monotonic() - t0 > ttl / 2  # B did wait longer than half the TTL
    paths = pd.concat([rows(str(out), "predictions", {})["path"], rows(str(out), "errors", {})["path"]])
    assert len(paths) == N_FILES + 10 and paths.is_unique


def test_a_store_that_ignores_conditional_writes_is_refused(trained_model, small_dump, s3_server, monkeypatch):
    """An older S3-compatible gateway that accepts If-None-Match/If-Match and overwrites anyway would
    turn the lease and the fences into nothing: refused with one line before anything is written."""
    import boto3

    from tests.score.s3_faults import FaultProxy

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    with FaultProxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        proxy.ignore_conditions = True
        env = {**s3_server, "AWS_ENDPOINT_URL": proxy.url}
        boto3.client("s3", endpoint_url=proxy.url).create_bucket(Bucket="scores")
        r = run_cli(*args(trained_model, small_dump, "s3://scores/old-gateway"), env=env)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ") and "ignores conditional writes" in r.stderr
    assert "Traceback" not in r.stderr
    keys = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"]).list_objects_v2(Bucket="scores")
    written = [o["Key"] for o in keys.get("Contents", []) if not o["Key"].endswith("/")]  # not the directory marker
    assert written == []  # nothing written, the probe object removed
