"""Losing a whole worker node mid-training on a multi-node cluster simulated with Ray's own
ray.cluster_utils.Cluster: a head that takes no work, one-CPU worker nodes that join after the job
started (as an autoscaler would add them), checkpoints and the model on S3 (moto)."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from vehicle_ray.sample_data import write_sample_data

# Runs in its own process so that its Ray cluster never meets another Ray instance of the test session.
NODE_LOSS_SCRIPT = """
import sys, threading, time
import pyarrow.fs as pafs
import ray
from ray.cluster_utils import Cluster
from vehicle_ray.log import use_cli_logging
from vehicle_ray.recipe import load_recipe
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import train

data, storage, out = sys.argv[1:4]
use_cli_logging()
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs driver + controller only
ray.init(address=cluster.address, logging_level="ERROR")
fs, runs = pafs.FileSystem.from_uri(storage)
recipe = load_recipe("tiny_cpu").with_overrides(epochs=3, size=48)
opts = TrainOptions(csv=data + "/train.csv", images="file://" + data + "/images", out=out, workers=2,
                    storage_path=storage, name="nodeloss", max_failures=1)
done = []
job = threading.Thread(target=lambda: done.append(train(opts, recipe)), daemon=True)
job.start()  # the driver waits for its workers: the nodes come up after it started, as an autoscaler's would
time.sleep(3)
nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]  # (Ray adds nodes from the main thread only)
print("ADDED 2 NODES", flush=True)
def checkpointed():  # Ray Train's own record: a checkpoint is registered once its snapshot names it
    try:
        with fs.open_input_stream(runs + "/nodeloss/checkpoint_manager_snapshot.json") as f:
            return b"checkpoint_dir_name" in f.read()
    except FileNotFoundError:
        return False
while not checkpointed() and job.is_alive():
    time.sleep(0.2)
cluster.remove_node(nodes[1], allow_graceful=False)  # one rank's whole node is gone
print("REMOVED A NODE", flush=True)
cluster.add_node(num_cpus=1)
print("ADDED A REPLACEMENT NODE", flush=True)
job.join()
print("DONE", done[0].out if done else None, flush=True)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lost_worker_node_resumes_on_a_replacement_node(s3_server, tmp_path, monkeypatch):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="runs")
    write_sample_data(tmp_path / "data", train=120, test=0, size=48, seed=5)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", NODE_LOSS_SCRIPT, str(tmp_path / "data"), "s3://runs/ray", "s3://runs/models/vehicle"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0 and "DONE s3://runs/models/vehicle" in r.stdout, log[-5000:]
    assert "waiting for resources: 2 workers x {CPU: 1} (cluster has {CPU: 0})" in log
    assert "REMOVED A NODE" in log and "resumed from checkpoint: stage 1, epoch" in log, log[-5000:]
    from vehicle_ray.score.model import local_model

    history = pd.read_csv(local_model("s3://runs/models/vehicle") / "metrics.csv")
    assert list(history["epoch"]) == [1, 2, 3]  # each epoch exactly once across the two worker groups
