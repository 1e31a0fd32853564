"""Atomic, durable local writes: what a writer renames into place survives a power cut.

A rename is atomic but not durable: after a power loss or kernel panic, ext4 and XFS can show the new
name with a zero-length file (its data was still in the page cache) or the old directory entry. So local
writes follow the usual sequence: write a temp sibling, fsync it, rename it over the target, fsync the
directory that holds the new name (and the one that lost the old name when they differ). `atomic_write`
(bytes) and `atomic_writer` (a stream) do all of it; the lease's create-once files (score/lease.py) link
a `write_file` temp into place instead of renaming it. Object stores need none of this (a PUT is durable
when it returns), so these functions are only called for local paths: scoring's commit protocol
(score/store.py, score/done_index.py, score/lease.py), model.json's operating point
(train/artifact_writer.py) and staged training images (train/staging.py, atomic but not synced).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator


def sync_file(path: str | Path) -> None:
    """fsync a file's data and metadata."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str | Path) -> None:
    """fsync a directory: its entries (a created, renamed or removed name) reach the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the caller renames or links it into place)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace(source: str | Path, target: str | Path) -> None:
    """Rename `source` (already synced) over `target`, then sync the directories of both names."""
    os.replace(source, target)
    target_dir, source_dir = Path(target).parent, Path(source).parent
    sync_dir(target_dir)
    if source_dir != target_dir:
        sync_dir(source_dir)


def temp_sibling(path: str | Path) -> str:
    """A fresh temp name beside `path` (hidden, unique per call)."""
    head, name = os.path.split(str(path))
    return os.path.join(head, f".{name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_writer(path: str | Path, tmp: str | Path | None = None, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into: written under `tmp` (default: temp_sibling),
    then (when the block ends without an exception) fsynced, renamed over `path` and the directories
    synced (`replace`), so a reader sees the old file or the whole new one, after a power cut too.
    sync=False keeps the rename's atomicity without the fsyncs (a cache that checks what it finds).
    On an exception the temp file is removed and `path` is untouched."""
    tmp = temp_sibling(path) if tmp is None else tmp
    try:
        with open(tmp, "wb") as f:
            yield f
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if sync:
            replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: bytes, tmp: str | Path | None = None) -> None:
    """Write `data` to the local `path` atomically and durably (atomic_writer)."""
    with atomic_writer(path, tmp) as f:
        f.write(data)
