"""A model at a URI is copied into the model cache once, not into a fresh temp directory per run and
per actor (a nightly job would otherwise leave a model's worth of disk behind every night), and a
model overwritten at the same URI gets a fresh copy. Real S3 traffic against the suite's moto server."""

import pytest

from vehicle_ray.errors import InputError
from vehicle_ray.score.model import URI_CACHE_SUBDIR, local_model
from vehicle_ray.tracking import MODEL_CACHE_ENV


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "cache"))
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    return client


def test_a_model_at_a_uri_is_copied_once_and_again_when_it_changes(s3, tmp_path):
    s3.put_object(Bucket="models", Key="m/model.json", Body=b'{"v": 1}')
    s3.put_object(Bucket="models", Key="m/sub/weights.bin", Body=b"\x00" * 1000)
    first = local_model("s3://models/m")
    assert first.parent == tmp_path / "cache" / URI_CACHE_SUBDIR
    assert (first / "model.json").read_bytes() == b'{"v": 1}'
    assert (first / "sub" / "weights.bin").stat().st_size == 1000
    assert local_model("s3://models/m") == first  # the second run reuses the copy
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging left behind

    s3.put_object(Bucket="models", Key="m/model.json", Body=b'{"v": 2}')  # overwritten in place, same size
    second = local_model("s3://models/m/")  # within the same second, and with a trailing slash
    assert second != first and (second / "model.json").read_bytes() == b'{"v": 2}'
    assert local_model("s3://models/m") == second


def test_a_single_file_at_a_uri_is_cached_as_that_file(s3):
    s3.put_object(Bucket="models", Key="old/export.pkl", Body=b"pickle bytes")
    path = local_model("s3://models/old/export.pkl")
    assert path.name == "export.pkl" and path.read_bytes() == b"pickle bytes"
    assert local_model("s3://models/old/export.pkl") == path


def test_a_missing_model_at_a_uri_is_an_input_error(s3):
    with pytest.raises(InputError, match="model not found"):
        local_model("s3://models/nothing-here")
