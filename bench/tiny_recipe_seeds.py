"""How far the `tiny_cpu` recipe's accuracy moves with the seed: the margin the tests' accuracy bounds need.

The end-to-end tests train `tiny_cpu` once (2 workers, the sample data at 64 px, seed 42) and check
that the model learned. The training is deterministic for a seed, but any change that draws random
numbers in another order (a callback, a sharded validation) puts the run on another seed's trajectory,
and from-scratch training on 320 images lands in a spread. This script trains the recipe for several
seeds on the tests' data and prints, per seed, the validation accuracy (model.json) and the test-set
accuracy of `vehicle-ray evaluate` with TTA and without; then the minimum and median of each.

    tiny_recipe_seeds.py OUT_DIR [--seeds 42,1,2,3] [--lr 0.005] [--workers 2]
"""

import argparse
import statistics
from pathlib import Path

from vehicle_ray.cluster import init_ray
from vehicle_ray.data import LabeledFiles
from vehicle_ray.decision import OperatingTarget
from vehicle_ray.recipe import load_recipe
from vehicle_ray.report.evaluate import evaluate
from vehicle_ray.sample_data import write_sample_data
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import train


def run_seed(root: Path, sample: Path, seed: int, lr: float | None, workers: int) -> dict[str, float]:
    """Train `tiny_cpu` with `seed` (and `lr`, as `--lr` would set it) as the tests' fixture does; evaluate it."""
    recipe = load_recipe("tiny_cpu").with_overrides(seed=seed, lr=lr)
    out = root / f"seed{seed}"
    trained = train(
        TrainOptions(
            csv=sample / "train.csv",
            images=sample / "images",
            out=out / "model",
            workers=workers,
            storage_path=str(out / "runs"),
            target=OperatingTarget("1", target_recall=0.95),
        ),
        recipe,
    )
    report = evaluate(out / "model", LabeledFiles(sample / "test_labels.csv", sample / "images"), out / "report")
    return {
        "valid": trained.metrics["accuracy"],
        "test_tta": report["accuracy"],
        "test_no_tta": report["accuracy_no_tta"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", default="42,1,2,3")
    parser.add_argument("--lr", type=float, default=None, help="every stage's lr (default: the recipe's)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    init_ray(num_cpus=2)
    sample = args.out / "sample"
    write_sample_data(sample, train=400, test=100, size=64, seed=0)  # the tests' sample_dir
    rows = {seed: run_seed(args.out, sample, seed, args.lr, args.workers) for seed in map(int, args.seeds.split(","))}
    print(f"{'seed':>6} {'valid':>7} {'test_tta':>9} {'test_no_tta':>12}")
    for seed, r in rows.items():
        print(f"{seed:>6} {r['valid']:>7.4f} {r['test_tta']:>9.2f} {r['test_no_tta']:>12.2f}")
    for stat in (min, statistics.median):
        cells = [stat(r[k] for r in rows.values()) for k in ("valid", "test_tta", "test_no_tta")]
        print(f"{stat.__name__:>6} {cells[0]:>7.4f} {cells[1]:>9.2f} {cells[2]:>12.2f}")


if __name__ == "__main__":
    main()
