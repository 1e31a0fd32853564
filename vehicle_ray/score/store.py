"""The scoring output directory (local or URI) and its commit protocol.

    OUT/predictions/run=<run_id>/*.parquet   one hive partition per run
    OUT/errors/run=<run_id>/*.parquet
    OUT/_runs/<run_id>.json                  the commit record: a run exists only once this exists
    OUT/_staging/<run_id>/                   work in progress, never read by anyone else
    OUT/summary.json                         the latest run's summary

A run writes everything under _staging, moves its two partitions into place and then writes its
commit record. A run killed at any point leaves either staging files or partitions without a commit
record; the next run deletes both before it looks at what is done, so nothing half-written is ever
counted and an --incremental rerun completes the set exactly once.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vehicle_ray.data import resolve_location
from vehicle_ray.errors import InputError

PREDICTIONS, ERRORS, RUNS, STAGING, SUMMARY = "predictions", "errors", "_runs", "_staging", "summary.json"
SCORED = "scored"  # under a run's staging directory: the pipeline's rows, before the split
ERROR_COLUMNS = ["path", "error", "model_id", "model_sha256"]


def path_hashes(paths) -> np.ndarray:
    """64-bit hashes of path strings: the done-set costs 8 bytes a file, not a Python string."""
    return pd.util.hash_array(np.asarray(paths, dtype=object)).astype(np.uint64)


@dataclass(frozen=True)
class OutputStore:
    uri: str
    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, output: str | Path) -> OutputStore:
        fs, base, info = resolve_location(output, "output")
        if info.type == pafs.FileType.File:
            raise InputError(f"output {output} is a file, not a directory")
        fs.create_dir(base, recursive=True)
        return cls(uri=str(output), fs=fs, base=base)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def _children(self, *parts: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.path(*parts), allow_not_found=True))

    def committed_runs(self) -> set[str]:
        return {Path(i.path).stem for i in self._children(RUNS) if i.path.endswith(".json")}

    def remove_uncommitted(self) -> list[str]:
        """Delete what crashed runs left behind: staging dirs and partitions without a commit record."""
        committed, removed = self.committed_runs(), []
        for info in self._children(STAGING):
            self.fs.delete_dir(info.path)
            removed.append(info.path)
        for kind in (PREDICTIONS, ERRORS):
            for info in self._children(kind):
                name = posixpath.basename(info.path)
                if info.type == pafs.FileType.Directory and name.removeprefix("run=") not in committed:
                    self.fs.delete_dir(info.path)
                    removed.append(info.path)
        return removed

    def clear(self) -> None:
        for kind in (PREDICTIONS, ERRORS, RUNS, STAGING):
            if self.fs.get_file_info(self.path(kind)).type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(kind))
        if self.fs.get_file_info(self.path(SUMMARY)).type == pafs.FileType.File:
            self.fs.delete_file(self.path(SUMMARY))

    def _committed_files(self, kind: str) -> list[str]:
        committed = self.committed_runs()
        files = []
        for part in self._children(kind):
            if posixpath.basename(part.path).removeprefix("run=") in committed:
                files += [i.path for i in self.fs.get_file_info(pafs.FileSelector(part.path, recursive=True))
                          if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
        return files

    def done_hashes(self) -> np.ndarray:
        """Sorted hashes of every path already in a committed run (predictions or errors)."""
        chunks = [np.empty(0, dtype=np.uint64)]
        for kind in (PREDICTIONS, ERRORS):
            files = self._committed_files(kind)
            if files:
                for batch in pads.dataset(files, filesystem=self.fs, format="parquet").to_batches(columns=["path"]):
                    chunks.append(path_hashes(batch.column(0).to_pylist()))
        return np.sort(np.concatenate(chunks))

    def _move_dir(self, source: str, target: str) -> None:
        """One rename on a local filesystem; object stores move file by file (the commit record,
        written afterwards, is what makes the run visible either way)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.move(source, target)
            return
        self.fs.create_dir(target, recursive=True)
        for info in self.fs.get_file_info(pafs.FileSelector(source, recursive=True)):
            if info.type == pafs.FileType.File:
                self.fs.move(info.path, posixpath.join(target, posixpath.relpath(info.path, source)))

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        with self.fs.open_output_stream(self.path(name)) as f:
            f.write((json.dumps(payload, indent=2) + "\n").encode())

    def split_scored(self, run_id: str) -> tuple[int, int]:
        """Split a run's staged rows into its predictions/ and errors/ parts (one staged file at a
        time); returns (predictions, errors)."""
        counts = {PREDICTIONS: 0, ERRORS: 0}
        for kind in counts:
            self.fs.create_dir(self.path(STAGING, run_id, kind), recursive=True)
        files = self.fs.get_file_info(pafs.FileSelector(self.path(STAGING, run_id, SCORED), allow_not_found=True))
        for path in sorted(f.path for f in files if f.path.endswith(".parquet")):
            table = pq.read_table(path, filesystem=self.fs)
            failed = table.column("error").is_valid()
            parts = {PREDICTIONS: table.filter(pc.invert(failed)).drop_columns(["error"]),
                     ERRORS: table.filter(failed).select(ERROR_COLUMNS)}
            for kind, part in parts.items():
                if part.num_rows:
                    pq.write_table(part, self.path(STAGING, run_id, kind, posixpath.basename(path)), filesystem=self.fs)
                    counts[kind] += part.num_rows
        return counts[PREDICTIONS], counts[ERRORS]

    def commit(self, run_id: str, summary: dict[str, Any]) -> None:
        """Move the staged partitions into place, then write the commit record and the summary."""
        for kind in (PREDICTIONS, ERRORS):
            self.fs.create_dir(self.path(kind), recursive=True)
            self._move_dir(self.path(STAGING, run_id, kind), self.path(kind, f"run={run_id}"))
        self.fs.create_dir(self.path(RUNS), recursive=True)
        self.write_json(posixpath.join(RUNS, f"{run_id}.json"), summary)
        self.write_json(SUMMARY, summary)
        self.fs.delete_dir(self.path(STAGING, run_id))
