"""The review page: one static HTML file for the images a person should look at, and the labels they give.

    DIR/index.html     the page (templates/review.html with the items embedded as JSON); opens from file://
    DIR/thumbs/*.jpg   thumbnails made here, so the page holds no storage URLs or credentials
    DIR/evaluation/    (training data only) evaluate's report on the labeled set the page was made from

Two sources. A scoring run (`review_run`): its `decision == uncertain` images, the lowest-confidence K of
the rest, and a seeded random quality-control sample per predicted class. A labeled training set
(`review_training`): the images whose given label the model finds least likely (its loss on them, from
the evaluate path), which is where mislabelled training data shows up. The page exports a CSV in the
training CSV format (file name relative to the image root, label) that `train --csv A --csv B` takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
from PIL import Image

from vehicle_ray import columns as col
from vehicle_ray.data import FN, ImageRoot, LabeledFiles, open_root, read_csv, resolve_column
from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri
from vehicle_ray.report.evaluate import evaluate
from vehicle_ray.score.decode import DecodeError, read_file
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.store import PREDICTIONS, OutputStore

logger = logging.getLogger(__name__)

THUMB_PX = 192
THUMB_READERS = 8  # thumbnails are read in parallel: object stores answer in tens of milliseconds each
TOP_CLASSES = 3  # probabilities shown per image
DATA_MARKER = "/*__REVIEW_DATA__*/"  # where templates/review.html takes the page's JSON
UNCERTAIN, LOWEST, QC, DISAGREES = "uncertain", "lowest confidence", "quality-control sample", "label disagreement"


@dataclass(frozen=True)
class ReviewItem:
    """One image on the page: `name` is relative to the image root (the exported CSV's file name)."""

    name: str
    group: str
    label: str  # the model's prediction
    confidence: float
    top: list[tuple[str, float]]
    decision: str | None = None
    given: str | None = None  # training data: the label in the CSV
    loss: float | None = None
    thumb: str = ""


@dataclass(frozen=True)
class ReviewPage:
    """What the command wrote, for its one-line summary."""

    path: Path
    items: int
    groups: dict[str, int]
    image_root: str
    skipped: int  # images whose thumbnail could not be made (left off the page)


def review_run(
    output: str | Path,
    out: str | Path,
    run: str | None = None,
    lowest: int = 50,
    qc_per_class: int = 10,
    max_uncertain: int = 2000,
    image_root: str | None = None,
    seed: int = 0,
) -> ReviewPage:
    """The page for one committed scoring run of `output` (default: the latest finished run)."""
    if lowest < 0 or qc_per_class < 0 or max_uncertain < 0:
        raise InputError("--lowest, --qc-per-class and --max-uncertain must be >= 0")
    store = OutputStore.open(output)
    records = store.run_records()
    if not records:
        raise InputError(f"{output} has no finished scoring run")
    run = run or max(records)
    if run not in records:
        raise InputError(f"run {run} is not a finished run of {output} (runs: {', '.join(sorted(records))})")
    classes = list(records[run].get("monitoring", {}).get("class_rates") or {})
    rows = _run_predictions(store, run)
    if rows.empty:
        raise InputError(f"run {run} of {output} has no predictions")
    if not classes:
        raise InputError(f"run {run} of {output} does not record its model's classes")
    chosen = select_for_review(rows, lowest, qc_per_class, max_uncertain, seed)
    root = image_root or common_root(chosen[col.PATH].tolist())
    items = _run_items(chosen, classes, root)
    return write_page(out, items, classes, f"Scoring run {run}", ("fn", "label"), open_root(root))


def _run_items(chosen: pd.DataFrame, classes: list[str], root: str) -> list[ReviewItem]:
    """The chosen prediction rows as page items named relative to `root` (the exported CSV's file names)."""
    prefix = root.rstrip("/") + "/"
    outside = [p for p in chosen[col.PATH] if not p.startswith(prefix)]
    if outside:
        raise InputError(f"{len(outside)} images are not under --image-root {root} (first: {outside[0]})")
    return [
        ReviewItem(
            name=r.path[len(prefix) :],
            group=r.group,
            label=r.label,
            confidence=float(r.confidence),
            top=top_probabilities(r.probabilities, classes),
            decision=getattr(r, col.DECISION, None),
        )
        for r in chosen.itertuples()
    ]


def _run_predictions(store: OutputStore, run: str) -> pd.DataFrame:
    """The committed prediction rows of one run (its hive partition), only the columns the page shows."""
    files = [f for f in store.committed_files(PREDICTIONS) if f"/run={run}/" in f]
    if not files:
        return pd.DataFrame()
    dataset = pads.dataset(files, filesystem=store.fs, format="parquet")
    shown = (col.PATH, col.LABEL, col.CONFIDENCE, col.PROBABILITIES, col.DECISION)
    columns = [c for c in shown if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


def select_for_review(
    rows: pd.DataFrame, lowest: int, qc_per_class: int, max_uncertain: int, seed: int
) -> pd.DataFrame:
    """The rows a person should see, each once, with its `group`: every uncertain one (up to
    `max_uncertain`, least confident first), the `lowest` least confident of the rest, and a random
    sample of `qc_per_class` per predicted class of what is left (the model's confident calls, checked)."""
    rows = rows.sort_values([col.CONFIDENCE, col.PATH], kind="stable")
    uncertain = rows[rows[col.DECISION] == "uncertain"] if col.DECISION in rows else rows.iloc[:0]
    uncertain = uncertain.head(max_uncertain)
    rest = rows.drop(uncertain.index)
    low = rest.head(lowest)
    rest = rest.drop(low.index)
    rng = np.random.default_rng(seed)
    qc = [
        part.iloc[np.sort(rng.choice(len(part), size=min(qc_per_class, len(part)), replace=False))].assign(
            group=f"{QC}: {label}"
        )
        for label, part in rest.groupby(col.LABEL, sort=True)
    ]
    return pd.concat([uncertain.assign(group=UNCERTAIN), low.assign(group=LOWEST), *qc], ignore_index=True)


def review_training(
    labeled: LabeledFiles,
    model: str | Path,
    out: str | Path,
    top: int = 100,
    opts: ScoreOptions = ScoreOptions(),
    allow_pickle: bool = False,
) -> ReviewPage:
    """The page for a labeled set: its `top` images by the model's loss on the given label (scored with
    the evaluate path, whose report lands in DIR/evaluation)."""
    if top < 1:
        raise InputError("--top must be >= 1")
    out = Path(out)
    evaluate(model, labeled, out / "evaluation", opts, allow_pickle=allow_pickle)
    scored = pd.read_parquet(out / "evaluation" / "predictions.parquet")
    classes = json.loads((out / "evaluation" / "metrics.json").read_text())["confusion_matrix"]["classes"]
    worst = scored.sort_values([col.LOSS, FN], ascending=[False, True], kind="stable").head(top)
    items = [
        ReviewItem(
            name=r[FN],
            group=DISAGREES,
            label=r[col.LABEL],
            confidence=float(r[col.CONFIDENCE]),
            top=top_probabilities(r[col.PROBABILITIES], classes),
            decision=r.get(col.DECISION),
            given=r[col.ACTUAL],
            loss=round(float(r[col.LOSS]), 4),
        )
        for _, r in worst.iterrows()
    ]
    header = _csv_header(labeled.csv, labeled.fn_col, labeled.label_col)
    title = f"Training data {Path(str(labeled.csv)).name}"
    return write_page(out, items, classes, title, header, open_root(labeled.images))


def _csv_header(csv: str | Path, fn_col: str | int, label_col: str | int) -> tuple[str, str]:
    """The training CSV's own column names: the export can replace or extend it as it is."""
    df = read_csv(csv)
    return resolve_column(df, fn_col, "file-name", csv), resolve_column(df, label_col, "label", csv)


def top_probabilities(probabilities: Any, classes: list[str], k: int = TOP_CLASSES) -> list[tuple[str, float]]:
    """The k most likely classes with their probabilities: what a reviewer weighs the image against."""
    p = np.asarray(probabilities, dtype=float)
    return [(classes[i], round(float(p[i]), 4)) for i in np.argsort(-p, kind="stable")[:k]]


def common_root(paths: list[str]) -> str:
    """The deepest directory (local path or URI) that holds every path: the image root the exported
    file names are relative to."""
    if not paths:
        raise InputError("no images to review")
    schemes = {p.split("://", 1)[0] if is_uri(p) else "" for p in paths}
    if len(schemes) > 1:
        raise InputError(f"the images mix storage schemes ({', '.join(sorted(schemes))}): pass --image-root")
    scheme = schemes.pop()
    bare = [p.split("://", 1)[1] if scheme else p for p in paths]
    root = posixpath.commonpath([posixpath.dirname(p) for p in bare])
    return f"{scheme}://{root}" if scheme else root


def write_page(
    out: str | Path,
    items: list[ReviewItem],
    classes: list[str],
    title: str,
    header: tuple[str, str],
    root: ImageRoot,
) -> ReviewPage:
    """Thumbnails under DIR/thumbs and DIR/index.html; an image that cannot be read or decoded is left
    off the page with a warning (one bad file never stops a review)."""
    out = Path(out)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(THUMB_READERS) as pool:
        made = list(pool.map(lambda args: _thumbnail(root, out, *args), enumerate(items)))
    kept = [item for item in made if item is not None]
    payload = {
        "title": title,
        "classes": classes,
        "header": list(header),
        "storage_key": "vehicle-ray-review:" + _page_key(title, kept),
        "items": [asdict(item) for item in kept],
    }
    html = resources.files("vehicle_ray.report").joinpath("templates", "review.html").read_text()
    embedded = json.dumps(payload).replace("</", "<\\/")  # no "</script>" inside the script element
    (out / "index.html").write_text(html.replace(DATA_MARKER, embedded))
    groups: dict[str, int] = {}
    for item in kept:
        groups[item.group] = groups.get(item.group, 0) + 1
    return ReviewPage(out / "index.html", len(kept), groups, root.uri, len(items) - len(kept))


def _page_key(title: str, items: list[ReviewItem]) -> str:
    """Local storage key: the same page made again keeps its labels, another page starts clean."""
    return hashlib.sha256(json.dumps([title, [i.name for i in items]]).encode()).hexdigest()[:16]


def _thumbnail(root: ImageRoot, out: Path, index: int, item: ReviewItem) -> ReviewItem | None:
    thumb = f"thumbs/{index:05d}.jpg"
    try:
        img = Image.open(BytesIO(read_file(root, item.name)))
        img.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEGs decode at reduced scale: fast on large photos
        img = img.convert("RGB")
        img.thumbnail((THUMB_PX, THUMB_PX))
        img.save(out / thumb, "JPEG", quality=85)
    except (OSError, ValueError, DecodeError, Image.DecompressionBombError) as exc:
        logger.warning(f"review: left off {item.name}: {exc}")
        return None
    return ReviewItem(**{**asdict(item), "thumb": thumb})
