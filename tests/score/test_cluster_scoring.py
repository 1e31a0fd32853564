"""Scoring on a multi-node cluster simulated with Ray's own machinery (`ray.cluster_utils.Cluster`):
a head with 0 CPUs and no worker nodes at start (as cluster.yaml starts), nodes added after the run
started, one worker node removed mid-run and replaced; input, output and model on the moto S3 server."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_FILES = 240

SCRIPT = r"""
import json, os, subprocess, sys, time
import boto3
from ray.cluster_utils import Cluster

def chunks_committed():
    listing = boto3.client("s3").list_objects_v2(Bucket="scores", Prefix="night/_runs/")
    return sum(1 for o in listing.get("Contents", []) if "/chunk-" in o["Key"])

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
events = []
try:
    args = [sys.executable, "-m", "vehicle_ray.cli", "score", "--model", "s3://scores/model", "--input",
            "s3://dumps/night", "--output", "s3://scores/night", "--incremental", "--commit-every", "40",
            "--batch-size", "8", "--tta-n", "2", "--cpus-per-actor", "1", "--progress-interval", "5"]
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in run.stdout:  # nothing can run yet: the head has no CPU
        lines.append(line)
        if line.startswith("scoring "):
            break
    time.sleep(3)
    events.append(f"added nodes while the run waited ({run.poll()})")
    first = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    deadline = time.time() + 400
    while chunks_committed() < 1 and run.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    events.append(f"chunks before node loss: {chunks_committed()}")
    events.append(f"run alive at node loss: {run.poll() is None}")
    cluster.remove_node(first)  # a worker node lost mid-run (its tasks and maybe the actor with it)
    cluster.add_node(num_cpus=1)  # the autoscaler's replacement
    rest, _ = run.communicate(timeout=600)
    out = {"rc": run.returncode, "log": "".join(lines) + rest, "events": events}
    if run.returncode != 0:  # a clean failure is allowed: the next --incremental run completes the set
        again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        out["rerun_rc"], out["rerun_log"] = again.returncode, again.stdout + again.stderr
    print("RESULT " + json.dumps(out))
finally:
    cluster.shutdown()
"""


def test_scoring_starts_on_an_empty_cluster_and_survives_a_lost_node(
    trained_model, sample_dir, s3_server, monkeypatch, tmp_path
):
    import boto3
    import pyarrow.fs as pafs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dumps")
    s3.create_bucket(Bucket="scores")
    names = sorted(p.name for p in (sample_dir / "images").glob("*.jpg"))[:N_FILES]
    for i, name in enumerate(names):
        s3.upload_file(str(sample_dir / "images" / name), "dumps", f"night/cam{i % 3}/{name}")
    for f in trained_model.iterdir():
        s3.upload_file(str(f), "scores", f"model/{f.name}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=880, env=env, cwd=tmp_path
    )
    results = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, (r.stdout + r.stderr)[-4000:]
    out = json.loads(results[-1][len("RESULT ") :])
    log = out["log"] + out.get("rerun_log", "")
    assert "scoring 240 new of 240 listed files" in out["log"], log[-4000:]
    assert "1..autoscale actor(s)" in out["log"], log[-4000:]  # elastic pool: nothing refused at 0 CPUs
    assert "run alive at node loss: True" in out["events"], out["events"]  # the node went mid-run
    assert out["rc"] == 0 or out.get("rerun_rc") == 0, (out["events"], log[-4000:])
    fs, _ = pafs.FileSystem.from_uri("s3://scores/night")
    predictions = pd.read_parquet("scores/night/predictions", filesystem=fs)
    assert len(predictions) == N_FILES and predictions["path"].is_unique, out["events"]
    assert set(predictions["path"]) == {f"s3://dumps/night/cam{i % 3}/{n}" for i, n in enumerate(names)}
