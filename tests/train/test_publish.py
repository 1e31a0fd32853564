"""Publishing a model artifact to object storage (moto's S3 server): model.json is the commit point."""

import json
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from vehicle_ray.artifact import FORMAT_VERSION, MODEL_JSON, open_artifact, sha256_file
from vehicle_ray.errors import InputError
from vehicle_ray.score.model import local_model, resolve_model
from vehicle_ray.train.artifact_writer import PUBLISH_EXIT_AFTER_ENV, PUBLISH_EXIT_CODE, publish, require_free_output

FILES = ("model.safetensors", "model.onnx", "metrics.csv")  # + model.json: 4 uploads, 4 copies into place
PUBLISH = (
    "import sys; from pathlib import Path; from vehicle_ray.train.artifact_writer import publish; "
    "publish(Path(sys.argv[1]), sys.argv[2], overwrite=True)"
)


def fake_artifact(directory, version: str):
    """An artifact directory whose model.json carries the sha256 of its files (content is irrelevant here)."""
    directory.mkdir()
    for name in FILES:
        (directory / name).write_bytes(f"{version} {name} ".encode() * 1000)
    files = {name: sha256_file(directory / name) for name in FILES}
    meta = {
        "format_version": FORMAT_VERSION,
        "model_id": f"fake-{version}",
        "model_sha256": files["model.safetensors"],
        "arch": "resnet18",
        "classes": ["0", "1"],
        "input": {"size": 48, "resize_method": "squish"},
        "tta": {"n": 4, "beta": 0.25},
        "metrics": {},
        "files": files,
    }
    (directory / MODEL_JSON).write_text(json.dumps(meta))
    return directory


@pytest.fixture
def s3(s3_server, monkeypatch):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="models")
    return pafs.FileSystem.from_uri("s3://models")[0]


def model_version(uri: str) -> str | None:
    """What a reader (scoring's resolve_model) finds at `uri`: None for "no model", else the verified version."""
    try:
        spec = resolve_model(uri)
    except InputError as exc:
        assert "no model.json" in str(exc) or "not found" in str(exc), exc
        return None
    open_artifact(spec.directory, verify=FILES)  # every file matches model.json: a complete model
    return spec.model_id.removeprefix("fake-")


def test_publish_to_s3_then_refuse_then_overwrite(s3, tmp_path):
    uri = "s3://models/vehicle"
    publish(fake_artifact(tmp_path / "v1", "v1"), uri)
    assert model_version(uri) == "v1"
    with pytest.raises(InputError, match="a model already exists at s3://models/vehicle .*--overwrite"):
        require_free_output(uri, overwrite=False)
    with pytest.raises(InputError, match="--overwrite"):
        publish(fake_artifact(tmp_path / "v2", "v2"), uri)
    s3.open_output_stream("models/vehicle/stale.bin").close()  # a file the new model does not have
    publish(tmp_path / "v2", uri, overwrite=True)
    assert model_version(uri) == "v2"
    names = {i.base_name for i in s3.get_file_info(pafs.FileSelector("models", recursive=True))}
    assert names == {"vehicle", *FILES, MODEL_JSON}  # no staging prefix, no stale file left behind
    assert sorted(p.name for p in local_model(uri).iterdir()) == sorted([*FILES, MODEL_JSON])


@pytest.mark.slow  # a driver subprocess per kill point against the S3 server: ~12 s in all
@pytest.mark.parametrize("exit_after", [2, 4, 5, 7, 8])
def test_killed_publish_leaves_no_model_or_a_complete_one(s3, s3_server, tmp_path, exit_after):
    """The driver dies after its N-th object write (of 4 staged uploads + 4 copies into place) while
    replacing v1 with v2: a reader finds the complete v1 (nothing touched yet), no model, or the
    complete v2, never a mix, and a rerun of the publish completes v2."""
    uri = "s3://models/vehicle"
    publish(fake_artifact(tmp_path / "v1", "v1"), uri)
    fake_artifact(tmp_path / "v2", "v2")
    r = subprocess.run(
        [sys.executable, "-c", PUBLISH, str(tmp_path / "v2"), uri],
        capture_output=True,
        text=True,
        env={**os.environ, **s3_server, PUBLISH_EXIT_AFTER_ENV: str(exit_after)},
    )
    assert r.returncode == PUBLISH_EXIT_CODE, r.stderr[-2000:]
    expected = {2: "v1", 4: "v1", 5: None, 7: None, 8: "v2"}[exit_after]
    assert model_version(uri) == expected
    publish(tmp_path / "v2", uri, overwrite=True)
    assert model_version(uri) == "v2"
