"""Nightly cost against history: tonight's new files scored under a root that holds N nights of already
scored files (`score --incremental`, which lists from the last run's watermark), against the same new
files scored alone (a root holding only them, a fresh output). Whole-process wall times, medians of
--repeats, interleaved; the ratio is the cost of history (target: <= 1.2x). Also `--relist` (a full
walk of the same root, the weekly reconcile) for scale, and the LIST requests / directory listings and
entries each night's listing made (summary.json `listing`).

History is written as a real run would leave it: empty files under date-named prefixes
(<night>/cam<k>/<i>.jpg; never read, they are done), their rows committed through the store's own
chunk commits (synthetic predictions, 50,000 a chunk), and the run's watermark. Tonight's files are
real JPEGs. `--s3` runs the same on a moto S3 server the bench starts (history uploaded with 16
threads; a smaller history is fine there, the request count is the point).

    .venv/bin/python bench/bench_listing.py [--nights 20] [--per-night 50000] [--new 2000] [--repeats 3]
    .venv/bin/python bench/bench_listing.py --s3 --nights 20 --per-night 2500
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_score import make_model, score_cmd  # noqa: E402

CHUNK = 50_000


def night_names(nights: int, per_night: int) -> list[str]:
    return [
        f"2026-11-{n + 1:02d}/cam{c}/{i:06d}.jpg" for n in range(nights) for c in (1, 2) for i in range(per_night // 2)
    ]


def history_rows(paths: list[str]) -> pa.Table:
    n = len(paths)
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "label": pa.array(["0"] * n, pa.string()),
            "confidence": pa.array([0.9] * n, pa.float32()),
            "probabilities": pa.array([[0.9, 0.1]] * n, pa.list_(pa.float32())),
            "error": pa.nulls(n, pa.string()),
            "model_id": pa.array(["history"] * n, pa.string()),
            "model_sha256": pa.array(["0" * 64] * n, pa.string()),
        }
    )


def commit_history(root_uri: str, out: str, names: list[str]) -> None:
    """The output a finished run over `names` leaves: chunk commits, run record, watermark."""
    from vehicle_ray.data import open_root
    from vehicle_ray.score.listing import listing_key
    from vehicle_ray.score.store import OutputStore

    root, store = open_root(root_uri), OutputStore.create(out)
    chunks = []
    for k in range(0, len(names), CHUNK):
        rows = history_rows([root.full_name(n) for n in names[k : k + CHUNK]])
        chunks.append(store.commit_chunk(store.stage_chunk("history", k // CHUNK + 1, rows)))
    listing = {"key": listing_key(root, None), "root": root.uri, "glob": None, "watermark": max(names)}
    store.finish_run("history", {"run_id": "history", "listing": listing}, chunks)


def copy_tree(source: str, target: str) -> None:
    """A pristine copy of an output per repeat (local directory or s3:// prefix)."""
    if not source.startswith("s3://"):
        shutil.copytree(source, target)
        return
    import boto3

    s3 = boto3.client("s3")
    src_bucket, _, src_prefix = source[5:].partition("/")
    dst_bucket, _, dst_prefix = target[5:].partition("/")
    keys = [
        o["Key"]
        for p in s3.get_paginator("list_objects_v2").paginate(Bucket=src_bucket, Prefix=src_prefix + "/")
        for o in p.get("Contents", [])
    ]
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda k: s3.copy_object(
                    Bucket=dst_bucket,
                    Key=dst_prefix + k[len(src_prefix) :],
                    CopySource={"Bucket": src_bucket, "Key": k},
                ),
                keys,
            )
        )


def put_files(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    import boto3

    s3 = boto3.client("s3")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=bucket, Key=f"{prefix}/{kv[0]}", Body=kv[1]), files.items()))


def timed_score(cmd: list[str], out: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(r.stdout + r.stderr)[-3000:]}")
    from vehicle_ray.score.store import OutputStore

    return wall, OutputStore.open(out).read_json("summary.json")


