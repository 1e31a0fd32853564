"""Nights of history, listed as a nightly job lists them: only what can be new, from the watermark the
last finished run left in OUT/_listing/ (local tree and moto S3). Real CLI runs, real Parquet.

The dump grows by one date-named prefix a night. Each night must list only that night's names; a
late file under an old prefix is found by --relist, exactly once; a watermark that lags behind the
data (the state a crash between the run record and the watermark leaves) costs some re-listing and
neither loses nor duplicates a file.
"""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PER_NIGHT = 16  # two cameras a night


def night_files(sample_dir: Path, night: int) -> dict[str, Path]:
    """Relative name -> a real sample JPEG, for one night's prefix."""
    images = sorted((sample_dir / "images").glob("*.jpg"))
    return {
        f"2026-12-{night:02d}/cam{cam}/{i:03d}.jpg": images[(night * PER_NIGHT + cam * 8 + i) % len(images)]
        for cam in (1, 2)
        for i in range(PER_NIGHT // 2)
    }


class Dump:
    def __init__(self, where: str, tmp_path: Path):
        self.where = where
        if where == "s3":
            import boto3

            self.s3 = boto3.client("s3")
            self.s3.create_bucket(Bucket="dumps")
            self.s3.create_bucket(Bucket="scores")
            self.uri, self.out = "s3://dumps/vehicle/", "s3://scores/vehicle"
        else:
            self.root = tmp_path / "dumps"
            self.root.mkdir()
            self.uri, self.out = str(self.root), str(tmp_path / "out")

    def add(self, files: dict[str, Path]) -> None:
        for rel, source in files.items():
            if self.where == "s3":
                self.s3.put_object(Bucket="dumps", Key=f"vehicle/{rel}", Body=source.read_bytes())
            else:
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, self.root / rel)

    def full_name(self, rel: str) -> str:
        return self.uri + rel if self.where == "s3" else str(self.root / rel)


def score(model: Path, dump: Dump, *extra: str) -> dict:
    r = run_cli(
        "score", "--model", str(model), "--input", dump.uri, "--output", dump.out, "--incremental",
        "--batch-size", "16", "--tta-n", "1", *extra,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from vehicle_ray.score.store import OutputStore

    return OutputStore.open(dump.out).read_json("summary.json")


def committed_paths(dump: Dump) -> pd.Series:
    from vehicle_ray.score.store import ERRORS, PREDICTIONS, OutputStore

    store = OutputStore.open(dump.out)
    files = store.committed_files(PREDICTIONS) + store.committed_files(ERRORS)
    return pd.concat([pd.read_parquet(f, filesystem=store.fs, columns=["path"])["path"] for f in files])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_each_night_lists_only_the_new_prefix(trained_model, sample_dir, tmp_path, s3_server, monkeypatch, where):
    if where == "s3":
        for key, value in s3_server.items():
            monkeypatch.setenv(key, value)
    dump = Dump(where, tmp_path)
    expected: set[str] = set()
    for night in (1, 2, 3):  # three nights of history
        files = night_files(sample_dir, night)
        dump.add(files)
        expected |= {dump.full_name(r) for r in files}
        summary = score(trained_model, dump)
        assert summary["files_seen"] == PER_NIGHT and summary["skipped_done"] == 0, summary["listing"]
    listing = summary["listing"]
    assert listing["mode"] == "from_watermark" and listing["after"] == max(night_files(sample_dir, 2))
    assert listing["watermark"] == max(night_files(sample_dir, 3))
    if where == "s3":  # StartAfter: one LIST request, only tonight's keys
        assert listing["requests"] == 1 and listing["entries"] == PER_NIGHT
    else:  # the root, night 2 (an ancestor of the watermark) and its cam2, night 3 and its two cameras
        assert listing["requests"] == 1 + 2 + 3 and listing["entries"] == 3 + 2 + 8 + 2 + PER_NIGHT

    from vehicle_ray.score.store import OutputStore

    store = OutputStore.open(dump.out)
    key_file = f"_listing/{listing['key']}.json"
    lagging = {**store.read_json(key_file), "watermark": max(night_files(sample_dir, 1))}
    store.write_json(key_file, lagging)  # as if a crash hit between night 3's run record and its watermark
    late = {"2026-12-01/cam1/late.jpg": sorted((sample_dir / "images").glob("*.jpg"))[0]}
    dump.add(late)  # a late file under an old prefix
    dump.add(night_files(sample_dir, 4))
    expected |= {dump.full_name(r) for r in night_files(sample_dir, 4)}
    summary = score(trained_model, dump)  # lists nights 2-4 again: the done-index drops 2 and 3
    assert summary["files_listed"] == 3 * PER_NIGHT and summary["files_seen"] == PER_NIGHT
    assert summary["skipped_done"] == 2 * PER_NIGHT
    assert dump.full_name("2026-12-01/cam1/late.jpg") not in set(committed_paths(dump))

    summary = score(trained_model, dump, "--relist")  # the weekly reconcile: finds the late file, once
    assert summary["listing"]["mode"] == "full" and summary["files_seen"] == 1
    expected.add(dump.full_name("2026-12-01/cam1/late.jpg"))
    summary = score(trained_model, dump, "--relist")
    assert summary["files_seen"] == 0 and summary["files_listed"] == len(expected)
    paths = committed_paths(dump)
    assert paths.is_unique and set(paths) == expected
    assert store.read_json(key_file)["watermark"] == max(night_files(sample_dir, 4))
