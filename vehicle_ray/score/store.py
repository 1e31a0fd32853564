"""The scoring output directory (local or URI) and its exactly-once commit protocol, chunk by chunk.

    OUT/predictions/run=<run_id>/chunk-<k>.parquet   one hive partition per run, one file per chunk
    OUT/errors/run=<run_id>/chunk-<k>.parquet
    OUT/_runs/<run_id>/chunk-<k>.json               chunk commit record (written BEFORE its files move)
    OUT/_runs/<run_id>.json                         run record: the run finished (its summary)
    OUT/_staging/<run_id>/                          work in progress, never read by anyone else
    OUT/_index/*.idx                                the done-index: path hashes per committed chunk (done_index.py)
    OUT/_lease.json                                 who is writing (lease.py)
    OUT/summary.json                                the latest finished run's summary

A chunk is staged completely under _staging, then its commit record is written in one atomic put
(the commit point: write-ahead), then its files are moved into place, one atomic rename or object
copy each. So a file under predictions/ or errors/ always belongs to a committed chunk, and a plain
Parquet reader of either directory never sees an uncommitted row. A run killed after writing a
record but before moving every file is rolled forward by the next writer (the staged files are
complete by then); anything staged without a record is deleted. Writers are serialised by the
lease, so clean-up never touches a live run's files.

Outputs of the previous version (one `_runs/<run_id>.json` per run, partitions without chunk
records) stay readable and count as committed in full.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vehicle_ray.data import resolve_location
from vehicle_ray.errors import InputError
from vehicle_ray.score.done_index import (
    INDEX_DIR,
    DoneIndex,
    build_from_parquet,
    compact,
    hash_paths,
    index_file_name,
    remove_uncommitted,
    write_index_file,
)

PREDICTIONS, ERRORS, RUNS, STAGING, SUMMARY = "predictions", "errors", "_runs", "_staging", "summary.json"
KINDS = (PREDICTIONS, ERRORS)
ERROR_COLUMNS = ["path", "error", "model_id", "model_sha256"]


def split_rows(table: pa.Table) -> dict[str, pa.Table]:
    """The pipeline's rows (an `error` column, null when scored) as {predictions, errors} tables."""
    failed = table.column("error").is_valid()
    return {
        PREDICTIONS: table.filter(pc.invert(failed)).drop_columns(["error"]),
        ERRORS: table.filter(failed).select(ERROR_COLUMNS),
    }


def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def index_key(run_id: str, index: int) -> str:
    """The done-index key of one committed chunk."""
    return f"{run_id}.{chunk_name(index)}"


