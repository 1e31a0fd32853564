"""Transient read failures on object storage, end to end: the CLI scores a dump on the moto S3 server
through a proxy that answers 503 SlowDown to the first reads of chosen objects (tests/score/s3_faults.py).

Night 1: objects whose faults outlast pyarrow's own retries (~6 s of them) once are scored after the
decode task's retry; an object that fails on every read is deferred (not done, not an error); a truly
corrupt object stays an error. Night 2 (faults gone, --incremental): the deferred object is scored, and
every object is in exactly one of predictions/ and errors/, once. Night 3: the corrupt object,
fixed, is rescored with --retry-errors and leaves errors/ in the same commit."""

import io
import json
import re

import pandas as pd
import pyarrow.fs as pafs
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.score.s3_faults import FOREVER, FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# pyarrow's S3 client retries a 503 for ~6 s (31 requests here) before one of our tries fails: 40
# faults fail the first try and part of the second, which then succeeds.
OUTLASTS_ONE_TRY = 40


def read_out(fs: pafs.FileSystem, kind: str) -> pd.DataFrame:
    if fs.get_file_info(f"scores/out/{kind}").type != pafs.FileType.Directory:
        return pd.DataFrame(columns=["path"])
    return pd.read_parquet(f"scores/out/{kind}", filesystem=fs)


def test_transient_faults_are_retried_deferred_and_scored_by_the_next_night(
    trained_model, sample_dir, s3_server, monkeypatch
):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)  # this process talks to moto directly
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dumps")
    s3.create_bucket(Bucket="scores")
    names = sorted(p.name for p in (sample_dir / "images").glob("*.jpg"))[:8]
    for name in names:
        s3.upload_file(str(sample_dir / "images" / name), "dumps", f"night/{name}")
    buf = io.BytesIO()
    Image.open(sample_dir / "images" / names[0]).save(buf, "JPEG")
    s3.put_object(Bucket="dumps", Key="night/corrupt.jpg", Body=buf.getvalue()[: len(buf.getvalue()) // 2])
    flaky, down = names[:2], names[2]
    uri = {n: f"s3://dumps/night/{n}" for n in [*names, "corrupt.jpg"]}
    args = ["score", "--model", str(trained_model), "--input", "s3://dumps/night", "--output", "s3://scores/out"]
    args += ["--incremental", "--tta-n", "1"]
    fs, _ = pafs.FileSystem.from_uri("s3://scores/out")

    with FaultProxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        for name in flaky:
            proxy.fail(f"/dumps/night/{name}", OUTLASTS_ONE_TRY)
        proxy.fail(f"/dumps/night/{down}", FOREVER)
        night1 = run_cli(*args, env={"AWS_ENDPOINT_URL": proxy.url})
        assert night1.returncode == 0, (night1.stdout + night1.stderr)[-3000:]
        assert "scored 7 of 9 files (1 errors, 1 deferred, 0 skipped" in night1.stdout, night1.stdout
        assert all(proxy.faulted[f"/dumps/night/{n}"] == OUTLASTS_ONE_TRY for n in flaky)  # then it read
        assert proxy.faulted[f"/dumps/night/{down}"] > OUTLASTS_ONE_TRY  # every try of it failed

        predictions, errors = read_out(fs, "predictions"), read_out(fs, "errors")
        assert sorted(predictions["path"]) == sorted(uri[n] for n in names if n != down)  # flaky ones included
        assert errors[["path", "error_kind"]].values.tolist() == [[uri["corrupt.jpg"], "corrupt"]]
        deferred = read_out(fs, "_deferred")
        assert deferred["path"].tolist() == [uri[down]]
        assert deferred["error"].iloc[0].startswith("transient read error (3 tries): ")
        assert "SLOW_DOWN" in deferred["error"].iloc[0] or "503" in deferred["error"].iloc[0]
        with fs.open_input_stream("scores/out/summary.json") as f:
            summary = json.loads(f.read())
        assert (summary["scored"], summary["errors"], summary["deferred"]) == (7, 1, 1)

        proxy.clear()  # the storage has recovered by the next night
        night2 = run_cli(*args, env={"AWS_ENDPOINT_URL": proxy.url})
        assert night2.returncode == 0, (night2.stdout + night2.stderr)[-3000:]
        # the deferred file, once; whether the walk listed the 8 done files again or started past them
        # (a watermark) the output still owed it
        assert re.search(r"scored 1 of 1 files \(0 errors, [08] skipped", night2.stdout), night2.stdout
        assert "also scoring 1 deferred files not yet done" in night2.stdout + night2.stderr

    predictions, errors = read_out(fs, "predictions"), read_out(fs, "errors")
    assert predictions["path"].is_unique and errors["path"].is_unique
    assert sorted(predictions["path"]) == sorted(uri[n] for n in names)
    assert errors["path"].tolist() == [uri["corrupt.jpg"]]
    assert not set(predictions["path"]) & set(errors["path"])

    # night 3: the corrupt object was re-uploaded whole; --retry-errors corrupt scores it again, and the
    # commit that adds its prediction takes its old error row out of errors/ (an S3 object replaced)
    s3.put_object(Bucket="dumps", Key="night/corrupt.jpg", Body=buf.getvalue())
    night3 = run_cli(*args, "--retry-errors", "corrupt")
    assert night3.returncode == 0, (night3.stdout + night3.stderr)[-3000:]
    assert "scored 1 of 1 files (0 errors," in night3.stdout, night3.stdout
    predictions, errors = read_out(fs, "predictions"), read_out(fs, "errors")
    assert predictions["path"].is_unique and sorted(predictions["path"]) == sorted(uri.values())
    assert errors.empty
    bad = run_cli(*args, "--retry-errors", "transient")
    assert bad.returncode == 2 and "--retry-errors takes kinds among" in bad.stderr, bad.stderr
