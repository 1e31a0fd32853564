"""Accuracy parity across worker counts: plain fastai in one process vs `vehicle-ray train` on N Ray
Train CPU workers (gloo), same recipe, same seeds, on a real image set (digits_task.py).

The recipe's `bs` is the global batch, so every side trains with the same batch and the same number of
optimizer steps, and BatchNorm takes its statistics over that global batch on every worker (with
--no-sync-bn over each worker's bs/N images, DDP's default); what differs is the order of the data
(each rank draws its own shard) and the random draws of the augmentation. Prints the holdout
accuracy per seed and side, the means, each side's difference from plain fastai's mean, and a Markdown
table for BENCHMARKS.md.

Each training's result is kept in OUT_DIR/results/ and not run again, and the table reads them from
there: on a busy machine, run one process per seed into the same OUT_DIR, then once more with all the
seeds, which only prints the table.

    nice -n 10 .venv/bin/python bench/bench_parity.py OUT_DIR [--seeds 1,2,3] [--workers 2,4] [--size 16] [--epochs 5]
        [--no-sync-bn]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from digits_task import digits_recipe, holdout_accuracy, plain_fastai, vehicle_ray, write_digits

from vehicle_ray.cluster import init_ray


def run_side(data: Path, out: Path, seed: int, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(holdout accuracy, seconds) of one training: plain fastai for workers == 0, else vehicle-ray."""
    recipe = dataclasses.replace(digits_recipe(seed, args.size, args.epochs, args.lr, args.bs), sync_bn=args.sync_bn)
    t0 = time.perf_counter()
    if workers == 0:
        learn = plain_fastai(data, recipe)
    else:
        learn = vehicle_ray(data, recipe, workers, out / f"seed{seed}_w{workers}")
    return holdout_accuracy(learn, data), time.perf_counter() - t0


def shared_digits(out: Path, size: int) -> Path:
    """OUT/digits, written once even when several bench processes start together (an atomic rename)."""
    data = out / "digits"
    if not data.exists():
        tmp = write_digits(Path(tempfile.mkdtemp(prefix="digits_", dir=out)), size)
        try:
            tmp.rename(data)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp)
    return data


def result(out: Path, data: Path, seed: int, side: str, workers: int, args: argparse.Namespace) -> float:
    """The holdout accuracy of one training, from OUT/results/ or trained now and kept there."""
    batchnorm = "" if workers < 2 or args.sync_bn else "-ghostbn"
    path = out / "results" / f"seed{seed}-w{workers}{batchnorm}.json"
    if not path.exists():
        accuracy, seconds = run_side(data, out, seed, workers, args)
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"accuracy": accuracy, "seconds": round(seconds, 1)}))
        print(f"seed {seed} {side}: holdout accuracy {accuracy:.4f} ({seconds:.0f}s)", flush=True)
    return json.loads(path.read_text())["accuracy"]


def markdown(sides: list[str], rows: dict[int, dict[str, float]]) -> str:
    lines = ["| seed | " + " | ".join(sides) + " |", "| --- |" + " --- |" * len(sides)]
    lines += [f"| {seed} | " + " | ".join(f"{r[s]:.4f}" for s in sides) + " |" for seed, r in rows.items()]
    means = {s: statistics.mean(r[s] for r in rows.values()) for s in sides}
    spreads = {s: statistics.stdev(r[s] for r in rows.values()) for s in sides}
    lines.append("| mean | " + " | ".join(f"**{means[s]:.4f}**" for s in sides) + " |")
    lines.append("| std over seeds | " + " | ".join(f"{spreads[s]:.4f}" for s in sides) + " |")
    plain = means[sides[0]]
    lines.append("| mean - plain fastai's | " + " | ".join(f"{100 * (means[s] - plain):+.2f} pt" for s in sides) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--workers", default="2,4", help="vehicle-ray worker counts to compare")
    parser.add_argument("--size", type=int, default=16, help="px; the digits are 8x8 scans")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bs", type=int, default=64, help="the global batch, on every side")
    parser.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vehicle-ray's BatchNorm statistics over the global batch (the default) or per worker",
    )
    args = parser.parse_args()
    init_ray(num_cpus=2)
    args.out.mkdir(parents=True, exist_ok=True)
    data = shared_digits(args.out, args.size)
    counts = [0, *map(int, args.workers.split(","))]
    sides = ["plain fastai, 1 process", *(f"vehicle-ray, {n} workers" for n in counts[1:])]
    rows = {
        seed: {side: result(args.out, data, seed, side, n, args) for side, n in zip(sides, counts, strict=True)}
        for seed in map(int, args.seeds.split(","))
    }
    batchnorm = "over the global batch" if args.sync_bn else "per worker"
    print(
        f"\n{args.size} px, {args.epochs} epochs, lr {args.lr:g}, global batch {args.bs}, "
        f"BatchNorm statistics {batchnorm}, holdout 400 images:\n"
    )
    print(markdown(sides, rows))


if __name__ == "__main__":
    main()
