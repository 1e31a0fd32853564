"""Deferred rows and --retry-errors in the output store (score/store.py) and the listing (listing.py),
on a local temp directory, no Ray.

Invariants: a chunk's rows split into predictions + errors + deferred (the driver's accounting); a
deferred row is committed with its chunk (under _deferred/, rolled forward and cleaned up like the
others) but its path is not done, so the next --incremental listing holds it exactly once, with or
without the walk listing it again; a rescored error row leaves errors/ in the same commit that puts
its new row in place, so every path stays in exactly one of predictions/ and errors/.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vehicle_ray.data import open_root
from vehicle_ray.score.decode import TRANSIENT
from vehicle_ray.score.done_index import path_hashes
from vehicle_ray.score.listing import write_listing
from vehicle_ray.score.store import DEFERRED, ERROR_COLUMNS, ERRORS, PREDICTIONS, OutputStore, split_rows

SLOW = f"{TRANSIENT} (3 tries): AWS Error SLOW_DOWN during GetObject operation"
CORRUPT = "corrupt or truncated image: broken data stream"
READ = "cannot read file: [Errno 5] Input/output error"


def rows(outcomes: dict[str, str | None]) -> pa.Table:
    """Pipeline rows as the model actors emit them: path -> None (scored) or its error message."""
    ok = [m is None for m in outcomes.values()]
    return pa.table(
        {
            "path": pa.array(list(outcomes), pa.string()),
            "label": pa.array(["a" if good else None for good in ok], pa.string()),
            "confidence": pa.array([0.9 if good else None for good in ok], pa.float32()),
            "error": pa.array(list(outcomes.values()), pa.string()),
            "model_id": pa.array(["m"] * len(ok), pa.string()),
            "model_sha256": pa.array(["0" * 64] * len(ok), pa.string()),
        }
    )


@pytest.fixture
def store(tmp_path) -> OutputStore:
    return OutputStore.create(str(tmp_path / "out"))


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    return open_root(tmp_path / "images")


def commit(store: OutputStore, run_id: str, index: int, outcomes: dict[str, str | None]):
    return store.commit_chunk(store.stage_chunk(run_id, index, rows(outcomes)))


def paths_in(store: OutputStore, kind: str) -> list[str]:
    """What a plain Parquet reader of OUT/<kind>/ sees (every row, duplicates kept)."""
    files = sorted((Path(store.base) / kind).rglob("*.parquet"))
    return sorted(p for f in files for p in pq.read_table(f).column("path").to_pylist())


def done(store: OutputStore, paths: list[str]) -> list[str]:
    with store.done_index() as index:
        found = index.contains(path_hashes(paths))
    return sorted(p for p, f in zip(paths, found, strict=True) if f)


def listing(store: OutputStore, run_id: str, root, names: list[str], retry=()):
    """An --incremental run's listing of `names` (the walk's part): (manifest paths, listed, new, pending)."""
    with store.done_index() as index:
        manifest, listed, new, pending = write_listing(
            store, run_id, root, iter([names] if names else []), index, retry
        )
    if not new:
        return [], listed, new, pending
    table = pq.read_table(manifest)
    assert table.column_names == ["path", "rel"] and table.num_rows == new
    assert [root.full_name(r) for r in table.column("rel").to_pylist()] == table.column("path").to_pylist()
    return sorted(table.column("path").to_pylist()), listed, new, pending


def test_split_rows_defers_transient_failures_and_kinds_the_errors():
    parts = split_rows(rows({"/a": None, "/b": CORRUPT, "/c": SLOW, "/d": READ, "/e": "empty file (0 bytes)"}))
    assert set(parts) == {PREDICTIONS, ERRORS, DEFERRED}
    assert sum(p.num_rows for p in parts.values()) == 5  # the driver's accounting: each row in one part
    assert parts[PREDICTIONS].column("path").to_pylist() == ["/a"]
    assert parts[ERRORS].column_names == ERROR_COLUMNS
    assert parts[ERRORS].column("path").to_pylist() == ["/b", "/d", "/e"]
    assert parts[ERRORS].column("error_kind").to_pylist() == ["corrupt", "read", "empty"]
    assert parts[DEFERRED].column_names == ["path", "error"]
    assert parts[DEFERRED].column("path").to_pylist() == ["/c"]


def test_a_deferred_row_is_committed_but_not_done(store):
    record = commit(store, "r1", 1, {"/a": None, "/b": CORRUPT, "/c": SLOW})
    assert (record.predictions, record.errors, record.deferred) == (1, 1, 1)
    assert "_deferred/run=r1/chunk-00001.parquet" in record.files
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS), paths_in(store, DEFERRED)) == (
        ["/a"],
        ["/b"],
        ["/c"],
    )
    assert done(store, ["/a", "/b", "/c"]) == ["/a", "/b"]
    assert [r.deferred for r in store.chunk_records()] == [1]  # read back from the chunk record
    store.finish_run("r1", {"run_id": "r1"}, [record])
    assert [r.deferred for r in store.chunk_records()] == [1]  # and from the run record
    assert list(store.deferred_paths()) == [["/c"]]


def test_deferred_files_roll_forward_and_are_cleaned_up_like_the_others(store, monkeypatch):
    staged = store.stage_chunk("r1", 1, rows({"/a": None, "/c": SLOW}))
    with monkeypatch.context() as m:
        m.setattr(OutputStore, "_place", lambda self, record: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            store.commit_chunk(staged)
    assert paths_in(store, DEFERRED) == []
    stray = Path(store.base) / DEFERRED / "run=dead" / "chunk-00001.parquet"
    stray.parent.mkdir(parents=True)
    pq.write_table(rows({"/x": SLOW}).select(["path", "error"]), stray)
    assert list(store.deferred_paths()) == []  # the stray file was never committed: never listed
    store.recover()
    assert paths_in(store, DEFERRED) == ["/c"] and not stray.exists()
    assert list(store.deferred_paths()) == [["/c"]]
    store.clear()
    assert not (Path(store.base) / DEFERRED).exists()


def test_the_next_incremental_run_scores_a_deferred_file_exactly_once(store, root):
    a, b, c, d = (root.full_name(n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    commit(store, "r1", 1, {a: None, b: SLOW, c: CORRUPT})

    # the walk lists b again: it is listed, and scored, once
    manifest, listed, new, _ = listing(store, "r2", root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    assert (manifest, listed, new) == ([b, d], 4, 2)
    # a walk from a watermark does not list b again: the output still owes it
    manifest, listed, new, _ = listing(store, "r3", root, ["d.jpg"])
    assert (manifest, listed, new) == ([b, d], 2, 2)
    # nothing new tonight, and b still owed
    assert listing(store, "r4", root, [])[:3] == ([b], 1, 1)

    commit(store, "r5", 1, {b: None, d: None})  # b scored at last
    assert listing(store, "r6", root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])[:3] == ([], 4, 0)
    assert paths_in(store, PREDICTIONS) == [a, b, d] and paths_in(store, ERRORS) == [c]


def test_deferred_files_under_another_root_are_left_for_a_run_over_that_root(store, root):
    commit(store, "r1", 1, {"s3://elsewhere/x.jpg": SLOW, root.full_name("y.jpg"): SLOW})
    assert listing(store, "r2", root, [])[:3] == ([root.full_name("y.jpg")], 1, 1)


def test_retry_errors_moves_the_rescored_rows_out_of_errors_in_the_same_commit(store, root):
    a, b, c, d = (root.full_name(n) for n in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    commit(store, "r1", 1, {a: None, b: CORRUPT, c: READ, d: READ})
    assert store.error_paths({"read"}) == {
        c: "errors/run=r1/chunk-00001.parquet",
        d: "errors/run=r1/chunk-00001.parquet",
    }

    manifest, listed, new, pending = listing(store, "r2", root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], retry=("read",))
    assert (manifest, listed, new) == ([c, d], 4, 2) and set(pending.retried) == {c, d}
    retrying = store.retrying(pending.retried)
    record = retrying.commit_chunk(retrying.stage_chunk("r2", 1, rows({c: None, d: CORRUPT})))
    assert record.files["errors/run=r1/chunk-00001.parquet"].startswith("_staging/r2/")
    assert paths_in(store, PREDICTIONS) == [a, c]
    assert paths_in(store, ERRORS) == [b, d]  # d's old "read" row replaced by its new "corrupt" one
    errors = pq.read_table(Path(store.base) / "errors" / "run=r2" / "chunk-00001.parquet")
    assert errors.column("error_kind").to_pylist() == ["corrupt"]
    assert done(store, [a, b, c, d]) == [a, b, c, d]
    # a reader of the committed files (each named once, though two records name r1's errors file)
    assert sorted(
        p for f in dict.fromkeys(store.committed_files(ERRORS)) for p in pq.read_table(f)["path"].to_pylist()
    ) == [b, d]
    # a missing index file rebuilt from Parquet holds the unit's own rows only
    assert store._units()["r2.chunk-00001"] == [
        store.path(f) for f in ("predictions/run=r2/chunk-00001.parquet", "errors/run=r2/chunk-00001.parquet")
    ]


def test_a_retry_commit_killed_before_its_moves_is_rolled_forward(store, root, monkeypatch):
    b, c = root.full_name("b.jpg"), root.full_name("c.jpg")
    commit(store, "r1", 1, {b: READ, c: READ})
    retrying = store.retrying(store.error_paths({"read"}))
    staged = retrying.stage_chunk("r2", 1, rows({b: None}))
    with monkeypatch.context() as m:
        m.setattr(OutputStore, "_place", lambda self, record: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            retrying.commit_chunk(staged)
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == ([], [b, c])  # the old state, whole
    store.recover()
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == ([b], [c])
    store.recover()  # idempotent: r1's own record names the same file; its staged copy is long gone
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == ([b], [c])


def test_two_chunks_of_a_retry_run_rewrite_the_same_error_file_in_turn(store, root):
    b, c = root.full_name("b.jpg"), root.full_name("c.jpg")
    commit(store, "r1", 1, {b: READ, c: READ})
    retrying = store.retrying(store.error_paths({"read"}))
    retrying.commit_chunk(retrying.stage_chunk("r2", 1, rows({b: None})))
    retrying.commit_chunk(retrying.stage_chunk("r2", 2, rows({c: None})))
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == ([b, c], [])
    assert pq.read_table(Path(store.base) / "errors" / "run=r1" / "chunk-00001.parquet").num_rows == 0


def test_a_rescored_file_deferred_again_keeps_its_old_error_row(store, root):
    c = root.full_name("c.jpg")
    commit(store, "r1", 1, {c: READ})
    retrying = store.retrying(store.error_paths({"read"}))
    record = retrying.commit_chunk(retrying.stage_chunk("r2", 1, rows({c: SLOW})))
    assert record.deferred == 1 and not any(f.startswith("errors/") for f in record.files)
    assert (paths_in(store, ERRORS), paths_in(store, DEFERRED)) == ([c], [c])
    assert listing(store, "r3", root, [])[:3] == ([], 0, 0)  # still an error (done): not owed


def test_errors_written_before_error_kind_get_their_kind_from_the_message(store, root):
    old = rows({"/b": CORRUPT, "/c": READ}).select(["path", "error", "model_id", "model_sha256"])
    target = Path(store.base) / "errors" / "run=old" / "part-0.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(old, target)
    (Path(store.base) / "_runs").mkdir()
    (Path(store.base) / "_runs" / "old.json").write_text('{"run_id": "old"}')  # a finished run, old layout
    assert store.error_paths({"read"}) == {"/c": "errors/run=old/part-0.parquet"}
