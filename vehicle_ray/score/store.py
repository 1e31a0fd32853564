"""The scoring output directory (local or URI) and its exactly-once commit protocol, chunk by chunk.

    OUT/predictions/run=<run_id>/chunk-<k>.parquet   one hive partition per run, one file per chunk
    OUT/errors/run=<run_id>/chunk-<k>.parquet
    OUT/_deferred/run=<run_id>/chunk-<k>.parquet     files whose read failed transiently: not done (below)
    OUT/_runs/<run_id>/chunk-<k>.json               chunk commit record (written BEFORE its files move)
    OUT/_runs/<run_id>.json                         run record: the run finished (its summary)
    OUT/_staging/<run_id>/                          work in progress, never read by anyone else
    OUT/_index/*.idx                                the done-index: path hashes per committed chunk (done_index.py)
    OUT/_lease.json                                 who is writing (lease.py)
    OUT/_fences/<lease token>.json                  what a taken-over holder committed, frozen (below)
    OUT/_quarantine/<run_id>/chunk-<k>.json          a commit record whose data was lost, kept for inspection
    OUT/_listing/<key>.json                         where the last finished run stopped listing an input (listing.py)
    OUT/summary.json                                the latest finished run's summary

A chunk is staged completely under _staging, then its commit record is written in one atomic put
(the commit point: write-ahead), then its files are moved into place, one atomic rename or object
copy each. So a file under predictions/ or errors/ always belongs to a committed chunk, and a plain
Parquet reader of either directory never sees an uncommitted row. A run killed after writing a
record but before moving every file is rolled forward by the next writer (the staged files are
complete by then); anything staged without a record is deleted. Writers are serialised by the
lease, so clean-up never touches a live run's files.

Fencing (a writer that wakes up late): every commit record carries its writer's lease token. A run
that takes a stale lease over writes, before it recovers anything, a fence per taken-over token:
the keys of that holder's records that exist at that moment, in a create-once file (O_EXCL locally,
If-None-Match on S3). A record whose token is fenced counts only if the fence lists it, so a frozen
holder that wakes up and writes a record after the take-over adds nothing a reader, the done-index
or recovery will ever use; right after writing a record its writer looks for its own fence and stops
with LeaseLost (exit 76) before moving any file. Destructive steps (recovery's deletions, --overwrite,
compaction, the run record and summary.json) first re-read the lease and stop unless it is still
theirs, and recovery lists everything it may delete before that re-read: a taker creates its files
after it, so they are never on a late recovery's list. Left: a record written in the instant between
a taker's fence listing and its fence write passes its writer's fence check, so that writer moves the
chunk's files into place; the chunk never counts (committed_files, the done-index and recovery ignore
it) and the next recovery deletes the files, but a plain directory reader can see them until then.

Durability on a local or NFS output (vehicle_ray/durable.py): staged files and their directory are fsynced before
the record; the record is written to a temp file, fsynced, renamed and its directory fsynced; every
move the protocol relies on syncs both directories. A power cut can then lose only work that was
not committed yet.

Deferred rows (a read that still failed transiently after decode.py's retries) are a third kind of
row in a chunk: committed with it under _deferred/ like the other files (named by the record, rolled
forward, cleaned up the same way), but their paths are not in the chunk's done-index file, so the
file is not done: the next --incremental run lists the committed deferred paths that are still not
done (listing.py) and scores them. Readers of predictions/ and errors/ never see them.

A --retry-errors run rescores committed error rows: a chunk that holds a new row (prediction or
error) for such a path also names, among its files, a rewritten copy of the error file that held the
old row, without it (`replaced` below). The move after the commit point replaces the old file, and
recovery rolls it forward like any other file, so each path stays in exactly one of predictions/
and errors/. A rescored file that is deferred again keeps its old error row.

Outputs written before chunk records existed (one `_runs/<run_id>.json` per run, partitions without chunk
records) stay readable and count as committed in full.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vehicle_ray import columns as col
from vehicle_ray import durable
from vehicle_ray.errors import InputError, LeaseLost
from vehicle_ray.location import Location, resolve_location
from vehicle_ray.score.decode import TRANSIENT, error_kind
from vehicle_ray.score.done_index import (
    INDEX_DIR,
    DoneIndex,
    build_from_parquet,
    compact,
    index_file_name,
    path_hashes,
    remove_uncommitted,
    write_index_file,
)
from vehicle_ray.score.pause import IN_FINISH_RUN, IN_RECOVER, pause_point

if TYPE_CHECKING:
    from vehicle_ray.score.lease import Lease

PREDICTIONS, ERRORS, RUNS, STAGING, SUMMARY = "predictions", "errors", "_runs", "_staging", "summary.json"
FENCES, QUARANTINE, LISTING = "_fences", "_quarantine", "_listing"
DEFERRED = "_deferred"
KINDS = (PREDICTIONS, ERRORS, DEFERRED)  # the row kinds of a chunk: one partition per run each
DONE_KINDS = (PREDICTIONS, ERRORS)  # the kinds whose paths are done (in the done-index)
ERROR_COLUMNS = [col.PATH, col.ERROR, col.ERROR_KIND, col.MODEL_ID, col.MODEL_SHA256]
DEFERRED_COLUMNS = [col.PATH, col.ERROR]


def split_rows(table: pa.Table) -> dict[str, pa.Table]:
    """The pipeline's rows (an `error` column, null when scored) as {predictions, errors, deferred}
    tables: an error whose message is decode.py's TRANSIENT is deferred, any other is an errors/ row
    with its `error_kind`."""
    messages = table.column(col.ERROR)
    failed = messages.is_valid()
    deferred = pc.fill_null(pc.starts_with(messages, TRANSIENT), False)
    errors = table.filter(pc.and_(failed, pc.invert(deferred)))
    kinds = pa.array([error_kind(m) for m in errors.column(col.ERROR).to_pylist()], pa.string())
    return {
        PREDICTIONS: table.filter(pc.invert(failed)).drop_columns([col.ERROR]),
        ERRORS: errors.append_column(col.ERROR_KIND, kinds).select(ERROR_COLUMNS),
        DEFERRED: table.filter(deferred).select(DEFERRED_COLUMNS),
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
    lease_token: str = ""  # its writer's lease (fencing); "" for --no-lease and older records
    deferred: int = 0  # rows under _deferred/ (not done); 0 in older records

    @property
    def key(self) -> str:
        return index_key(self.run_id, self.index)


@dataclass(frozen=True)
class OutputStore(Location):
    """The scoring output directory (uri, fs, base and `path(*parts)` from Location) and its commit protocol."""

    # --retry-errors: rescored path -> the error file (relative to OUT) holding its old row; each
    # chunk replaces those files without the rows it holds anew (stage_chunk). Set by `retrying`.
    retried: Mapping[str, str] = field(default_factory=dict, compare=False)

    def retrying(self, retried: Mapping[str, str]) -> OutputStore:
        """This store, staging chunks that replace the old error rows of `retried` paths."""
        return dataclasses.replace(self, retried=dict(retried))

    @classmethod
    def create(cls, output: str | Path) -> OutputStore:
        """A store to write (a scoring run): the output directory is created when missing."""
        fs, base, info = resolve_location(output, "output")
        if info.type == pafs.FileType.File:
            raise InputError(f"output {output} is a file, not a directory")
        fs.create_dir(base, recursive=True)
        return cls(uri=str(output), fs=fs, base=base)

    @classmethod
    def open(cls, output: str | Path) -> OutputStore:
        """A store to read (`vehicle-ray runs`, a reader's snapshot): never creates anything, so a
        mistyped location is an InputError rather than a new empty output."""
        fs, base, info = resolve_location(output, "output")
        if info.type != pafs.FileType.Directory:
            raise InputError(f"no scoring output at {output}")
        return cls(uri=str(output), fs=fs, base=base)

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

    def listing_watermark(self, key: str) -> str | None:
        """The greatest name the last finished run listed under one input (listing.listing_key)."""
        relative = posixpath.join(LISTING, f"{key}.json")
        return self.read_json(relative)["watermark"] if self._exists(relative) else None

    def fences(self) -> dict[str, set[str]]:
        """Fenced lease tokens -> the keys of that holder's records that count."""
        return {
            posixpath.basename(i.path)[:-5]: set(self.read_json(posixpath.relpath(i.path, self.base))["accepted"])
            for i in self._children(FENCES)
            if i.type == pafs.FileType.File and i.path.endswith(".json")
        }

    def chunk_records(self) -> list[ChunkCommit]:
        """Every valid chunk commit record (see fencing above)."""
        fences = self.fences()
        return [r for r in self._all_chunk_records() if r.lease_token not in fences or r.key in fences[r.lease_token]]

    def _all_chunk_records(self) -> list[ChunkCommit]:
        """Every chunk commit record, fenced or not: from the run record of a finished run (one read
        per run), from the per-chunk records of a run that was killed before it finished."""
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
        """Finished runs without chunk records (written before they existed), every file of the run counts."""
        return {run_id for run_id, record in self.run_records().items() if "chunks" not in record}

    def committed_runs(self) -> set[str]:
        """Runs with at least one committed row set: finished runs and killed runs' committed chunks."""
        return self.finished_runs() | {r.run_id for r in self.chunk_records()}

    def committed_files(self, kind: str) -> list[str]:
        """Full paths of the committed Parquet files of one kind (what a consistent reader reads):
        those in place now; a committed chunk that a running writer has not moved yet is left out
        rather than handed to a reader as a path that does not exist yet. Each file once (a --retry-errors
        chunk names the error file it rewrites, which an earlier chunk named too)."""
        named = list(
            dict.fromkeys(self.path(f) for r in self.chunk_records() for f in r.files if f.startswith(kind + "/"))
        )
        files = [i.path for i in self.fs.get_file_info(named) if i.type == pafs.FileType.File]
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
        """Committed units (a chunk, or a whole run without chunk records) -> their Parquet files:
        the keys of the done-index."""
        units = {
            index_key(r.run_id, r.index): [self.path(f) for f in r.files if _own_done_file(f, r.run_id)]
            for r in self.chunk_records()
        }
        for run_id in self._legacy_runs():
            units[run_id] = [
                i.path
                for kind in DONE_KINDS
                for i in self.fs.get_file_info(
                    pafs.FileSelector(self.path(kind, f"run={run_id}"), recursive=True, allow_not_found=True)
                )
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            ]
        return units

    @contextlib.contextmanager
    def done_index(self, lease: Lease | None = None) -> Iterator[DoneIndex]:
        """What --incremental skips: the done-index over every committed unit (run under the lease,
        after `recover`). Index files of uncommitted units are removed, missing ones (an output of
        a run without chunk records, a lost file) rebuilt from their Parquet once, small ones compacted."""
        units, index_dir = self._units(), self.path(INDEX_DIR)
        _confirm(lease)
        remove_uncommitted(self.fs, index_dir, units)
        with DoneIndex.open(self.fs, index_dir, units) as probe:
            missing = sorted(probe.missing(units))
        for key in missing:
            build_from_parquet(self.fs, units[key], posixpath.join(index_dir, index_file_name(key)), [key])
        compact(self.fs, index_dir, committed=units)
        with DoneIndex.open(self.fs, index_dir, units) as index:
            yield index

    # --- recovery and clean-up (only ever run by the lease holder) ------------------------------

    def fence(self, lease: Lease) -> None:
        """After a take-over, before anything else: freeze what each taken-over holder committed.
        Create-once, so a second take-over of the same token (or the frozen taker itself, waking up)
        keeps the first fence's list."""
        if lease.fenced or not lease.taken_over:
            lease.fenced = True
            return
        records = self._all_chunk_records()
        for token in lease.taken_over:
            accepted = sorted(r.key for r in records if r.lease_token == token)
            lease.backend.create_beside(
                posixpath.join(FENCES, f"{token}.json"),
                (json.dumps({"token": token, "fenced_by": lease.token, "accepted": accepted}) + "\n").encode(),
            )
        lease.fenced = True

    def recover(self, lease: Lease | None = None) -> dict[str, int]:
        """Fence what a take-over must (above), roll committed chunks forward, quarantine a record
        whose data is gone (its files are scored again by the next run), then delete what crashed or
        fenced runs left: fenced-out records, staging directories and files under predictions/errors
        that no commit record names. Finished runs are left alone: their files were all in place before
        their run record was written, so the work grows with what crashed runs left, not with history."""
        if lease is not None:
            self.fence(lease)
        valid = self.chunk_records()
        valid_keys = {r.key for r in valid}
        finished = {  # (a run record written by a fenced writer after all does not count as finished)
            run_id
            for run_id, record in self.run_records().items()
            if all(index_key(run_id, c["index"]) in valid_keys for c in record.get("chunks", []))
        }
        # Everything this recovery may delete is listed BEFORE the lease is confirmed: a run that takes
        # the output over after that confirmation creates only paths that are not on these lists, so a
        # recovery that stalls midway and resumes late can never delete them.
        fenced_out = [
            self._chunk_record_path(r)
            for r in self._all_chunk_records()
            if r.key not in valid_keys and self._exists(self._chunk_record_path(r))
        ]
        staging = [info.path for info in self._children(STAGING)]
        partitions = {
            part.path: [
                i.path
                for i in self.fs.get_file_info(pafs.FileSelector(part.path, recursive=True))
                if i.type == pafs.FileType.File
            ]
            for kind in KINDS
            for part in self._children(kind)
            if part.type == pafs.FileType.Directory
            and posixpath.basename(part.path).removeprefix("run=") not in finished  # legacy runs too
        }
        pause_point(IN_RECOVER)
        _confirm(lease)
        rolled, lost = 0, set()
        for record in (r for r in valid if r.run_id not in finished):
            try:
                rolled += self._place(record)
            except _DataLost:
                self._quarantine(record)
                lost.add(record.key)
        for record_file in fenced_out:
            self.fs.delete_file(self.path(record_file))  # it never counted
        for path in staging:
            self.fs.delete_dir(path)
        known = {self.path(final) for r in valid if r.key not in lost for final in r.files}
        removed = 0
        for part, files in partitions.items():
            for path in files:
                if path not in known:
                    self.fs.delete_file(path)
                    removed += 1
            if not any(f.startswith(part + "/") for f in known):
                self.fs.delete_dir(part)
        return {"rolled_forward": rolled, "removed": removed, "quarantined": len(lost)}

    def _chunk_record_path(self, record: ChunkCommit) -> str:
        return posixpath.join(RUNS, record.run_id, f"{chunk_name(record.index)}.json")

    def _quarantine(self, record: ChunkCommit) -> None:
        """A committed record whose staged and final copies of some file are both gone (deleted by
        hand, or by a holder frozen inside its delete): keep the record under _quarantine/ for
        inspection, out of every reader's sight, so its rows are simply not committed; recovery then
        removes its placed files and index, and the next run scores its paths again."""
        source = self._chunk_record_path(record)
        if not self._exists(source):  # folded into a finished run's record: nothing to move
            return
        target = posixpath.join(QUARANTINE, record.run_id, f"{chunk_name(record.index)}.json")
        self._make_dir(posixpath.join(QUARANTINE, record.run_id))
        self._move(source, target)

    def clear(self, lease: Lease | None = None) -> None:
        """--overwrite: forget every earlier run."""
        _confirm(lease)
        # the commit records first: a crash midway leaves data files without records, which
        # `recover` deletes, never records (or a done-index) that name deleted data
        for kind in (RUNS, INDEX_DIR, STAGING, LISTING, *KINDS):
            if self.fs.get_file_info(self.path(kind)).type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(kind))
        if self._exists(SUMMARY):
            self.fs.delete_file(self.path(SUMMARY))

    # --- writing --------------------------------------------------------------------------------

    def read_json(self, relative: str) -> dict[str, Any]:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return json.loads(f.read().decode())

    def write_json(self, relative: str, payload: dict[str, Any]) -> None:
        """One atomic put: a synced temp file renamed into place (and its directory synced) locally,
        a single PUT on object stores."""
        data = (json.dumps(payload, indent=2) + "\n").encode()
        target = self.path(relative)
        if self.is_local:
            durable.atomic_write(target, data, tmp=target + ".tmp")
        else:
            with self.fs.open_output_stream(target) as f:
                f.write(data)

    def stage_chunk(self, run_id: str, index: int, rows: pa.Table) -> ChunkCommit:
        """Write one chunk's predictions/errors/deferred Parquet files and its done-index file (the
        predictions' and errors' paths: deferred files are not done) under the run's staging directory;
        the commit record will name them all. With `retried` (--retry-errors), each error file holding
        the old row of a path this chunk has a new row for is staged again without those rows, to
        replace it (see the module's docstring)."""
        counts, files = {}, {}
        staged_dir = posixpath.join(STAGING, run_id, chunk_name(index))
        self._make_dir(staged_dir)
        key = index_key(run_id, index)
        parts = split_rows(rows)
        done = pa.chunked_array([parts[kind].column(col.PATH) for kind in DONE_KINDS], pa.string())
        staged_index = posixpath.join(staged_dir, "done.idx")
        write_index_file(self.fs, self.path(staged_index), path_hashes(done), [key])
        files[posixpath.join(INDEX_DIR, index_file_name(key))] = staged_index
        for kind, part in parts.items():
            counts[kind] = part.num_rows
            if part.num_rows:
                staged = posixpath.join(staged_dir, f"{kind}.parquet")
                pq.write_table(part, self.path(staged), filesystem=self.fs)
                files[posixpath.join(kind, f"run={run_id}", f"{chunk_name(index)}.parquet")] = staged
        if self.retried:
            files.update(self._stage_replacements(staged_dir, done.to_pylist(), self.retried))
        return ChunkCommit(
            run_id=run_id,
            index=index,
            files=files,
            predictions=counts[PREDICTIONS],
            errors=counts[ERRORS],
            deferred=counts[DEFERRED],
        )

    def _stage_replacements(self, staged_dir: str, done: list[str], retried: Mapping[str, str]) -> dict[str, str]:
        """For --retry-errors: every error file that holds the old row of a path this chunk now holds
        (as a prediction or a new error), rewritten without those rows, as {final: staged}. Read from
        the file in place now, so a second chunk of the run that rewrites the same file starts from
        the first one's result (each chunk is placed before the next one is staged)."""
        by_file: dict[str, set[str]] = {}
        for path in done:
            if path in retried:
                by_file.setdefault(retried[path], set()).add(path)
        replaced = {}
        for n, (final, paths) in enumerate(sorted(by_file.items())):
            table = pq.read_table(self.path(final), filesystem=self.fs)
            keep = pc.invert(pc.is_in(table.column(col.PATH), value_set=pa.array(sorted(paths), pa.string())))
            staged = posixpath.join(staged_dir, f"replaces-{n:05d}.parquet")
            pq.write_table(table.filter(keep), self.path(staged), filesystem=self.fs)
            replaced[final] = staged
        return replaced

    # --- what an --incremental run lists besides its input (listing.py) -------------------------

    def deferred_paths(self) -> Iterator[list[str]]:
        """The paths of the committed deferred rows, one list per file; some may be done by now (a
        later run scored them), which the caller filters with the done-index."""
        for file in dict.fromkeys(self.committed_files(DEFERRED)):
            yield pq.read_table(file, columns=[col.PATH], filesystem=self.fs).column(col.PATH).to_pylist()

    def error_paths(self, kinds: Collection[str]) -> dict[str, str]:
        """--retry-errors: path -> the committed error file (relative to OUT) holding its row, for
        the error rows of `kinds`. Rows written before `error_kind` was recorded get their kind from
        the message (decode.error_kind)."""
        found: dict[str, str] = {}
        for file in dict.fromkeys(self.committed_files(ERRORS)):
            table = pq.read_table(file, filesystem=self.fs)
            if col.ERROR_KIND in table.column_names:
                row_kinds = table.column(col.ERROR_KIND).to_pylist()
            else:
                row_kinds = [error_kind(m or "") for m in table.column(col.ERROR).to_pylist()]
            relative = posixpath.relpath(file, self.base)
            for path, kind in zip(table.column(col.PATH).to_pylist(), row_kinds, strict=True):
                if kind in kinds:
                    found[path] = relative
        return found

    def commit_chunk(self, record: ChunkCommit, lease: Lease | None = None) -> ChunkCommit:
        """The commit point is the record (carrying the writer's lease token); the moves after it are
        idempotent (recover redoes them). LeaseLost when the writer's token was fenced meanwhile:
        then its record never counts and nothing is moved. Returns the record as committed."""
        record = dataclasses.replace(record, lease_token=lease.token if lease is not None else "")
        if self.is_local:  # the staged bytes reach the disk before the record that names them
            try:
                for staged in record.files.values():
                    durable.sync_file(self.path(staged))
                durable.sync_dir(self.path(STAGING, record.run_id, chunk_name(record.index)))
            except FileNotFoundError:  # a take-over's recovery deleted them: say so if that is why
                _refuse_if_fenced(record, lease)
                raise
        self._make_dir(posixpath.join(RUNS, record.run_id))
        self.write_json(self._chunk_record_path(record), record.__dict__)
        _refuse_if_fenced(record, lease)
        self._place(record)
        self.fs.delete_dir(self.path(STAGING, record.run_id, chunk_name(record.index)))
        return record

    def _place(self, record: ChunkCommit) -> int:
        """Move a committed chunk's staged files into place (each one atomic); returns files moved.
        _DataLost when a file is neither staged nor in place: the record names data that is gone."""
        moved = 0
        for final, staged in record.files.items():
            if self._exists(staged):
                self._make_dir(posixpath.dirname(final))
                try:
                    self._move(staged, final)
                    moved += 1
                except FileNotFoundError:  # another writer rolled the same committed chunk forward
                    if not self._exists(final):
                        raise _DataLost(f"{final} of {record.key}") from None
            elif not self._exists(final):
                raise _DataLost(f"{final} of {record.key}")
        return moved

    def _make_dir(self, relative: str) -> None:
        """create_dir; locally each new directory's entry is synced into its parent, so a power cut
        cannot lose a directory that holds committed files."""
        if not self.is_local:
            self.fs.create_dir(self.path(relative), recursive=True)
            return
        new = []
        path = Path(self.path(relative))
        while not path.exists():
            new.append(path)
            path = path.parent
        for directory in reversed(new):
            directory.mkdir(exist_ok=True)
            durable.sync_dir(directory.parent)

    def _move(self, source: str, target: str) -> None:
        """One atomic rename (or object copy); durable locally: both directories synced."""
        if self.is_local:
            durable.replace(self.path(source), self.path(target))
        else:
            self.fs.move(self.path(source), self.path(target))

    def finish_run(
        self, run_id: str, summary: dict[str, Any], chunks: list[ChunkCommit], lease: Lease | None = None
    ) -> None:
        """The run record (its summary and chunk records) and summary.json: the run completed. The
        per-chunk records are folded into it, so later runs read one record per run. Then the input's
        listing watermark (summary's `listing`): after the record, so it never runs ahead of the data."""
        pause_point(IN_FINISH_RUN)
        _confirm(lease)
        self._make_dir(RUNS)
        self.write_json(posixpath.join(RUNS, f"{run_id}.json"), {**summary, "chunks": [c.__dict__ for c in chunks]})
        self.write_json(SUMMARY, summary)
        listing = summary.get("listing") or {}
        if listing.get("watermark") is not None:
            self._make_dir(LISTING)
            self.write_json(posixpath.join(LISTING, f"{listing['key']}.json"), {**listing, "run_id": run_id})
        for leftover in (self.path(STAGING, run_id), self.path(RUNS, run_id)):
            if self.fs.get_file_info(leftover).type == pafs.FileType.Directory:
                self.fs.delete_dir(leftover)


class _DataLost(Exception):
    """A committed record names a file that is neither staged nor in place."""


def _refuse_if_fenced(record: ChunkCommit, lease: Lease | None) -> None:
    """LeaseLost when the writer's token is fenced: its record (if written) never counts."""
    if lease is not None and lease.backend.read_beside(posixpath.join(FENCES, f"{lease.token}.json")) is not None:
        raise LeaseLost(
            f"commit of chunk {record.index} refused: another run took the output over while this one was "
            "stalled (its earlier chunks stay committed; the next run scores the rest)"
        )


def _confirm(lease: Lease | None) -> None:
    """Before a destructive step: LeaseLost unless the lease is still ours (nothing with --no-lease)."""
    if lease is not None:
        lease.confirm()


def _own_done_file(final: str, run_id: str) -> bool:
    """A predictions/errors file of the record's own run (not one it replaced for --retry-errors,
    nor a deferred or index file): what rebuilds the unit's done-index."""
    parts = final.split("/")
    return parts[0] in DONE_KINDS and len(parts) > 1 and parts[1] == f"run={run_id}"
