"""The listing of a scoring run: a directory/URI walk or a CSV listing, streamed into a Parquet manifest.

The listing is never one giant Python list on the driver: names arrive in chunks of MANIFEST_CHUNK,
already-done files (--incremental) are dropped by 64-bit path hash, and each chunk becomes one manifest
file under the run's staging directory.

An --incremental run also lists what the output itself still owes (`write_listing`): the committed
deferred paths that are not done yet (a transient read failure on an earlier night; the walk may
never list them again once it starts from a watermark) and, with --retry-errors, the committed error
rows of the chosen kinds. They go first into the manifest, and the walk's copies of them are dropped,
so each file is scored once.

A directory or URI is walked in one global order, the byte order of the names relative to the root
(what S3's ListObjectsV2 returns), so a nightly run can list only what can be new: each finished
--incremental run keeps, in its output, a watermark per input root and glob (the greatest name it
listed; OUT/_listing/), and the next run lists only names above it: ListObjectsV2 with StartAfter on
s3://, and a walk that skips every subdirectory whose whole subtree sorts below it elsewhere. This
assumes that new files arrive under names that sort after the files already scored (dumps written
under date/time-ordered prefixes, e.g. dumps/vehicle/2026-12-07/...). A file that lands under an
older name is not seen until `--relist` walks everything again (once a week, say); the done-index
keeps every file exactly once whatever the watermark says, so a watermark that lags behind the data
(a crash between the run record and the watermark) only costs some re-listing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vehicle_ray import columns as col
from vehicle_ray.data import ImageRoot, check_file_names, open_root, read_csv, resolve_column
from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri
from vehicle_ray.score.decode import IMAGE_EXTENSIONS
from vehicle_ray.score.done_index import DoneIndex, path_hashes, sorted_unique
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.store import STAGING, OutputStore

MANIFEST_CHUNK = 100_000

logger = logging.getLogger(__name__)


@dataclass
class ListingStats:
    """What a walk cost and where it stopped: for summary.json and the next run's watermark."""

    after: str | None = None  # the watermark it listed from (None: everything)
    last: str | None = None  # the greatest image name it listed
    entries: int = 0  # directory entries or object keys received
    requests: int = 0  # directory listings or LIST requests made


def walk(
    root: ImageRoot, glob: str | None, after: str | None = None, stats: ListingStats | None = None
) -> Iterator[str]:
    """Relative names of the image files under root in byte order of the name, only those above
    `after` when given, streamed one directory listing (or one LIST page) at a time."""
    stats = stats if stats is not None else ListingStats()
    stats.after = after
    names = _list_s3(root, after, stats) if root.uri.startswith("s3://") else _list_tree(root, "", after, stats)
    for rel in names:
        if fnmatch.fnmatch(rel, glob) if glob else rel.lower().endswith(IMAGE_EXTENSIONS):
            stats.last = rel
            yield rel


def _list_tree(root: ImageRoot, directory: str, after: str | None, stats: ListingStats) -> Iterator[str]:
    """Depth-first in byte order of the full relative name: a directory sorts as its name plus "/",
    which puts "a.jpg" < "a/x.jpg" < "a0.jpg" exactly as the full names compare. A directory whose
    name + "/" sorts below `after` without being a prefix of it holds only names below `after`: skipped
    unlisted, so a night costs the listings of the directories that can hold new files."""
    infos = root.fs.get_file_info(pafs.FileSelector(root.path(directory) if directory else root.base))
    stats.requests += 1
    stats.entries += len(infos)
    entries = sorted(
        (posixpath.relpath(i.path, root.base) + ("/" if i.type == pafs.FileType.Directory else ""), i.type)
        for i in infos
    )
    for name, kind in entries:
        if kind == pafs.FileType.Directory:
            if after is None or name > after or after.startswith(name):
                yield from _list_tree(root, name[:-1], after, stats)
        elif kind == pafs.FileType.File and (after is None or name > after):
            yield name


def _list_s3(root: ImageRoot, after: str | None, stats: ListingStats) -> Iterator[str]:
    """Every key under the root's prefix in S3's own (byte) order, from StartAfter=`after`: the
    request count grows with the new keys only (1,000 keys a page). boto3, because pyarrow's S3
    filesystem lists per "directory" and has no StartAfter."""
    import boto3  # honours AWS_ENDPOINT_URL like pyarrow

    bucket, _, prefix = root.base.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    request = {"Bucket": bucket, "Prefix": prefix, **({"StartAfter": prefix + after} if after else {})}
    for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(**request):
        stats.requests += 1
        for obj in page.get("Contents", []):
            stats.entries += 1
            if not obj["Key"].endswith("/"):  # a "directory" marker object
                yield obj["Key"][len(prefix) :]


