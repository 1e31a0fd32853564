"""Durable local writes: what the commit protocol renames into place survives a power cut.

A rename is atomic but not durable: after a power loss or kernel panic, ext4 and XFS can show the new
name with a zero-length file (its data was still in the page cache) or the old directory entry. So the
protocol's local writes follow the usual sequence: write, fsync the file, rename, fsync the directory
that holds the new name (and the one that lost the old name when they differ). Object stores need none
of this (a PUT is durable when it returns), so these functions are only called for local outputs.
"""

from __future__ import annotations

import os
from pathlib import Path


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
    """Write `data` to `path` and fsync it (the caller renames it into place)."""
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