@dataclass(frozen=True)
class ChunkCommit:
    """What one chunk commit placed: final file paths (relative to OUT) and row counts."""

    run_id: str
    index: int
    files: dict[str, str]  # final relative path -> staged relative path
    predictions: int
    errors: int


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

    @classmethod
    def open_existing(cls, output: str | Path) -> OutputStore:
        """A store to read (`vehicle-ray runs`): InputError when there is no output directory."""
        fs, base, info = resolve_location(output, "output")
        if info.type != pafs.FileType.Directory:
            raise InputError(f"no scoring output at {output}")
        return cls(uri=str(output), fs=fs, base=base)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def _children(self, *parts: str) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.path(*parts), allow_not_found=True))

    def _exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    # --- reading the commit records -------------------------------------------------------------

    def run_records(self) -> dict[str, dict[str, Any]]:
        """Finished runs: run id -> run record (the run's summary, plus its chunk records)."""
        return {
            posixpath.basename(i.path)[:-5]: self.read_json(posixpath.relpath(i.path, self.base))
            for i in self._children(RUNS)
            if i.type == pafs.FileType.File and i.path.endswith(".json")
        }

    def finished_runs(self) -> set[str]:
        return set(self.run_records())

    def chunk_records(self) -> list[ChunkCommit]:
        """Every chunk commit record: from the run record of a finished run (one read per run), from
        the per-chunk records of a run that was killed before it finished."""
        runs = self.run_records()
        records = [ChunkCommit(**c) for run in runs.values() for c in run.get("chunks", [])]
        for run_dir in self._children(RUNS):
            if run_dir.type != pafs.FileType.Directory or posixpath.basename(run_dir.path) in runs:
                continue
            for info in self.fs.get_file_info(pafs.FileSelector(run_dir.path)):
                if info.path.endswith(".json"):
                    records.append(ChunkCommit(**self.read_json(posixpath.relpath(info.path, self.base))))
        return sorted(records, key=lambda r: (r.run_id, r.index))

    def _legacy_runs(self) -> set[str]:
        """Finished runs of the previous version: no chunk records, every file of the run counts."""
        return {run_id for run_id, record in self.run_records().items() if "chunks" not in record}

    def committed_runs(self) -> set[str]:
        """Runs with at least one committed row set: finished runs and killed runs' committed chunks."""
        return self.finished_runs() | {r.run_id for r in self.chunk_records()}

    def committed_files(self, kind: str) -> list[str]:
        """Full paths of the committed Parquet files of one kind (what a consistent reader reads)."""
        files = [self.path(final) for r in self.chunk_records() for final in r.files if final.startswith(kind + "/")]
        for run_id in sorted(self._legacy_runs()):
            files += [
                i.path
                for i in self.fs.get_file_info(
                    pafs.FileSelector(self.path(kind, f"run={run_id}"), recursive=True, allow_not_found=True)
                )
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            ]
        return files

    def _units(self) -> dict[str, list[str]]:
        """Committed units (a chunk, or a whole run of the previous version) -> their Parquet files:
        the keys of the done-index."""
        units = {
            index_key(r.run_id, r.index): [self.path(f) for f in r.files if f.split("/")[0] in KINDS]
            for r in self.chunk_records()
        }
        for run_id in self._legacy_runs():
            units[run_id] = [
                i.path
                for kind in KINDS
                for i in self.fs.get_file_info(
                    pafs.FileSelector(self.path(kind, f"run={run_id}"), recursive=True, allow_not_found=True)
                )
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            ]
        return units

    @contextlib.contextmanager
    def done_index(self) -> Iterator[DoneIndex]:
        """What --incremental skips: the done-index over every committed unit (run under the lease,
        after `recover`). Index files of uncommitted units are removed, missing ones (an output of
        the previous version, a lost file) rebuilt from their Parquet once, small ones compacted."""
        units, index_dir = self._units(), self.path(INDEX_DIR)
        remove_uncommitted(self.fs, index_dir, units)
        with DoneIndex.open(self.fs, index_dir, units) as probe:
            missing = sorted(probe.missing(units))
        for key in missing:
            build_from_parquet(self.fs, units[key], posixpath.join(index_dir, index_file_name(key)), [key])
        compact(self.fs, index_dir, committed=units)
        with DoneIndex.open(self.fs, index_dir, units) as index:
            yield index

    # --- recovery and clean-up (only ever run by the lease holder) ------------------------------

    def recover(self) -> dict[str, int]:
        """Roll committed chunks forward, then delete everything uncommitted that crashed runs left:
        staging directories and files under predictions/errors that no commit record names."""
        rolled = 0
        for record in self.chunk_records():
            rolled += self._place(record)
        for info in self._children(STAGING):
            self.fs.delete_dir(info.path)
        known = {self.path(final) for r in self.chunk_records() for final in r.files}
        legacy = self._legacy_runs()
        removed = 0
        for kind in KINDS:
            for part in self._children(kind):
                run_id = posixpath.basename(part.path).removeprefix("run=")
                if part.type != pafs.FileType.Directory or run_id in legacy:
                    continue
                for info in self.fs.get_file_info(pafs.FileSelector(part.path, recursive=True)):
                    if info.type == pafs.FileType.File and info.path not in known:
                        self.fs.delete_file(info.path)
                        removed += 1
                if not any(f for f in known if f.startswith(part.path + "/")):
                    self.fs.delete_dir(part.path)
        return {"rolled_forward": rolled, "removed": removed}

    def clear(self) -> None:
        """--overwrite: forget every earlier run."""
        # the commit records first: a crash midway leaves data files without records, which
        # `recover` deletes, never records (or a done-index) that name deleted data
        for kind in (RUNS, INDEX_DIR, STAGING, *KINDS):
            if self.fs.get_file_info(self.path(kind)).type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(kind))
        if self._exists(SUMMARY):
            self.fs.delete_file(self.path(SUMMARY))

    # --- writing --------------------------------------------------------------------------------

    def read_json(self, relative: str) -> dict[str, Any]:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return json.loads(f.read().decode())

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        """One atomic put: a temp file renamed into place locally, a single PUT on object stores."""
        data = (json.dumps(payload, indent=2) + "\n").encode()
        target = self.path(relative)
        if self.is_local:
            tmp = target + ".tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def stage_chunk(self, run_id: str, index: int, rows: pa.Table) -> ChunkCommit:
        """Write one chunk's predictions/errors Parquet files and its done-index file under the run's
        staging directory; the commit record will name all three."""
        counts, files = {}, {}
        staged_dir = posixpath.join(STAGING, run_id, chunk_name(index))
        self.fs.create_dir(self.path(staged_dir), recursive=True)
        key = index_key(run_id, index)
        staged_index = posixpath.join(staged_dir, "done.idx")
        write_index_file(self.fs, self.path(staged_index), hash_paths(rows.column("path")), [key])
        files[posixpath.join(INDEX_DIR, index_file_name(key))] = staged_index
        for kind, part in split_rows(rows).items():
            counts[kind] = part.num_rows
            if part.num_rows:
                staged = posixpath.join(staged_dir, f"{kind}.parquet")
                pq.write_table(part, self.path(staged), filesystem=self.fs)
                files[posixpath.join(kind, f"run={run_id}", f"{chunk_name(index)}.parquet")] = staged
        return ChunkCommit(
            run_id=run_id, index=index, files=files, predictions=counts[PREDICTIONS], errors=counts[ERRORS]
        )

    def commit_chunk(self, record: ChunkCommit) -> None:
        """The commit point is the record; the moves after it are idempotent (recover redoes them)."""
        self.fs.create_dir(self.path(RUNS, record.run_id), recursive=True)
        self.write_json(posixpath.join(RUNS, record.run_id, f"{chunk_name(record.index)}.json"), record.__dict__)
        self._place(record)
        self.fs.delete_dir(self.path(STAGING, record.run_id, chunk_name(record.index)))

    def _place(self, record: ChunkCommit) -> int:
        """Move a committed chunk's staged files into place (each one atomic); returns files moved."""
        moved = 0
        for final, staged in record.files.items():
            if self._exists(staged):
                self.fs.create_dir(posixpath.dirname(self.path(final)), recursive=True)
                self.fs.move(self.path(staged), self.path(final))
                moved += 1
        return moved

    def finish_run(self, run_id: str, summary: dict[str, Any], chunks: list[ChunkCommit]) -> None:
        """The run record (its summary and chunk records) and summary.json: the run completed. The
        per-chunk records are folded into it, so later runs read one record per run."""
        self.fs.create_dir(self.path(RUNS), recursive=True)
        self.write_json(posixpath.join(RUNS, f"{run_id}.json"), {**summary, "chunks": [c.__dict__ for c in chunks]})
        self.write_json(SUMMARY, summary)
        for leftover in (self.path(STAGING, run_id), self.path(RUNS, run_id)):
            if self.fs.get_file_info(leftover).type == pafs.FileType.Directory:
                self.fs.delete_dir(leftover)
