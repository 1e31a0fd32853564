"""The listing of a scoring run: a directory/URI walk or a CSV listing, streamed into a Parquet manifest.

The listing is never one giant Python list on the driver: names arrive in chunks of MANIFEST_CHUNK,
already-done files (--incremental) are dropped by 64-bit path hash, and each chunk becomes one manifest
file under the run's staging directory.
"""

from __future__ import annotations

import fnmatch
import posixpath
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vehicle_ray.data import ImageRoot, check_file_names, is_uri, open_root, read_csv, resolve_column
from vehicle_ray.errors import InputError
from vehicle_ray.score.decode import IMAGE_EXTENSIONS
from vehicle_ray.score.done_index import path_hashes
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.store import STAGING, OutputStore

MANIFEST_CHUNK = 100_000


def walk(root: ImageRoot, glob: str | None) -> Iterator[str]:
    """Relative names of image files under root, one directory listing at a time (sorted, streamed)."""
    stack = [root.base]
    while stack:
        infos = sorted(root.fs.get_file_info(pafs.FileSelector(stack.pop(), recursive=False)), key=lambda i: i.path)
        for info in infos:
            if info.type == pafs.FileType.File:
                rel = posixpath.relpath(info.path, root.base)
                if fnmatch.fnmatch(rel, glob) if glob else rel.lower().endswith(IMAGE_EXTENSIONS):
                    yield rel
        # subdirectories after this directory's files, in sorted order (a stack pops the last first)
        stack += reversed([i.path for i in infos if i.type == pafs.FileType.Directory])


def chunked(names: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_listing(
    source: str | Path, images: str | Path | None, opts: ScoreOptions, chunk: int = MANIFEST_CHUNK
) -> tuple[ImageRoot, Iterator[list[str]]]:
    """(image root, chunks of relative names) for a directory/URI or a CSV listing."""
    text = str(source)
    if text.lower().endswith(".csv") and not is_uri(text):
        if images is None:
            raise InputError("a CSV --input needs --images (the directory its file names are relative to)")
        df = read_csv(source)
        names = df[resolve_column(df, opts.fn_col, "file-name", source)].str.strip()
        check_file_names(names, source)
        return open_root(images), chunked(iter(names.tolist()), chunk)
    root = open_root(source)
    return root, chunked(walk(root, opts.glob), chunk)


def write_manifest(
    store: OutputStore,
    run_id: str,
    root: ImageRoot,
    chunks: Iterator[list[str]],
    is_done: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[str, int, int]:
    """Stream the listing into Parquet under staging, dropping files `is_done` (a mask over path
    hashes; --incremental: the output's done-index) says are committed; returns (manifest dir,
    listed, new)."""
    manifest = store.path(STAGING, run_id, "manifest")
    store.fs.create_dir(manifest, recursive=True)
    listed = new = 0
    for i, rel in enumerate(chunks):
        paths = [root.full_name(r) for r in rel]
        keep = ~is_done(path_hashes(paths)) if is_done is not None else np.ones(len(paths), dtype=bool)
        listed += len(paths)
        if keep.any():
            table = pa.table(
                {"path": np.asarray(paths, dtype=object)[keep], "rel": np.asarray(rel, dtype=object)[keep]}
            )
            pq.write_table(table, posixpath.join(manifest, f"part-{i:05d}.parquet"), filesystem=store.fs)
            new += int(keep.sum())
    return manifest, listed, new
