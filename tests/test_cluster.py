"""Cluster deployment: launcher config, `ray job submit` against a real local head, object storage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import free_port, run_cluster_script

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXCLUDES = [".venv", ".git", "demo_output", "bench_output", "**/__pycache__"]


def test_cluster_yaml_passes_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    config["available_node_types"]["gpu_worker"]["not_a_field"] = 1  # the check can fail
    with pytest.raises(Exception, match="not_a_field"):
        validate_config(prepare_config(config))


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head --block` on free ports with its own temp dir, stopped by its pid."""
    dashboard = free_port()
    temp_dir = Path("/tmp") / f"vr_head_{os.getpid()}_{dashboard}"  # short: Ray's socket paths have a length limit
    # Token auth off explicitly: Ray 2.60 turns it on for `ray start` whenever ~/.ray/auth_token exists
    # (any earlier local ray.init() writes one), and whether it exists depends on what ran before.
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--port",
        str(free_port()),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--include-dashboard",
        "true",
        "--ray-client-server-port",
        str(free_port()),
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--min-worker-port",
        "20000",
        "--max-worker-port",
        "20999",
        "--temp-dir",
        str(temp_dir),
    ]
    head = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        r = subprocess.run([str(VENV_BIN / "ray"), "job", "list", "--address", address], capture_output=True, env=env)
        if r.returncode == 0:
            break
        time.sleep(2)
    else:
        head.kill()
        pytest.fail(f"ray head did not come up: {head.stdout.read()[-2000:] if head.stdout else ''}")
    yield address, env
    # SIGKILL to the head's process group: SIGTERM first drains the node for 30 s, every time
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, env: dict, *entrypoint: str) -> str:
    r = subprocess.run(
        [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(ROOT),
            "--runtime-env-json",
            json.dumps({"excludes": EXCLUDES}),
            "--entrypoint-num-cpus",
            "0",
            "--",
            "python",
            *entrypoint,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in out, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_job_submit_train_then_score(ray_head, sample_dir, tmp_path):
    address, env = ray_head
    model, scores = tmp_path / "model", tmp_path / "scores"
    out = submit(
        address,
        env,
        "jobs/train.py",
        "--csv",
        str(sample_dir / "train.csv"),
        "--images",
        str(sample_dir / "images"),
        "--config",
        "tiny_cpu",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--out",
        str(model),
        "--storage-path",
        str(tmp_path / "runs"),
    )
    assert "stage 1 epoch 1/1" in out
    assert json.loads((model / "model.json").read_text())["arch"] == "resnet18"
    submit(
        address,
        env,
        "jobs/score.py",
        "--model",
        str(model),
        "--input",
        str(sample_dir / "test.csv"),
        "--images",
        str(sample_dir / "images"),
        "--output",
        str(scores),
        "--tta-n",
        "2",
    )
    predictions = pd.read_parquet(scores / "predictions")
    assert len(predictions) == 100 and predictions["path"].is_unique
    assert json.loads((scores / "summary.json").read_text())["scored"] == 100

    # deploy/score-nightly.sh (what cron and systemd run) turns the job's outcome into exit codes a
    # scheduler can act on: the output's lease held by another host's live run -> 75, bad input -> 2.
    now = time.time()
    lease = {"token": "t", "holder": "other-host:1", "run_id": "r", "since": now, "heartbeat": now + 600, "ttl": 60}
    (scores / "_lease.json").write_text(json.dumps(lease))
    nightly = ["--model", str(model), "--input", str(sample_dir / "images"), "--output", str(scores), "--incremental"]
    script_env = {**env, "RAY_ADDRESS": address}
    busy = subprocess.run(
        [str(ROOT / "deploy" / "score-nightly.sh"), *nightly],
        capture_output=True,
        text=True,
        env=script_env,
        timeout=600,
    )
    assert busy.returncode == 75, (busy.stdout + busy.stderr)[-3000:]
    assert "Busy: another run holds the output (run r on other-host:1" in busy.stdout
    bad = subprocess.run(
        [str(ROOT / "deploy" / "score-nightly.sh"), *nightly[:1], str(tmp_path / "nowhere"), *nightly[2:]],
        capture_output=True,
        text=True,
        env=script_env,
        timeout=600,
    )
    assert bad.returncode == 2 and "Error: model not found" in bad.stdout, (bad.stdout + bad.stderr)[-3000:]
    # no node of this cluster can ever place a GPU actor: the run gives up after --wait-for-resources with
    # 69 (EX_UNAVAILABLE), which the systemd unit retries, unlike 2
    gpu = [
        *nightly[:5],
        str(tmp_path / "gpu-scores"),
        "--incremental",
        "--gpus-per-actor",
        "1",
        "--wait-for-resources",
        "5",
    ]
    unavailable = subprocess.run(
        [str(ROOT / "deploy" / "score-nightly.sh"), *gpu], capture_output=True, text=True, env=script_env, timeout=600
    )
    assert unavailable.returncode == 69, (unavailable.stdout + unavailable.stderr)[-3000:]
    assert "Unavailable: no model actor could start within 5s" in unavailable.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_s3_input_and_output_round_trip(s3_server, trained_model, sample_dir, tmp_path, monkeypatch):
    import boto3

    from tests.conftest import run_cli

    for key, value in s3_server.items():  # boto3 and pyarrow in this process; the CLI gets the same env
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dumps")
    names = sorted(p.name for p in (sample_dir / "images").glob("*.jpg"))[:40]
    for i, name in enumerate(names):
        s3.upload_file(str(sample_dir / "images" / name), "dumps", f"night1/cam{i % 2}/{name}")
    s3.put_object(Bucket="dumps", Key="night1/cam0/broken.jpg", Body=b"not a jpeg")
    for f in trained_model.iterdir():  # the model itself can live in object storage too
        s3.upload_file(str(f), "dumps", f"models/current/{f.name}")
    args = ["score", "--input", "s3://dumps/night1", "--output", "s3://dumps/scores", "--incremental", "--tta-n", "2"]
    r = run_cli(*args, "--model", "s3://dumps/models/current", env=s3_server)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "scored 40 of 41 files (1 errors" in r.stdout
    for name in sorted(p.name for p in (sample_dir / "images").glob("*.jpg"))[40:50]:
        s3.upload_file(str(sample_dir / "images" / name), "dumps", f"night1/cam2/{name}")
    r = run_cli(*args, "--model", str(trained_model), env=s3_server)
    # night 2 lists from night 1's watermark: only its 10 new objects, none of the 41 already scored
    assert "scored 10 of 10 files (0 errors, 0 skipped" in r.stdout, r.stdout + r.stderr[-2000:]
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri("s3://dumps/scores")
    predictions = pd.read_parquet("dumps/scores/predictions", filesystem=fs)
    errors = pd.read_parquet("dumps/scores/errors", filesystem=fs)
    assert len(predictions) == 50 and predictions["path"].is_unique
    assert all(p.startswith("s3://dumps/night1/") for p in predictions["path"])
    assert list(errors["path"]) == ["s3://dumps/night1/cam0/broken.jpg"]
    assert len(fs.get_file_info(pafs.FileSelector(f"{base}/_runs"))) == 2


MULTI_NODE_SCRIPT = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
import ray
ray.init(address=cluster.address)
from vehicle_ray.cluster import require_shared_path
from vehicle_ray.errors import InputError
require_shared_path("s3://bucket/out", "--output")
try:
    require_shared_path("/tmp/local_out", "--output")
    print("NOT REFUSED")
except InputError as exc:
    print("REFUSED:", exc)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_local_paths_refused_on_a_multi_node_cluster(tmp_path):
    r = run_cluster_script(MULTI_NODE_SCRIPT)
    assert "REFUSED: --output /tmp/local_out is a local path, but the Ray cluster has 2 nodes" in r.stdout, (
        r.stdout + r.stderr
    )[-3000:]