def start_moto(work: Path) -> subprocess.Popen:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            break
        except OSError:
            time.sleep(0.3)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "VEHICLE_RAY_MODEL_CACHE": str(work / "model_cache"),
        }
    )
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nights", type=int, default=20)
    ap.add_argument("--per-night", type=int, default=50_000)
    ap.add_argument("--new", type=int, default=2000, help="tonight's new files (real JPEGs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64, help="the model's input size (and the JPEGs')")
    ap.add_argument("--s3", action="store_true", help="input and output on a moto S3 server the bench starts")
    ap.add_argument("--no-relist", action="store_true", help="skip the full-walk timing")
    args = ap.parse_args()

    from vehicle_ray.sample_data import write_sample_data

    work = Path(tempfile.mkdtemp(prefix="bench_listing_"))
    moto = start_moto(work) if args.s3 else None
    try:
        make_model(work, args.size)
        model = work / "model"
        write_sample_data(work / "jpegs", train=64, test=0, size=args.size, seed=2)
        jpegs = sorted((work / "jpegs" / "images").glob("*.jpg"))
        tonight = {
            f"2026-12-07/cam{1 + i % 2}/{i:06d}.jpg": jpegs[i % len(jpegs)].read_bytes() for i in range(args.new)
        }
        names = night_names(args.nights, args.per_night)
        t0 = time.perf_counter()
        if args.s3:
            import boto3

            s3 = boto3.client("s3")
            for bucket in ("dumps", "alone", "scores"):
                s3.create_bucket(Bucket=bucket)
            put_files("dumps", "vehicle", dict.fromkeys(names, b""))
            put_files("dumps", "vehicle", tonight)
            put_files("alone", "vehicle", tonight)
            grown_root, alone_root, out_base = "s3://dumps/vehicle/", "s3://alone/vehicle/", "s3://scores"
        else:
            grown, alone = work / "dumps", work / "alone"
            for root, files in ((grown, dict.fromkeys(names, b"")), (grown, tonight), (alone, tonight)):
                for rel, data in files.items():
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(data)
            grown_root, alone_root, out_base = str(grown), str(alone), str(work / "out")
        history_out = f"{out_base}/history"
        commit_history(grown_root, history_out, names)
        setup = time.perf_counter() - t0
        print(f"history: {len(names)} files, {args.nights} nights; {args.new} new (setup {setup:.0f}s)", flush=True)

        walls: dict[str, list[float]] = {"alone": [], "incremental": [], "relist": []}
        listings: dict[str, dict] = {}
        sides = [s for s in walls if not (s == "relist" and args.no_relist)]
        for i in range(args.repeats):
            for side in sides:
                out = f"{out_base}/{side}{i}"
                if side == "alone":
                    cmd = score_cmd(model, alone_root, out)
                else:
                    copy_tree(history_out, out)
                    cmd = score_cmd(
                        model, grown_root, out, "--incremental", *(["--relist"] if side == "relist" else [])
                    )
                wall, summary = timed_score([*cmd, "--in-process-up-to", str(args.new)], out)
                assert summary["files_seen"] == args.new, summary
                walls[side].append(wall)
                listings[side] = summary["listing"]
            print(f"repeat {i + 1}: " + ", ".join(f"{s} {walls[s][-1]:.1f}s" for s in sides), flush=True)
        med = {s: statistics.median(walls[s]) for s in sides}
        result = {
            "where": "s3 (moto)" if args.s3 else "local",
            "history_files": len(names),
            "new_files": args.new,
            "median_s": {s: round(v, 2) for s, v in med.items()},
            "repeats_s": {s: [round(w, 2) for w in walls[s]] for s in sides},
            "ratio_incremental_over_alone": round(med["incremental"] / med["alone"], 3),
            **({"ratio_relist_over_alone": round(med["relist"] / med["alone"], 3)} if "relist" in med else {}),
            "listing": {s: {k: listings[s][k] for k in ("mode", "requests", "entries")} for s in sides},
        }
        print(json.dumps(result, indent=2))
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
