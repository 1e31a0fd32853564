"""`make demo`: the whole system on generated data in local single-node mode, in a few minutes.

sample data → 2-worker Ray Train fine-tuning (tiny CPU recipe) → TTA scoring of the test images to
Parquet → an evaluation report (metrics, confusion matrix, top losses) → a summary with accuracy
against the held-out labels and where every output is.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vehicle_ray.errors import InputError

logger = logging.getLogger(__name__)


# Written into the demo's directory when the demo creates it: a later demo may replace such a directory
# without --force, never one it did not make.
MARKER = ".vehicle-ray-demo"


def prepare_out(out: str | Path, force: bool = False) -> Path:
    """The demo's directory, emptied: refused (InputError, exit 2) when it is the current or home
    directory, or a non-empty directory no demo created, unless `force` (the demo replaces it whole)."""
    out = Path(out).expanduser().resolve()
    if not force:
        if out in (Path.cwd().resolve(), Path.home().resolve()):
            raise InputError(f"demo --out {out} is the current or home directory; pick a new directory (or --force)")
        if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists()):
            raise InputError(
                f"demo --out {out} is not empty and was not made by the demo; pick a new directory (or --force "
                "to replace it)"
            )
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `vehicle-ray demo`: a later demo replaces this directory\n")
    return out


def run_demo(out: str | Path, workers: int = 2, force: bool = False) -> dict[str, object]:
    """Run the whole pipeline into `out` (see prepare_out for when it may be replaced) and log a summary."""
    out = prepare_out(out, force)
    # the pipeline's imports (Ray, pandas, the training stack) come after the check: a refused --out is instant
    import pandas as pd

    from vehicle_ray import columns as col
    from vehicle_ray.data import LabeledFiles
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.report.evaluate import evaluate
    from vehicle_ray.sample_data import FN_COL, LABEL_COL, write_sample_data
    from vehicle_ray.score.driver import score
    from vehicle_ray.score.options import ScoreOptions
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.driver import train

    data, model, scores = out / "data", out / "model", out / "scores"
    logger.info(f"[1/4] sample data -> {data}")
    write_sample_data(data, train=400, test=100, size=64, seed=0)
    logger.info(f"[2/4] training resnet18 from scratch on {workers} Ray Train CPU workers -> {model}")
    opts = TrainOptions(
        csv=data / "train.csv", images=data / "images", out=model, workers=workers, storage_path=str(out / "ray_runs")
    )
    trained = train(opts, load_recipe("tiny_cpu"))
    logger.info(f"[3/4] TTA scoring of the test images with Ray Data -> {scores}")
    summary = score(model, data / "test.csv", scores, images=data / "images", opts=ScoreOptions())
    truth = pd.read_csv(data / "test_labels.csv", dtype=str)
    truth[col.PATH] = [str(data / "images" / n) for n in truth[FN_COL]]
    predictions = pd.read_parquet(scores / "predictions", columns=[col.PATH, col.LABEL])
    joined = truth.merge(predictions, on=col.PATH, how="left")
    accuracy = float((joined[col.LABEL] == joined[LABEL_COL]).mean())
    report = out / "report"
    logger.info(f"[4/4] evaluation report on the held-out labels -> {report}")
    evaluate(model, LabeledFiles(data / "test_labels.csv", data / "images"), report)
    result = {
        "train_seconds": round(trained.seconds, 1),
        "valid_accuracy": round(trained.metrics.get("accuracy", float("nan")), 4),
        "test_images": len(truth),
        "scored": summary.scored,
        "errors": summary.errors,
        "test_accuracy_tta": round(accuracy, 4),
        "score_images_per_second": summary.images_per_second,
        "model": str(model),
        "training_curves": str(model / "training_curves.png"),
        "predictions": str(scores / "predictions"),
        "summary": str(scores / "summary.json"),
        "report": str(report / "report.md"),
        "confusion_matrix": str(report / "confusion_matrix.png"),
        "top_losses": str(report / "top_losses.png"),
    }
    logger.info("\ndemo summary")
    for key, value in result.items():
        logger.info(f"  {key:24s} {value}")
    return result
