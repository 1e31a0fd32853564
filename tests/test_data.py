"""Every validation error of the data layer, on real files, plus the split's determinism."""

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from vehicle_ray.data import check_split, read_labeled_csv, split_indices
from vehicle_ray.errors import InputError
from vehicle_ray.sample_data import write_sample_data


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    write_sample_data(out, train=12, test=0, size=32, seed=1)
    return out


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reads_seed_layout(small):
    data = read_labeled_csv(small / "train.csv", small / "images")
    assert len(data.items) == 12
    assert data.classes == ["0", "1"]
    assert data.root.is_local and data.root.full_name("1000.jpg").endswith("/images/1000.jpg")


def test_columns_by_name_and_index(small, tmp_path):
    csv = write(tmp_path, "kind,file\ncar,1000.jpg\nambulance,1001.jpg\n")
    by_name = read_labeled_csv(csv, small / "images", fn_col="file", label_col="kind")
    by_index = read_labeled_csv(csv, small / "images", fn_col=1, label_col=0)
    assert by_name.items.equals(by_index.items)
    assert by_name.classes == ["ambulance", "car"]


def test_any_number_of_classes_and_label_types(small, tmp_path):
    csv = write(tmp_path, "f,l\n1000.jpg,3\n1001.jpg,1.5\n1002.jpg,x\n")
    assert read_labeled_csv(csv, small / "images").classes == ["1.5", "3", "x"]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "CSV file not found"),
        ("", "cannot read CSV"),
        ("image_names,emergency_or_not\n", "has no rows"),
        ('a,b\n"unterminated,1\n', "cannot read CSV"),
        ("image_names\n1000.jpg\n", "label column index 1 is out of range"),
        ("image_names,emergency_or_not\n1000.jpg,1\n1001.jpg,1\n", "single class"),
        ("image_names,emergency_or_not\n1000.jpg,1\n1000.jpg,0\n", "duplicate file names in"),
        ("image_names,emergency_or_not\n../x.jpg,1\n1001.jpg,0\n", "escape the image root: ../x.jpg"),
        ("image_names,emergency_or_not\n/etc/passwd,1\n1001.jpg,0\n", "escape the image root: /etc/passwd"),
        ("image_names,emergency_or_not\n1000.jpg,1\nnope1.jpg,0\nnope2.jpg,0\n", "2 of 3 images listed in"),
        ("image_names,emergency_or_not\n1000.jpg,\n1001.jpg,0\n", "empty label"),
        ("image_names,emergency_or_not\n,1\n1001.jpg,0\n", "empty file name"),
    ],
)
def test_validation_errors(small, tmp_path, text, message):
    csv = tmp_path / "missing.csv" if text is None else write(tmp_path, text)
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_labeled_csv(csv, small / "images")


def test_missing_column_by_name(small):
    with pytest.raises(InputError, match="label column 'kind' not in"):
        read_labeled_csv(small / "train.csv", small / "images", label_col="kind")


def test_missing_image_root(small, tmp_path):
    with pytest.raises(InputError, match="image directory not found"):
        read_labeled_csv(small / "train.csv", tmp_path / "nowhere")


def test_missing_files_are_counted_and_quoted(small, tmp_path):
    rows = "".join(f"gone{i}.jpg,{i % 2}\n" for i in range(8))
    csv = write(tmp_path, "image_names,emergency_or_not\n" + rows)
    with pytest.raises(InputError, match=r"8 of 8 images .* gone0.jpg, .*\(and 3 more\)"):
        read_labeled_csv(csv, small / "images")


def test_split_is_deterministic_and_disjoint():
    a_train, a_valid = split_indices(100, 0.2, seed=42)
    b_train, b_valid = split_indices(100, 0.2, seed=42)
    c_train, c_valid = split_indices(100, 0.2, seed=43)
    assert np.array_equal(a_valid, b_valid) and np.array_equal(a_train, b_train)
    assert not np.array_equal(a_valid, c_valid)
    assert len(a_valid) == 20 and len(a_train) == 80
    assert sorted(np.concatenate([a_train, a_valid]).tolist()) == list(range(100))


@pytest.mark.parametrize("pct", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(pct):
    with pytest.raises(InputError, match="--valid-pct"):
        split_indices(10, pct, seed=0)


def test_class_missing_from_training_split(small, tmp_path):
    csv = write(tmp_path, "f,l\n1000.jpg,a\n1001.jpg,a\n1002.jpg,a\n1003.jpg,b\n")
    data = read_labeled_csv(csv, small / "images")
    train_idx = np.array([0, 1, 2])
    with pytest.raises(InputError, match="classes b have no training images"):
        check_split(data, train_idx)


@pytest.mark.parametrize(
    "csv_text, message",
    [
        ("image_names,emergency_or_not\n1000.jpg,1\n1000.jpg,0\n", "duplicate file names"),
        ("image_names,emergency_or_not\n../../etc/passwd,1\n1001.jpg,0\n", "escape the image root"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(small, tmp_path, csv_text, message):
    csv = write(tmp_path, csv_text)
    r = run_cli(
        "train",
        "--csv",
        str(csv),
        "--images",
        str(small / "images"),
        "--out",
        str(tmp_path / "m"),
        "--config",
        "tiny_cpu",
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_later_csvs_override_labels_and_add_names(small, tmp_path):
    first = write(tmp_path, "image_names,emergency_or_not\n1000.jpg,0\n1001.jpg,1\n1002.jpg,0\n", "first.csv")
    second = write(tmp_path, "fn,label\n1001.jpg,0\n1003.jpg,1\n", "second.csv")
    data = read_labeled_csv([first, second], small / "images")
    assert dict(zip(data.items["fn"], data.items["label"], strict=True)) == {
        "1000.jpg": "0",
        "1001.jpg": "0",  # the later file wins
        "1002.jpg": "0",
        "1003.jpg": "1",
    }
    assert data.classes == ["0", "1"]


def test_each_csv_is_validated_on_its_own(small, tmp_path):
    first = write(tmp_path, "image_names,emergency_or_not\n1000.jpg,0\n1001.jpg,1\n", "first.csv")
    dup = write(tmp_path, "fn,label\n1002.jpg,0\n1002.jpg,1\n", "dup.csv")
    with pytest.raises(InputError, match=r"duplicate file names in .*dup\.csv"):
        read_labeled_csv([first, dup], small / "images")
    narrow = write(tmp_path, "fn\n1002.jpg\n", "narrow.csv")
    with pytest.raises(InputError, match=r"label column index 1 is out of range: .*narrow\.csv"):
        read_labeled_csv([first, narrow], small / "images")


def test_cli_second_csv_with_bad_rows_is_one_line_exit_2(small, tmp_path):
    extra = write(tmp_path, "fn,label\n1002.jpg,\n", "extra.csv")
    r = run_cli(
        "train",
        "--csv",
        str(small / "train.csv"),
        "--csv",
        str(extra),
        "--images",
        str(small / "images"),
        "--out",
        str(tmp_path / "m"),
        "--config",
        "tiny_cpu",
    )
    assert r.returncode == 2, r.stderr
    assert "extra.csv have an empty label" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
