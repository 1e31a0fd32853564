"""Fenced, durable commits (score/store.py with score/lease.py) on a local directory, no Ray.

A holder frozen past its TTL is simulated by stopping its heartbeat (a real freeze stops every
thread): another holder then takes the lease over after a TTL of its own observation and fences it.
The frozen holder's later commit, recovery and run record are refused; what it committed before
the take-over stays committed.
"""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.score.test_store import commit, done, paths_in, rows
from vehicle_ray import durable
from vehicle_ray.errors import LeaseLost
from vehicle_ray.score.lease import LEASE_FILE, Lease, LocalLeaseBackend
from vehicle_ray.score.store import FENCES, PREDICTIONS, QUARANTINE, OutputStore


def freeze(lease: Lease) -> None:
    """What a GC pause or a VM freeze does to a holder: its heartbeat stops."""
    lease._stop.set()
    lease._thread.join()


def take_over(out: Path, frozen: Lease) -> Lease:
    freeze(frozen)
    taker = Lease(LocalLeaseBackend(out / LEASE_FILE), "run-b", ttl=0.5)
    taker.acquire(wait=10, poll=0.1)
    assert taker.taken_over == (frozen.token,)
    return taker


def test_a_frozen_holder_cannot_commit_recover_or_finish_after_a_take_over(tmp_path):
    store = OutputStore.create(tmp_path)
    a = Lease(LocalLeaseBackend(tmp_path / LEASE_FILE), "run-a", ttl=0.5)
    a.acquire()
    first = store.commit_chunk(store.stage_chunk("run-a", 1, rows(["/a"])), a)  # before the freeze: stays
    staged = store.stage_chunk("run-a", 2, rows(["/b"]))  # A passed its lease check, then froze

    b = take_over(tmp_path, a)
    store.recover(b)  # fences A: chunk 1 counts, anything A writes later does not
    fence = json.loads((tmp_path / FENCES / f"{a.token}.json").read_text())
    assert fence["accepted"] == [first.key] and fence["fenced_by"] == b.token
    mine = store.commit_chunk(store.stage_chunk("run-b", 1, rows(["/c"])), b)

    with pytest.raises(LeaseLost, match="refused"):  # A wakes up at its commit point
        store.commit_chunk(staged, a)
    assert paths_in(store, PREDICTIONS) == ["/a", "/c"]  # nothing of A's chunk 2 became visible
    assert sorted(r.key for r in store.chunk_records()) == sorted([first.key, mine.key])
    assert done(store) == ["/a", "/c"]  # and the done-index agrees
    with pytest.raises(LeaseLost):
        store.recover(a)  # its recovery would delete B's staged files: refused
    with pytest.raises(LeaseLost):
        store.finish_run("run-a", {"run_id": "run-a"}, [first], a)
    with pytest.raises(LeaseLost):
        store.clear(a)
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "_runs" / "run-a.json").exists()

    store.finish_run("run-b", {"run_id": "run-b"}, [mine], b)
    b.release()
    with pytest.raises(LeaseLost):  # a run that lost its lease never exits as a success
        a.release()
    store.recover()  # the next run: A's fenced-out record is dropped, its rows were never visible
    assert not (tmp_path / "_runs" / "run-a" / "chunk-00002.json").exists()
    assert paths_in(store, PREDICTIONS) == ["/a", "/c"] and done(store) == ["/a", "/c"]


def test_a_second_take_over_inherits_the_fences_the_first_did_not_write(tmp_path):
    """B takes A over and dies before fencing; C takes B over and fences both."""
    store = OutputStore.create(tmp_path)
    a = Lease(LocalLeaseBackend(tmp_path / LEASE_FILE), "run-a", ttl=0.5)
    a.acquire()
    store.commit_chunk(store.stage_chunk("run-a", 1, rows(["/a"])), a)
    b = take_over(tmp_path, a)
    freeze(b)  # B froze (or died) before its recovery wrote any fence
    c = Lease(LocalLeaseBackend(tmp_path / LEASE_FILE), "run-c", ttl=0.5)
    c.acquire(wait=10, poll=0.1)
    assert set(c.taken_over) == {a.token, b.token}
    store.recover(c)
    assert {p.stem for p in (tmp_path / FENCES).glob("*.json")} == {a.token, b.token}
    c.release()


def test_a_record_whose_data_is_gone_is_quarantined_and_its_files_scored_again(tmp_path, monkeypatch):
    store = OutputStore.create(tmp_path)
    commit(store, "r1", 1, ["/a"])
    record = store.stage_chunk("r1", 2, rows(["/b", "/x"]))

    def killed(self, record):
        raise KeyboardInterrupt("killed right after the commit record")

    monkeypatch.setattr(OutputStore, "_place", killed)
    with pytest.raises(KeyboardInterrupt):
        store.commit_chunk(record)
    monkeypatch.undo()
    staged = next(s for f, s in record.files.items() if f.startswith(PREDICTIONS))
    os.remove(Path(store.base) / staged)  # its data is gone (a frozen holder's delete, a hand)
    result = store.recover()
    assert result["quarantined"] == 1
    assert (tmp_path / QUARANTINE / "r1" / "chunk-00002.json").exists()  # kept for inspection
    assert [r.key for r in store.chunk_records()] == ["r1.chunk-00001"]
    assert paths_in(store, PREDICTIONS) == ["/a"] and done(store) == ["/a"]  # /b, /x: scored again
    assert store.recover()["quarantined"] == 0


def test_every_file_the_commit_relies_on_is_synced_before_the_commit_point_and_after_its_rename(tmp_path, monkeypatch):
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    store = OutputStore.create(tmp_path)
    staged = store.stage_chunk("r1", 1, rows(["/a", "/b"], failed=frozenset({"/b"})))
    store.commit_chunk(staged)

    def at(event: tuple) -> int:
        assert event in events, (event, events)
        return events.index(event)

    base = Path(store.base)
    record = str(base / "_runs" / "r1" / "chunk-00001.json")
    commit_point = at(("rename", record + ".tmp", record))
    assert at(("fsync", record + ".tmp")) < commit_point
    assert at(("fsync", str(base / "_runs" / "r1"))) > commit_point  # the new name is durable
    staged_dir = str(base / "_staging" / "r1" / "chunk-00001")
    assert at(("fsync", staged_dir)) < commit_point
    assert len(staged.files) == 3  # predictions, errors, done-index file
    for final, source in staged.files.items():
        assert at(("fsync", str(base / source))) < commit_point
        moved = at(("rename", str(base / source), str(base / final)))
        assert moved > commit_point
        assert at(("fsync", str((base / final).parent))) > moved  # the move is durable
    finished = len(events)
    store.finish_run("r1", {"run_id": "r1"}, [staged])
    run_record = str(base / "_runs" / "r1.json")
    assert events.index(("fsync", run_record + ".tmp"), finished) < events.index(
        ("rename", run_record + ".tmp", run_record), finished
    )
    assert pq.read_table(base / "predictions" / "run=r1" / "chunk-00001.parquet").num_rows == 1


def test_a_lease_file_is_written_durably(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        durable.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))
    )
    lease = Lease(LocalLeaseBackend(tmp_path / LEASE_FILE), "r1", ttl=60)
    lease.acquire()
    assert any(p.endswith(".tmp") for p in synced) and str(tmp_path) in synced  # the data, then the new name
    lease.release()
