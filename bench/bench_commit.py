"""What one chunk commit costs (score/store.py: stage, fsync, record, fence check, moves), alone:
--chunks commits of --rows prediction rows each into a local output, with the protocol's fsyncs and
with them switched off (durable.py's syncs made no-ops: the price of power-loss durability), and with
--s3 on a moto S3 server the bench starts (no fsync there; a dozen requests a commit). Medians of
milliseconds per commit, interleaved; the share of a --commit-interval is the commit's overhead at
the default (one commit per interval at most).

    .venv/bin/python bench/bench_commit.py [--chunks 30] [--rows 2000] [--s3]
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_listing import history_rows, start_moto  # noqa: E402


def commit_ms(out: str, chunks: int, rows: int) -> list[float]:
    from vehicle_ray.score.store import OutputStore

    store, run_id = OutputStore.create(out), uuid.uuid4().hex[:8]
    times = []
    for k in range(1, chunks + 1):
        table = history_rows([f"/dump/{run_id}/{k}/{i:06d}.jpg" for i in range(rows)])
        t0 = time.perf_counter()
        store.commit_chunk(store.stage_chunk(run_id, k, table))
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=30)
    ap.add_argument("--rows", type=int, default=2000, help="rows a chunk (a 20 s interval at 100 images/s)")
    ap.add_argument("--s3", action="store_true", help="also commit to a moto S3 server the bench starts")
    args = ap.parse_args()

    from vehicle_ray import durable
    from vehicle_ray.score.options import ScoreOptions

    work = Path(tempfile.mkdtemp(prefix="bench_commit_"))
    synced = {name: getattr(durable, name) for name in ("sync_file", "sync_dir")}
    unsynced = {"sync_file": lambda path: None, "sync_dir": lambda path: None}
    sides: dict[str, list[float]] = {"local, fsync": [], "local, no fsync": []}
    for i in range(3):  # interleaved rounds
        for label, functions in (("local, fsync", synced), ("local, no fsync", unsynced)):
            for name, fn in functions.items():
                setattr(durable, name, fn)
            out = work / f"{'synced' if functions is synced else 'unsynced'}-{i}"
            sides[label] += commit_ms(str(out), args.chunks // 3, args.rows)
    for name, fn in synced.items():
        setattr(durable, name, fn)
    if args.s3:
        import boto3

        moto = start_moto(work)
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            sides["moto S3"] = commit_ms("s3://bench/out", args.chunks, args.rows)
        finally:
            moto.terminate()
            moto.wait()
    interval = ScoreOptions().commit_interval
    result = {
        "rows_per_chunk": args.rows,
        "median_ms_per_commit": {k: round(statistics.median(v), 1) for k, v in sides.items()},
        "share_of_default_interval": {k: round(statistics.median(v) / 1000 / interval, 5) for k, v in sides.items()},
        "fsync_ms_per_commit": round(
            statistics.median(sides["local, fsync"]) - statistics.median(sides["local, no fsync"]), 1
        ),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
