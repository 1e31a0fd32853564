"""Whole-process wall time: `vehicle-ray train --workers 1` vs plain fastai fit_one_cycle, same run.

Both train the same recipe on the same generated data; the Ray side includes starting Ray, the
Train controller and worker, per-epoch checkpoints and the artifact export. Reports medians and the
ratio, plus validation accuracy of each.

    .venv/bin/python bench/bench_train.py [--repeats 3] [--config tiny_cpu] [--train 400]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vehicle_ray.sample_data import write_sample_data

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    write_sample_data(work / "data", train=args.train, test=0, size=args.size, seed=0)
    csv, images = str(work / "data" / "train.csv"), str(work / "data" / "images")
    rows = {"ray": [], "fastai": []}
    for i in range(args.repeats):
        export_dir = work / f"fastai{i}"
        export_dir.mkdir()
        wall, out = timed(
            [sys.executable, str(HERE / "plain_fastai_train.py"), csv, images, args.config, str(export_dir)]
        )
        rows["fastai"].append((wall, json.loads(out.strip().splitlines()[-1])["accuracy"]))
        model = work / f"model{i}"
        wall, _ = timed(
            [
                sys.executable,
                "-m",
                "vehicle_ray.cli",
                "train",
                "--csv",
                csv,
                "--images",
                images,
                "--config",
                args.config,
                "--workers",
                "1",
                "--out",
                str(model),
                "--storage-path",
                str(work / "runs"),
            ]
        )
        rows["ray"].append((wall, json.loads((model / "model.json").read_text())["metrics"]["accuracy"]))
        print(
            f"repeat {i + 1}: fastai {rows['fastai'][-1][0]:.1f}s acc {rows['fastai'][-1][1]:.4f} | "
            f"vehicle-ray {rows['ray'][-1][0]:.1f}s acc {rows['ray'][-1][1]:.4f}",
            flush=True,
        )
    med = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    acc = {k: statistics.median(a for _, a in v) for k, v in rows.items()}
    result = {
        "config": args.config,
        "images": args.train,
        "size": args.size,
        "repeats": args.repeats,
        "median_wall_s": med,
        "median_accuracy": acc,
        "ratio_ray_over_fastai": round(med["ray"] / med["fastai"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
