import hashlib

import pandas as pd

from vehicle_ray.sample_data import FN_COL, LABEL_COL, write_sample_data


def _digest(directory) -> str:
    h = hashlib.sha256()
    for p in sorted((directory / "images").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    for name in ("train.csv", "test.csv", "test_labels.csv"):
        h.update((directory / name).read_bytes())
    return h.hexdigest()


def test_layout_and_columns(tmp_path):
    write_sample_data(tmp_path, train=30, test=10, size=32, seed=3)
    train = pd.read_csv(tmp_path / "train.csv")
    test = pd.read_csv(tmp_path / "test.csv")
    labels = pd.read_csv(tmp_path / "test_labels.csv")
    assert list(train.columns) == [FN_COL, LABEL_COL]
    assert list(test.columns) == [FN_COL]
    assert list(labels.columns) == [FN_COL, LABEL_COL]
    assert len(train) == 30 and len(test) == 10
    assert set(train[LABEL_COL]) == {0, 1}
    assert list(labels[FN_COL]) == list(test[FN_COL])
    assert not set(train[FN_COL]) & set(test[FN_COL])
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 40


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_sample_data(a, train=20, test=5, size=32, seed=7)
    write_sample_data(b, train=20, test=5, size=32, seed=7)
    write_sample_data(c, train=20, test=5, size=32, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_cli_writes_files(tmp_path):
    from tests.conftest import run_cli

    r = run_cli("sample-data", str(tmp_path / "s"), "--train", "10", "--test", "4", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert "10 training and 4 test" in r.stdout
    assert len(pd.read_csv(tmp_path / "s" / "train.csv")) == 10
