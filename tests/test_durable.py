"""vehicle_ray/durable.py: the atomic local write every writer uses (the commit protocol's ordering of
syncs and renames is pinned by tests/score/test_fencing.py)."""

import os

import pytest

from vehicle_ray import durable


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with durable.atomic_writer(target) as f:
            f.write(b"half")
            raise RuntimeError("cut short")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.json"]


def test_the_new_content_replaces_the_old_under_a_named_temp(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(durable.os, "replace", lambda s, t: (renamed.append((str(s), str(t))), real_replace(s, t)))
    target = tmp_path / "summary.json"
    target.write_bytes(b"old")
    durable.atomic_write(target, b"new", tmp=f"{target}.tmp")
    assert target.read_bytes() == b"new" and renamed == [(f"{target}.tmp", str(target))]
    assert os.listdir(tmp_path) == ["summary.json"]