def listing_key(root: ImageRoot, glob: str | None) -> str:
    """The watermark's name for one input root and glob."""
    return hashlib.sha256(f"{root.uri.rstrip('/')}\n{glob or ''}".encode()).hexdigest()[:16]


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
    source: str | Path,
    images: str | Path | None,
    opts: ScoreOptions,
    chunk: int = MANIFEST_CHUNK,
    watermark: Callable[[str], str | None] | None = None,
) -> tuple[ImageRoot, Iterator[list[str]], ListingStats | None]:
    """(image root, chunks of relative names, the walk's stats or None for a CSV listing) for a
    directory/URI or a CSV listing. `watermark(key)`: where the previous --incremental run stopped
    listing this root (see the module's docstring); not consulted with --relist."""
    text = str(source)
    if text.lower().endswith(".csv") and not is_uri(text):
        if images is None:
            raise InputError("a CSV --input needs --images (the directory its file names are relative to)")
        df = read_csv(source)
        names = df[resolve_column(df, opts.fn_col, "file-name", source)].str.strip()
        check_file_names(names, source)
        return open_root(images), chunked(iter(names.tolist()), chunk), None
    root = open_root(source)
    after = watermark(listing_key(root, opts.glob)) if watermark is not None and not opts.relist else None
    stats = ListingStats()
    return root, chunked(walk(root, opts.glob, after, stats), chunk), stats


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
                {col.PATH: np.asarray(paths, dtype=object)[keep], col.REL: np.asarray(rel, dtype=object)[keep]}
            )
            pq.write_table(table, posixpath.join(manifest, f"part-{i:05d}.parquet"), filesystem=store.fs)
            new += int(keep.sum())
    return manifest, listed, new


@dataclass
class Pending:
    """What an --incremental run lists from the output besides its input: `new` files written to the
    manifest, `retried` (--retry-errors) path -> the error file (relative to OUT) holding its old row,
    `hashes` of every path written (sorted; the walk drops them), `overlap` walk entries so dropped."""

    new: int = 0
    retried: dict[str, str] = field(default_factory=dict)
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    overlap: int = 0

    def also_done(self, is_done: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """`is_done` for the walk: also true for a pending path (already in the manifest)."""

        def mask(hashes: np.ndarray) -> np.ndarray:
            pending = _member(self.hashes, hashes)
            self.overlap += int(pending.sum())
            return is_done(hashes) | pending

        return mask


def _member(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    if not len(sorted_values):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(sorted_values, values).clip(max=len(sorted_values) - 1)
    return sorted_values[at] == values


def relative_to(root: ImageRoot, paths: list[str]) -> tuple[list[str], list[str]]:
    """(full paths, their names relative to `root`) for the paths under `root` (as full_name writes
    them); the others are left out."""
    prefix = root.full_name("")
    under = [p for p in paths if p.startswith(prefix) and len(p) > len(prefix)]
    return under, [p[len(prefix) :] for p in under]


def list_pending(
    store: OutputStore,
    run_id: str,
    root: ImageRoot,
    is_done: Callable[[np.ndarray], np.ndarray],
    retry_kinds: Collection[str] = (),
) -> Pending:
    """Write the output's pending files under `root` into the run's manifest (`pending-*.parquet`):
    committed deferred paths that `is_done` says are not done, and the error rows of `retry_kinds`
    (done, but to be scored again). Paths under another root are left for a run over that root."""
    manifest = store.path(STAGING, run_id, "manifest")
    store.fs.create_dir(manifest, recursive=True)
    wanted: dict[str, None] = {}  # ordered, distinct
    outside = 0
    for paths in store.deferred_paths():
        under, _ = relative_to(root, paths)
        outside += len(paths) - len(under)
        if under:
            keep = ~is_done(path_hashes(under))
            wanted.update(dict.fromkeys(np.asarray(under, dtype=object)[keep].tolist()))
    retried = store.error_paths(retry_kinds) if retry_kinds else {}
    if retried:
        under, _ = relative_to(root, list(retried))
        outside += len(retried) - len(under)
        retried = {p: retried[p] for p in under}
        wanted.update(dict.fromkeys(under))
    if outside:
        logger.warning(
            f"{outside} deferred or retried files of {store.uri} are not under {root.uri}: left for a run over them"
        )
    paths, rel = relative_to(root, list(wanted))
    if paths:
        logger.info(
            f"also scoring {len(paths) - len(retried)} deferred files not yet done and {len(retried)} errors to retry"
        )
    for i in range(0, len(paths), MANIFEST_CHUNK):
        table = pa.table(
            {
                col.PATH: pa.array(paths[i : i + MANIFEST_CHUNK], pa.string()),
                col.REL: pa.array(rel[i : i + MANIFEST_CHUNK], pa.string()),
            }
        )
        pq.write_table(
            table, posixpath.join(manifest, f"pending-{i // MANIFEST_CHUNK:05d}.parquet"), filesystem=store.fs
        )
    return Pending(
        new=len(paths), retried=retried, hashes=sorted_unique(path_hashes(paths)) if paths else Pending().hashes
    )


def write_listing(
    store: OutputStore,
    run_id: str,
    root: ImageRoot,
    chunks: Iterator[list[str]],
    done: DoneIndex | None,
    retry_kinds: Collection[str] = (),
) -> tuple[str, int, int, Pending]:
    """write_manifest, and on an --incremental run (`done`: the output's done-index) the output's
    pending files first (list_pending); returns (manifest dir, listed, new, pending). A pending file
    that the walk lists too counts once."""
    if done is None:
        return (*write_manifest(store, run_id, root, chunks), Pending())
    pending = list_pending(store, run_id, root, done.contains, retry_kinds)
    manifest, listed, new = write_manifest(store, run_id, root, chunks, pending.also_done(done.contains))
    return manifest, listed - pending.overlap + pending.new, new + pending.new, pending
