"""Training images from object storage: a local copy per node, made once and reused.

fastai's DataLoaders read images by local path, and export.pkl must pickle only fastai classes, so
rather than teach fastai about URIs, each training worker copies the images of an s3:// (or any
pyarrow URI) root into a local cache before it builds its DataLoaders, which then read the copies
exactly as they read a local root. Every rank needs every image (shards change every epoch and each
rank validates on the whole validation set), so the copy is per node, not per rank:

* the cache is ~/.cache/vehicle_ray/images/<sha256 of the root URI>/<file name> (VEHICLE_RAY_CACHE_DIR
  moves it), and a copy counts as fresh while its size and modification time equal the object's
  (each copy gets the object's mtime), so a changed object is fetched again;
* the ranks of one node take a file lock: the first copies, the others then find everything fresh;
* each file is written to a temporary name and renamed, so a worker killed mid-copy (node loss,
  restart) leaves no truncated image behind, and a restarted run on the same node copies nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import posixpath
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs

from vehicle_ray import durable
from vehicle_ray.data import FN, ImageRoot, LabeledSet, open_root
from vehicle_ray.errors import InputError

CACHE_ENV = "VEHICLE_RAY_CACHE_DIR"
COPY_THREADS = 16  # object stores reward concurrent GETs; files are small

logger = logging.getLogger(__name__)


def cache_dir(uri: str) -> Path:
    """The local directory that mirrors the image root `uri` on this node."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vehicle_ray")
    return base / "images" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def local_images(data: LabeledSet) -> LabeledSet:
    """`data` as is for a local root; for a URI root, the same rows over this node's local copy."""
    if data.root.is_local:
        return data
    target = cache_dir(data.root.uri)
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        copied, nbytes = _sync(data.root, data.items[FN].tolist(), target)
    logger.info(
        f"images from {data.root.uri}: copied {copied} ({nbytes / 1e6:.1f} MB), "
        f"{len(data.items) - copied} already cached in {target}, {time.perf_counter() - t0:.1f}s"
    )
    return replace(data, root=open_root(target))


def _sync(root: ImageRoot, names: list[str], target: Path) -> tuple[int, int]:
    """Copy the objects whose local copy is missing or stale; returns (files copied, bytes copied)."""
    infos = _list(root)
    absent = [n for n in names if n not in infos]
    if absent:
        raise InputError(f"{len(absent)} images disappeared from {root.uri} after validation: {absent[:5]}")
    stale = [n for n in names if not _fresh(target / n, infos[n])]
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(lambda n: _copy(root, n, target / n, infos[n]), stale))
    return len(stale), sum(infos[n].size or 0 for n in stale)


def _list(root: ImageRoot) -> dict[str, pafs.FileInfo]:
    """Every file under the root by relative name: one recursive listing (about one request per
    thousand objects on S3) instead of a HEAD request per image."""
    infos = root.fs.get_file_info(pafs.FileSelector(root.base, recursive=True))
    return {posixpath.relpath(i.path, root.base): i for i in infos if i.type == pafs.FileType.File}


def _fresh(path: Path, info: pafs.FileInfo) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == info.size and (info.mtime_ns is None or st.st_mtime_ns == info.mtime_ns)


def _copy(root: ImageRoot, name: str, path: Path, info: pafs.FileInfo) -> None:
    """Download one object to a temporary name beside `path`, stamp the object's mtime, rename. Not
    synced: a copy cut short by a crash fails `_fresh` (size, mtime) and is downloaded again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    with root.fs.open_input_stream(root.path(name)) as src, durable.atomic_writer(path, tmp, sync=False) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        if info.mtime_ns is not None:
            dst.flush()  # the stamp must come after the last write
            os.utime(dst.fileno(), ns=(info.mtime_ns, info.mtime_ns))
