"""The recipe's `bs` is the global batch: N workers take bs/N each and so take the optimizer steps one
process takes at bs; `--bs-per-worker` is DDP's convention; an uneven split is a one-line usage error."""

import dataclasses

import pytest
from click.testing import CliRunner

from tests.train.tiny import tiny_split
from vehicle_ray.cli import cli
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import Recipe, Stage, global_batch, per_worker_batch, scaling_record
from vehicle_ray.train.learner import build_dataloaders
from vehicle_ray.train.sharding import sharded_train_dl


@pytest.mark.parametrize("bs, workers, each", [(64, 1, 64), (64, 2, 32), (64, 4, 16), (6, 6, 1)])
def test_each_worker_takes_its_share_of_the_global_batch(bs, workers, each):
    assert per_worker_batch(bs, workers) == each


@pytest.mark.parametrize(
    "bs, workers, advice",
    [(30, 4, "--bs 32"), (2, 4, "--bs 4"), (65, 2, "--bs 64"), (10, 3, "--bs 9")],
)
def test_an_uneven_split_is_refused_with_what_to_pass(bs, workers, advice):
    with pytest.raises(InputError) as info:
        per_worker_batch(bs, workers)
    message = str(info.value)
    assert "\n" not in message and f"--bs {bs} is the global batch" in message
    assert advice in message and f"--bs-per-worker {max(1, bs // workers)}" in message
    per_worker_batch(int(advice.split()[1]), workers)  # the advice itself splits evenly


def test_bs_per_worker_is_ddps_convention_and_excludes_bs():
    assert global_batch(None, 16, 4) == 64
    assert global_batch(48, None, 4) == 48 and global_batch(None, None, 4) is None
    with pytest.raises(InputError, match="pass one"):
        global_batch(64, 16, 4)
    with pytest.raises(InputError, match="--bs-per-worker must be >= 1"):
        global_batch(None, 0, 2)


def test_model_json_record_has_both_batches_and_the_unscaled_rates():
    recipe = Recipe(bs=64, pretrained=False, stages=(Stage(epochs=1, frozen=True), Stage(3, 2e-3, 2e-4)))
    assert scaling_record(recipe, 4) == {
        "global_batch": 64,
        "per_worker_batch": 16,
        "batchnorm_batch": 64,  # statistics over the global batch (sync_bn, the default)
        "stage_lrs": [{"lr": 2e-3, "lr_min": 2e-4}],  # the frozen stage does not run from scratch
    }
    assert scaling_record(dataclasses.replace(recipe, sync_bn=False), 4)["batchnorm_batch"] == 16


@pytest.mark.parametrize("workers", [2, 4])
def test_n_workers_take_one_processs_steps_per_epoch(tmp_path, workers):
    """With the same global batch, each rank's sharded training loader yields as many batches per epoch as
    one process's loader: the one-cycle schedule has the same number of steps at any worker count."""
    data, recipe, valid_idx = tiny_split(tmp_path, train=120, seed=2, bs=8)
    one = build_dataloaders(data, recipe, valid_idx).train
    each = build_dataloaders(data, recipe, valid_idx, bs=per_worker_batch(recipe.bs, workers)).train
    shards = [sharded_train_dl(each, rank, workers, seed=1) for rank in range(workers)]
    assert len(one) == 12  # 96 training images // 8, the last partial batch dropped
    assert [len(s) for s in shards] == [len(one)] * workers
    assert sum(len(b[0]) for s in shards for b in s) == len(one) * recipe.bs


def test_train_refuses_an_uneven_split_in_one_line_before_any_work(tmp_path):
    (tmp_path / "t.csv").write_text("fn,label\na.jpg,x\n")
    args = ["train", "--csv", str(tmp_path / "t.csv"), "--images", str(tmp_path), "--out", str(tmp_path / "m")]
    for extra, expected in (
        (["--bs", "30", "--workers", "4"], "--bs 30 is the global batch, split evenly over --workers 4"),
        (["--bs", "32", "--bs-per-worker", "8"], "--bs (the global batch) and --bs-per-worker"),
        (["--config", "tiny_cpu", "--workers", "3"], "--bs 32 is the global batch"),
    ):
        r = CliRunner().invoke(cli, args + extra)
        assert r.exit_code == 2, r.output
        assert r.output.count("\n") == 1 and expected in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m").exists()
