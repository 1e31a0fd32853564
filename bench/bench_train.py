"""Whole-process wall time: `vehicle-ray train --workers N` vs plain fastai fit_one_cycle, same run.

Both train the same recipe on the same generated data; the Ray side includes starting Ray, the
Train controller and workers, per-epoch checkpoints and the artifact export. Reports medians and the
ratio, plus validation accuracy of each, and each side's fixed part: the wall time minus the sum of
its epoch times (start-up before the first epoch, the export after the last), from the epoch times
vehicle-ray records in metrics.csv and plain_fastai_train.py prints. Each repeat also times
ray_train_floor.py, Ray Train with the same workers and nothing to train (whole process): the part
of vehicle-ray's fixed part that any Ray Train job pays here, and what vehicle-ray adds over it.
`median_overhead_s` is vehicle-ray's whole process minus that floor minus plain fastai's epochs in the
same repeat: everything vehicle-ray adds, its slower epochs included.

    .venv/bin/python bench/bench_train.py [--repeats 3] [--config tiny_cpu] [--train 400] [--workers 1]
"""

import argparse
import csv
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


def epoch_sum(metrics_csv: Path) -> float:
    """Sum of the epoch times vehicle-ray recorded (metrics.csv's `seconds` column)."""
    with metrics_csv.open() as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="vehicle-ray train --workers")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    write_sample_data(work / "data", train=args.train, test=0, size=args.size, seed=0)
    labels, images = str(work / "data" / "train.csv"), str(work / "data" / "images")
    rows: dict[str, list[tuple[float, float, float]]] = {"ray": [], "fastai": []}  # (wall, accuracy, epochs)
    floor: list[float] = []
    for i in range(args.repeats):
        floor_cmd = [sys.executable, str(HERE / "ray_train_floor.py"), str(args.workers), str(work / f"floor{i}")]
        floor.append(timed(floor_cmd)[0])
        export_dir = work / f"fastai{i}"
        export_dir.mkdir()
        wall, out = timed(
            [sys.executable, str(HERE / "plain_fastai_train.py"), labels, images, args.config, str(export_dir)]
        )
        plain = json.loads(out.strip().splitlines()[-1])
        rows["fastai"].append((wall, plain["accuracy"], sum(plain["epoch_seconds"])))
        model = work / f"model{i}"
        wall, _ = timed(
            [
                sys.executable,
                "-m",
                "vehicle_ray.cli",
                "train",
                "--csv",
                labels,
                "--images",
                images,
                "--config",
                args.config,
                "--workers",
                str(args.workers),
                "--out",
                str(model),
                "--storage-path",
                str(work / "runs"),
            ]
        )
        accuracy = json.loads((model / "model.json").read_text())["metrics"]["accuracy"]
        rows["ray"].append((wall, accuracy, epoch_sum(model / "metrics.csv")))
        last = {k: v[-1] for k, v in rows.items()}
        sides = [f"{k} {w:.1f}s (epochs {e:.1f}s, fixed {w - e:.1f}s) acc {a:.4f}" for k, (w, a, e) in last.items()]
        print(f"repeat {i + 1}: " + " | ".join(sides) + f" | ray train floor {floor[-1]:.1f}s", flush=True)

    def median(k: str, field: int) -> float:
        return round(statistics.median(r[field] for r in rows[k]), 2)

    result = {
        "config": args.config,
        "images": args.train,
        "size": args.size,
        "workers": args.workers,
        "repeats": args.repeats,
        "wall_s": {k: [round(r[0], 1) for r in v] for k, v in rows.items()},
        "median_wall_s": {k: median(k, 0) for k in rows},
        "median_epochs_s": {k: median(k, 2) for k in rows},
        "median_fixed_s": {k: round(statistics.median(r[0] - r[2] for r in rows[k]), 2) for k in rows},
        "median_fixed_over_floor_s": round(
            statistics.median(w - e - f for (w, _, e), f in zip(rows["ray"], floor, strict=True)), 2
        ),
        # what vehicle-ray costs beyond Ray Train's floor and plain fastai's own epochs (issue #27's bar: < 5 s)
        "median_overhead_s": round(
            statistics.median(r[0] - f - p[2] for r, p, f in zip(rows["ray"], rows["fastai"], floor, strict=True)),
            2,
        ),
        "median_accuracy": {k: median(k, 1) for k in rows},
        "ray_train_floor_s": [round(f, 1) for f in floor],
        "median_ray_train_floor_s": round(statistics.median(floor), 2),
        "ratio_ray_over_fastai": round(median("ray", 0) / median("fastai", 0), 3),
        "epochs_ratio_ray_over_fastai": round(median("ray", 2) / median("fastai", 2), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
