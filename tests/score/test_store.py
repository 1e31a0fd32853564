"""The output store's commit protocol (score/store.py) on a local temp directory, no Ray.

Invariants: a row set is visible (under predictions/ or errors/, and in the done-index) exactly when
its commit record exists; what a crashed run staged without a record is deleted by `recover`, what it
recorded is rolled forward; errors rows carry only ERROR_COLUMNS; outputs of the previous layout
(one `_runs/<id>.json` per run, no chunk records) stay committed in full.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vehicle_ray.errors import InputError
from vehicle_ray.score.done_index import path_hashes
from vehicle_ray.score.store import ERROR_COLUMNS, ERRORS, PREDICTIONS, OutputStore, split_rows


def rows(paths: list[str], failed: frozenset = frozenset()) -> pa.Table:
    """Pipeline rows as the model actors emit them: `error` is null for a scored file."""
    ok = [p not in failed for p in paths]
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "label": pa.array(["a" if good else None for good in ok], pa.string()),
            "confidence": pa.array([0.9 if good else None for good in ok], pa.float32()),
            "probabilities": pa.array([[0.9, 0.1] if good else None for good in ok], pa.list_(pa.float32())),
            "error": pa.array([None if good else "not an image" for good in ok], pa.string()),
            "model_id": pa.array(["m"] * len(paths), pa.string()),
            "model_sha256": pa.array(["0" * 64] * len(paths), pa.string()),
        }
    )


def commit(store: OutputStore, run_id: str, index: int, paths: list[str], failed: frozenset = frozenset()):
    record = store.stage_chunk(run_id, index, rows(paths, failed))
    store.commit_chunk(record)
    return record


ALL = ["/a", "/b", "/c", "/d", "/x", "/y", "/staged-only"]


def done(store: OutputStore) -> list[str]:
    """The paths of ALL that the done-index reports as committed (what --incremental skips)."""
    with store.done_index() as index:
        found = index.contains(path_hashes(ALL))
    return sorted(p for p, f in zip(ALL, found, strict=True) if f)


def files(store: OutputStore, kind: str) -> list[Path]:
    return sorted((Path(store.base) / kind).rglob("*.parquet"))


def paths_in(store: OutputStore, kind: str) -> list[str]:
    """What a plain Parquet reader of OUT/<kind>/ sees."""
    return sorted(p for f in files(store, kind) for p in pq.read_table(f).column("path").to_pylist())


@pytest.fixture
def store(tmp_path) -> OutputStore:
    return OutputStore.create(str(tmp_path / "out"))


def test_split_rows_counts_and_error_columns():
    parts = split_rows(rows(["/a", "/b", "/c", "/d"], failed=frozenset({"/b", "/d"})))
    assert parts[PREDICTIONS].column("path").to_pylist() == ["/a", "/c"]
    assert "error" not in parts[PREDICTIONS].column_names
    assert parts[ERRORS].column_names == ERROR_COLUMNS
    assert parts[ERRORS].column("path").to_pylist() == ["/b", "/d"]
    assert parts[ERRORS].column("error").to_pylist() == ["not an image"] * 2


def test_a_finished_run_lands_in_its_partitions(store):
    base = Path(store.base)
    first = commit(store, "r1", 1, ["/a", "/b", "/c"], failed=frozenset({"/c"}))
    second = commit(store, "r1", 2, ["/d"])
    assert (first.predictions, first.errors, second.predictions, second.errors) == (2, 1, 1, 0)
    store.finish_run("r1", {"run_id": "r1", "scored": 3, "errors": 1}, [first, second])
    assert paths_in(store, PREDICTIONS) == ["/a", "/b", "/d"]
    assert paths_in(store, ERRORS) == ["/c"]
    assert all(f.parent.name == "run=r1" for kind in (PREDICTIONS, ERRORS) for f in files(store, kind))
    assert pq.read_table(files(store, ERRORS)[0]).column_names == ERROR_COLUMNS
    assert json.loads((base / "_runs" / "r1.json").read_text())["scored"] == 3
    assert json.loads((base / "summary.json").read_text()) == {"run_id": "r1", "scored": 3, "errors": 1}
    assert not (base / "_staging" / "r1").exists() and not (base / "_runs" / "r1").exists()
    assert store.finished_runs() == store.committed_runs() == {"r1"}


def test_the_done_index_holds_exactly_the_committed_paths(store):
    commit(store, "r1", 1, ["/a", "/b"], failed=frozenset({"/b"}))
    store.stage_chunk("r1", 2, rows(["/staged-only"]))  # staged, never committed
    assert done(store) == ["/a", "/b"]


def test_a_killed_runs_committed_chunks_count_and_its_staging_is_removed(store):
    """Chunk 1 committed, chunk 2 staged, then the driver died (finish_run never ran)."""
    commit(store, "r1", 1, ["/a"])
    store.stage_chunk("r1", 2, rows(["/b"]))
    assert store.committed_runs() == {"r1"} and store.finished_runs() == set()
    store.recover()
    assert not (Path(store.base) / "_staging").exists() or not any((Path(store.base) / "_staging").iterdir())
    assert paths_in(store, PREDICTIONS) == ["/a"]
    assert done(store) == ["/a"]


def test_recover_rolls_a_recorded_chunk_forward(store, monkeypatch):
    """A crash after the commit record but before the files moved: the next writer moves them."""
    record = store.stage_chunk("r1", 1, rows(["/a", "/b"], failed=frozenset({"/b"})))

    def crash(self, record):
        raise KeyboardInterrupt("killed between the record and the moves")

    with monkeypatch.context() as m:
        m.setattr(OutputStore, "_place", crash)
        with pytest.raises(KeyboardInterrupt):
            store.commit_chunk(record)
    assert paths_in(store, PREDICTIONS) == []
    assert store.recover()["rolled_forward"] == 3  # predictions, errors and the done-index file
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == (["/a"], ["/b"])
    assert done(store) == ["/a", "/b"]
    assert store.recover() == {"rolled_forward": 0, "removed": 0, "quarantined": 0}  # idempotent


def test_recover_deletes_files_no_record_names_and_keeps_committed_ones(store):
    commit(store, "r1", 1, ["/a"])
    stray = Path(store.base) / PREDICTIONS / "run=r1" / "part-stray.parquet"
    orphan = Path(store.base) / ERRORS / "run=dead" / "part-0.parquet"
    orphan.parent.mkdir(parents=True)
    pq.write_table(rows(["/x"]), stray)
    pq.write_table(rows(["/y"]), orphan)
    assert done(store) == ["/a"]  # never counted, even before recover
    assert store.recover()["removed"] == 2
    assert not stray.exists() and not orphan.parent.exists()
    assert paths_in(store, PREDICTIONS) == ["/a"]


def write_legacy_run(store: OutputStore, run_id: str, paths: list[str], record: bool) -> None:
    """The previous layout: whole-run partitions, then (if it finished) `_runs/<run_id>.json`."""
    for kind, part in split_rows(rows(paths, failed=frozenset(paths[-1:]))).items():
        target = Path(store.base) / kind / f"run={run_id}" / "part-0.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, target)
    if record:
        (Path(store.base) / "_runs").mkdir(exist_ok=True)
        (Path(store.base) / "_runs" / f"{run_id}.json").write_text(json.dumps({"run_id": run_id}))


def test_outputs_of_the_previous_layout_stay_committed(store):
    write_legacy_run(store, "old", ["/a", "/b"], record=True)
    write_legacy_run(store, "crashed", ["/c", "/d"], record=False)
    assert store.committed_runs() == {"old"}
    assert done(store) == ["/a", "/b"]
    store.recover()
    assert (paths_in(store, PREDICTIONS), paths_in(store, ERRORS)) == (["/a"], ["/b"])
    commit(store, "new", 1, ["/c"])
    assert done(store) == ["/a", "/b", "/c"]


def test_clear_forgets_every_run_but_not_the_lease(store):
    commit(store, "r1", 1, ["/a"], failed=frozenset({"/a"}))
    store.finish_run("r1", {"run_id": "r1"}, [])
    lease = Path(store.base) / "_lease.json"
    lease.write_text("{}")
    store.clear()
    assert store.committed_runs() == set() and done(store) == []
    assert files(store, PREDICTIONS) == files(store, ERRORS) == []
    assert not (Path(store.base) / "summary.json").exists()
    assert lease.exists()  # clear runs under the lease: it must not drop it


def test_output_that_is_a_file_is_bad_input(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        OutputStore.create(str(tmp_path / "out"))
