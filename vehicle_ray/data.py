"""Labeled CSV → validated items, image roots (local or URI) and the train/valid split.

Everything here runs on the driver before any Ray work starts, so that bad input fails in a second
with one clear line (InputError → exit 2) rather than minutes later inside a worker.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from vehicle_ray.errors import InputError
from vehicle_ray.location import Location, is_uri, resolve_location

FN = "fn"
LABEL = "label"
_SHOW = 5  # how many offending names an error message quotes


@dataclass(frozen=True)
class ImageRoot(Location):
    """An image directory (open_root checked that it exists); `path(name)` and `full_name(name)` of its
    files come from Location."""


@dataclass(frozen=True)
class LabeledSet:
    """Validated rows of a labeled CSV: `items` has columns fn (relative name) and label (string)."""

    items: pd.DataFrame
    root: ImageRoot
    classes: list[str]


def require_local_root(root: ImageRoot) -> None:
    """fastai's DataLoaders read training images by local path (so export.pkl stays pure fastai): a URI
    root must be copied to local disk first (vehicle_ray.train.staging.local_images)."""
    if not root.is_local:
        raise InputError(f"fastai reads images by local path; copy {root.uri} to local disk first")


def open_root(images: str | Path) -> ImageRoot:
    """Resolve a local directory or a filesystem URI to an existing image directory."""
    text = str(images)
    fs, base, info = resolve_location(text, "image root")
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"image directory not found: {text}")
    if info.type != pafs.FileType.Directory:
        raise InputError(f"image root is not a directory: {text}")
    return ImageRoot(uri=text, fs=fs, base=base)


def read_csv(csv: str | Path) -> pd.DataFrame:
    """Read a CSV (a local path or a URI the driver can read) with every cell as a string (labels of any
    type become class names)."""
    fs, path, info = resolve_location(csv, "CSV")
    if info.type != pafs.FileType.File:
        raise InputError(f"CSV file not found: {csv}")
    try:
        with fs.open_input_file(path) as f:
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read CSV {csv}: {str(exc).splitlines()[0] if str(exc) else 'empty file'}") from exc
    if df.empty:
        raise InputError(f"CSV {csv} has no rows")
    return df


def resolve_column(df: pd.DataFrame, col: str | int, what: str, csv: str | Path) -> str:
    """A column given by name, or by 0-based index (as an int or a string of digits)."""
    if isinstance(col, str) and col in df.columns:
        return col
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
        idx = int(col)
        if 0 <= idx < len(df.columns):
            return str(df.columns[idx])
        raise InputError(f"{what} column index {idx} is out of range: {csv} has {len(df.columns)} columns")
    raise InputError(f"{what} column {col!r} not in {csv} (columns: {', '.join(map(str, df.columns))})")


def _quote(names: list[str]) -> str:
    more = f" (and {len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def check_file_names(names: pd.Series, csv: str | Path) -> None:
    """File names must be non-empty, unique and stay inside the image root."""
    empty = names[names.str.strip() == ""]
    if len(empty):
        raise InputError(f"{len(empty)} rows of {csv} have an empty file name (first at row {empty.index[0] + 2})")
    dups = names[names.duplicated()].unique().tolist()
    if dups:
        raise InputError(f"{len(dups)} duplicate file names in {csv}: {_quote(dups)}")
    escaping = [
        n
        for n in names
        if is_uri(n)
        or n.startswith(("/", "\\"))
        or (len(n) > 1 and n[1] == ":")
        or posixpath.normpath(n.replace("\\", "/")).startswith("..")
    ]
    if escaping:
        raise InputError(f"{len(escaping)} file names in {csv} escape the image root: {_quote(escaping)}")


def missing_files(root: ImageRoot, names: list[str], chunk: int = 2000) -> list[str]:
    """Names whose file does not exist under root (queried in chunks: one call per chunk on object stores)."""
    missing: list[str] = []
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        infos = root.fs.get_file_info([root.path(n) for n in part])
        missing += [n for n, info in zip(part, infos, strict=True) if info.type != pafs.FileType.File]
    return missing


@dataclass(frozen=True)
class LabeledFiles:
    """Where a labeled set is: its CSV (or several, later ones overriding a file name's label), the image
    root its file names are relative to, and which columns hold the names and the labels."""

    csv: str | Path | Sequence[str | Path]
    images: str | Path
    fn_col: str | int = 0
    label_col: str | int = 1

    def read(self) -> LabeledSet:
        return read_labeled_csv(self.csv, self.images, self.fn_col, self.label_col)


def read_labeled_csv(
    csv: str | Path | Sequence[str | Path], images: str | Path, fn_col: str | int = 0, label_col: str | int = 1
) -> LabeledSet:
    """Read and validate one labeled CSV, or several (fastai's from_df convention: fn_col=0, label_col=1).
    With several, a later file's label for a file name overrides an earlier one's, so corrections
    exported from a review page go last; each file is validated on its own, with the same columns."""
    csvs = [csv] if isinstance(csv, (str, Path)) else list(csv)
    items = pd.concat([_read_items(c, fn_col, label_col) for c in csvs], ignore_index=True)
    items = items.drop_duplicates(FN, keep="last").reset_index(drop=True)
    shown = " + ".join(map(str, csvs))
    classes = sorted(items[LABEL].unique().tolist())
    if len(classes) < 2:
        raise InputError(f"{shown} has a single class ({classes[0]!r}); classification needs at least two")
    root = open_root(images)
    missing = missing_files(root, items[FN].tolist())
    if missing:
        raise InputError(
            f"{len(missing)} of {len(items)} images listed in {shown} do not exist under {images}: {_quote(missing)}"
        )
    return LabeledSet(items=items, root=root, classes=classes)


def _read_items(csv: str | Path, fn_col: str | int, label_col: str | int) -> pd.DataFrame:
    """One CSV's validated (fn, label) rows."""
    df = read_csv(csv)
    fn = resolve_column(df, fn_col, "file-name", csv)
    label = resolve_column(df, label_col, "label", csv)
    if fn == label:
        raise InputError(f"file-name and label columns are the same column ({fn!r})")
    items = pd.DataFrame({FN: df[fn].str.strip(), LABEL: df[label].str.strip()})
    check_file_names(items[FN], csv)
    blank = items[items[LABEL] == ""]
    if len(blank):
        raise InputError(f"{len(blank)} rows of {csv} have an empty label (first: {blank[FN].iloc[0]})")
    return items


def split_indices(n: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train/valid split (like fastai's RandomSplitter, but reproducible anywhere)."""
    if not 0.0 < valid_pct < 1.0:
        raise InputError(f"--valid-pct must be between 0 and 1 (got {valid_pct})")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * valid_pct)))
    if n_valid >= n:
        raise InputError(f"--valid-pct {valid_pct} leaves no training images out of {n}")
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def check_split(data: LabeledSet, train_idx: np.ndarray) -> None:
    """fastai builds the vocabulary from the training split: every class must appear there."""
    absent = sorted(set(data.classes) - set(data.items[LABEL].iloc[train_idx]))
    if absent:
        raise InputError(
            f"classes {_quote(absent)} have no training images after the split; lower --valid-pct or add images"
        )
