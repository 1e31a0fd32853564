"""The chunk writer: the pipeline's rows in, exactly-once chunk commits out (store.py's protocol).

It owns when to commit and the checks around each commit. A chunk is committed every `commit_every`
files or once the oldest uncommitted row has waited `commit_interval` seconds, whichever comes first,
so a run killed at any moment loses at most about `commit_interval` seconds of work, whatever the model
costs per file: 10,000 files (the default count) take under a minute with a small model on 2 CPUs but
about 20 minutes with the seed's resnet50 at 299 px. (The check runs when rows arrive: a pipeline
stalled on the autoscaler holds its rows until it moves again.) Each commit is a few small writes (two
Parquet files, one index file, one record and their moves: 22 ms locally with the fsyncs, 340 ms on
the moto S3 server, bench/bench_commit.py), so the 15 s default costs 0.15% of a local run and 2.3%
of one on S3 (BENCHMARKS.md, commit interval).

Before each commit the lease must be confirmed (Lease.check); the commit itself is fenced (store.py):
a writer that stalled past its lease's TTL cannot add a chunk after another run took over.
"""

from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa

from vehicle_ray import columns as col
from vehicle_ray.score.lease import Lease
from vehicle_ray.score.pause import BEFORE_COMMIT, pause_point
from vehicle_ray.score.progress import Timeline
from vehicle_ray.score.store import ChunkCommit, OutputStore


class ChunkWriter:
    """add(rows) as they arrive, flush() at the end; `committed` lists the chunks committed so far."""

    def __init__(
        self,
        store: OutputStore,
        run_id: str,
        lease: Lease | None,
        commit_every: int,
        commit_interval: float,
        timeline: Timeline,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.run_id, self.lease = store, run_id, lease
        self.commit_every, self.commit_interval = commit_every, commit_interval
        self.timeline, self.clock = timeline, clock
        self.committed: list[ChunkCommit] = []
        self.errors = 0  # error rows committed so far
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._oldest: float | None = None  # when the oldest uncommitted row arrived

    @property
    def pending_errors(self) -> int:
        return sum(t.num_rows - t.column(col.ERROR).null_count for t in self._pending)

    def add(self, rows: pa.Table) -> None:
        """Take a batch of pipeline rows; commit every full `commit_every`, and everything pending
        once the oldest row has waited `commit_interval` seconds."""
        if not rows.num_rows:
            return
        if self._oldest is None:
            self._oldest = self.clock()
        self._pending.append(rows)
        self._pending_rows += rows.num_rows
        while self._pending_rows >= self.commit_every:
            table = self._take()
            self._commit(table.slice(0, self.commit_every))
            self._keep(table.slice(self.commit_every))
        if self._pending_rows and self.clock() - self._oldest >= self.commit_interval:
            self._commit(self._take())

    def flush(self) -> None:
        """Commit whatever is pending (the end of the stream)."""
        if self._pending_rows:
            self._commit(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        return table

    def _keep(self, rest: pa.Table) -> None:
        self._oldest = self.clock() if rest.num_rows else None
        if rest.num_rows:
            self._pending, self._pending_rows = [rest], rest.num_rows

    def _commit(self, rows: pa.Table) -> None:
        started = time.perf_counter()
        if self.lease is not None:
            self.lease.check()
        pause_point(BEFORE_COMMIT)
        staged = self.store.stage_chunk(self.run_id, len(self.committed) + 1, rows)
        record = self.store.commit_chunk(staged, self.lease)
        self.timeline.add_commit(time.perf_counter() - started)
        self.committed.append(record)
        self.errors += record.errors
        if not self._pending_rows:
            self._oldest = None
