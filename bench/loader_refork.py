"""What fastai's fresh DataLoader workers cost per epoch (issue #26).

fastai's DataLoader.__iter__ builds a new torch `_MultiProcessingDataLoaderIter` on every pass, so its
worker processes are forked again for every training and validation pass and torch's
`persistent_workers` never takes effect. Keeping them would be wrong anyway: a rank's epoch shard
(train.sharding.EpochShard) reaches the workers through that fork. This measures the price: the time
from starting a pass to its first batch with K workers, against the same with in-process loading (0
workers), on the recipe's DataLoaders (Resize + fastai's aug_transforms) at 299 px.

    .venv/bin/python bench/loader_refork.py [--workers 2] [--size 299] [--bs 64] [--passes 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.recipe import load_recipe
from vehicle_ray.sample_data import write_sample_data
from vehicle_ray.train.learner import build_dataloaders


def first_batch_seconds(dl, passes: int) -> tuple[list[float], list[float]]:
    """Per pass: seconds to the first batch, and to the end of the pass."""
    first, whole = [], []
    for _ in range(passes):
        t0 = time.perf_counter()
        it = iter(dl)
        next(it)
        first.append(time.perf_counter() - t0)
        for _ in it:
            pass
        whole.append(time.perf_counter() - t0)
    return first, whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_sample_data(out, train=4 * args.bs, test=0, size=args.size + 21, seed=0)
        recipe = load_recipe("tiny_cpu").with_overrides(size=args.size, bs=args.bs)
        data = read_labeled_csv(out / "train.csv", out / "images")
        _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
        for workers in (0, args.workers):
            dl = build_dataloaders(data, recipe, valid_idx, num_workers=workers).train
            first, whole = first_batch_seconds(dl, args.passes)
            each = ", ".join(f"{t:.2f}" for t in first)
            print(
                f"{workers} loader workers, {args.size}px, bs {args.bs}, {len(dl)} batches: first batch "
                f"{statistics.median(first):.2f}s (median of {args.passes} passes; {each}), "
                f"whole pass {statistics.median(whole):.2f}s"
            )


if __name__ == "__main__":
    main()
