"""The fastai ↔ Ray Train glue, exercised without a Ray cluster: sharding and per-epoch reporting."""

import json
import random
import shutil
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (fit_one_cycle)
import numpy as np
import pytest
import torch
import torch.distributed as dist
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fasttransform import Pipeline
from torch.nn.parallel import DistributedDataParallel

from tests.train.tiny import tiny_split
from vehicle_ray.train.callback import DataParallel, InjectedFailure, RayTrainReport
from vehicle_ray.train.checkpoint_state import STATE_FILE, WEIGHTS_FILE, Position, checkpoint_due, read_checkpoint
from vehicle_ray.train.collectives import merge_metric_states, metric_state
from vehicle_ray.train.learner import build_dataloaders, build_learner
from vehicle_ray.train.sharding import EpochShard, rank_rows, sharded_train_dl, sharded_valid_dl


@pytest.mark.parametrize("n, world", [(10, 3), (12, 4), (7, 1), (5, 2)])
def test_shards_are_disjoint_cover_everything_and_equal_in_length(n, world):
    shards = [EpochShard(n=n, rank=r, world_size=world, seed=7, stage=1, epoch=3)() for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of batches on every rank, or DDP hangs
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))
    assert len(flat) - n == (-n) % world  # only the padding repeats
    again = [EpochShard(n=n, rank=r, world_size=world, seed=7, stage=1, epoch=3)() for r in range(world)]
    assert shards == again  # every rank computes the same permutation on its own


@pytest.mark.parametrize("n", [96, 103, 127])
@pytest.mark.parametrize("world", [2, 4])
def test_every_step_the_ranks_batches_together_are_one_processs_batch(n, world):
    """With the global batch split over the ranks (training drops the last partial batch), step k's
    batches of all ranks hold exactly the images of one process's step k (same seed, stage, epoch), and
    there are as many steps: N workers train on one process's batches."""
    bs, per_rank = 16, 16 // world

    def shard(rank: int, world_size: int, batch: int) -> list[int]:
        return EpochShard(n=n, rank=rank, world_size=world_size, seed=5, epoch=2, full_batches_of=batch)()

    one = shard(0, 1, bs)
    shards = [shard(r, world, per_rank) for r in range(world)]
    assert len(one) == n // bs * bs and {len(s) for s in shards} == {n // bs * per_rank}
    for step in range(n // bs):
        together = sorted(i for s in shards for i in s[step * per_rank : (step + 1) * per_rank])
        assert together == sorted(one[step * bs : (step + 1) * bs]), step


def test_each_epoch_reshuffles():
    a = EpochShard(n=50, rank=0, world_size=2, seed=1, epoch=0)()
    b = EpochShard(n=50, rank=0, world_size=2, seed=1, epoch=1)()
    assert a != b and len(a) == len(b) == 25


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_split(tmp_path_factory.mktemp("tiny"), train=40, seed=4, bs=8)


@pytest.fixture(scope="module")
def tiny(tiny_data):
    data, recipe, valid_idx = tiny_data
    return build_dataloaders(data, recipe, valid_idx), recipe


def test_sharded_loader_iterates_its_shard_only(tiny):
    dls, _ = tiny
    sharded = sharded_train_dl(dls.train, rank=1, world_size=2, seed=3)
    assert len(sharded) == (len(dls.train.dataset) // 2) // dls.train.bs
    assert sum(len(b[0]) for b in sharded) == len(sharded) * dls.train.bs


def test_loader_worker_processes_give_the_same_shard_batches(tiny, tiny_data):
    """--loader-workers: fastai's worker processes decode the same items in the same order (the batch
    transforms, the random ones included, run in the training process)."""
    dls, _ = tiny
    data, recipe, valid_idx = tiny_data
    with_workers = build_dataloaders(data, recipe, valid_idx, num_workers=1)
    one, two = (sharded_train_dl(d.train, rank=1, world_size=2, seed=3) for d in (dls, with_workers))
    assert two.fake_l.num_workers == 1
    one.after_batch = two.after_batch = Pipeline(one.after_batch.fs[:1])  # IntToFloatTensor only
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.fixture(scope="module")
def tiny_learner(tmp_path_factory):
    """An untrained tiny learner with every kind of metric a recipe can name (AvgMetric, AccumMetric)."""
    metrics = ("accuracy", "error_rate", "f1_macro")
    data, recipe, valid_idx = tiny_split(tmp_path_factory.mktemp("valid"), train=60, seed=5, bs=4, metrics=metrics)
    return build_learner(build_dataloaders(data, recipe, valid_idx), recipe, None)


@pytest.mark.parametrize("world", [2, 3, 13])  # 13 ranks for 12 validation images: one slice is empty
def test_merged_validation_slices_give_the_metrics_of_the_whole_set(tiny_learner, world):
    """What ShardedValidation merges after each rank validated its slice (loss, accuracy, error rate, F1)
    is what one process reports for the whole validation set: nothing lost, doubled or misweighted
    (the slices are uneven for 3 ranks, the last batches partial)."""
    learn = tiny_learner
    n = len(learn.dls.valid.dataset)
    whole = [float(v) for v in learn.validate()]
    metrics = [learn.recorder.loss, *learn.metrics]
    states = []
    for rank in range(world):
        part = sharded_valid_dl(learn.dls.valid, rank, world)
        assert sum(len(y) for _, y in part) == len(rank_rows(n, rank, world))
        learn.validate(dl=part)
        states.append([metric_state(m) for m in metrics])
    for i, metric in enumerate(metrics):
        merge_metric_states(metric, [s[i] for s in states])
    assert n == 12 and len(whole) == 4
    assert [float(m.value) for m in metrics] == pytest.approx(whole, rel=1e-4, abs=1e-6)


def test_a_validation_slice_keeps_its_metric_values_on_its_rank(tiny_learner, monkeypatch):
    """Ray Train sets WORLD_SIZE, and fastai's metrics then all-gather every batch's values over the
    ranks (Learner.to_detach: a collective per batch; here, with no process group, an error); on a
    validation slice they stay on the rank."""
    learn = tiny_learner
    monkeypatch.setenv("WORLD_SIZE", "2")
    x = torch.arange(3.0)
    learn.dl = learn.dls.valid
    with pytest.raises(ValueError, match="process group"):
        learn.to_detach(x)
    learn.dl = sharded_valid_dl(learn.dls.valid, 1, 2)
    assert torch.equal(learn.to_detach(x), x)


def test_a_metric_that_cannot_be_merged_is_refused():
    from fastai.learner import AvgSmoothLoss

    with pytest.raises(TypeError, match="cannot merge"):
        metric_state(AvgSmoothLoss())


@pytest.mark.parametrize(
    "done, every, stage_end, due",
    [(1, 1, False, True), (1, 2, False, False), (2, 2, False, True), (3, 2, True, True), (5, 3, False, False)],
)
def test_checkpoint_schedule(done, every, stage_end, due):
    assert checkpoint_due(done, every, stage_end) is due


def test_callbacks_report_every_epoch_checkpoint_on_schedule_and_skip_resumed_epochs(tiny, tmp_path):
    dls, recipe = tiny
    learn = build_learner(dls, recipe)
    reports = []

    def report(metrics, checkpoint_dir):
        if checkpoint_dir is None:
            reports.append((metrics, None, None))
            return
        files = sorted(p.name for p in Path(checkpoint_dir).iterdir())
        state = json.loads((Path(checkpoint_dir) / STATE_FILE).read_text())
        shutil.copytree(checkpoint_dir, tmp_path / str(metrics["epoch"]))
        reports.append((metrics, files, state))

    position = Position()
    cbs = [
        DataParallel(stage=0, world_size=1, device=dls.device),
        RayTrainReport(0, 0, skip_to=1, position=position, report=report, checkpoint_every=2, with_opt=False),
    ]
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(4, 1e-3, start_epoch=1, cbs=cbs)
    assert [m["epoch"] for m, _, _ in reports] == [2, 3, 4]  # epoch 1 was skipped (resumed past it)
    # every 2 epochs done (epoch 3 is the second this run did) and at the stage end; none after epoch 2
    assert [files is not None for _, files, _ in reports] == [False, True, True]
    metrics, files, state = reports[-1]
    assert files == sorted([STATE_FILE, WEIGHTS_FILE])
    assert state["epoch"] == 4 and len(state["history"]) == 3 and state["with_opt"] is False
    assert {"train_loss", "valid_loss", "accuracy", "error_rate", "lr", "seconds"} <= set(metrics)
    assert np.isfinite(metrics["valid_loss"])
    assert "opt" not in torch.load(tmp_path / "4" / WEIGHTS_FILE, weights_only=False)  # --no-optimizer-state
    fresh = build_learner(dls, recipe)
    fresh.create_opt()
    restored = read_checkpoint(tmp_path / "3", fresh, dls.device)
    assert (restored.stage, restored.epoch, len(restored.history)) == (0, 3, 2)


def test_data_parallel_fits_to_the_weights_of_a_plain_fit(tiny, tmp_path):
    """DDP over a 1-rank gloo group averages nothing, so a fit through DataParallel (gradients as views
    into DDP's all-reduce buckets, fastai's zero_grad kept off `detach_()`, which PyTorch refuses on such
    views) ends at the weights of the same fit without it, and leaves the plain model and optimizer."""
    dls, recipe = tiny
    ordered = DataLoaders(dls.train.new(shuffle=False), dls.valid)

    def fit(cbs: list) -> Learner:
        random.seed(0)
        torch.manual_seed(0)
        learn = build_learner(ordered, recipe)
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(1, 1e-3, cbs=cbs)
        return learn

    plain = fit([])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = fit([DataParallel(stage=0, world_size=2, device=dls.device)])
    finally:
        dist.destroy_process_group()
    assert not isinstance(wrapped.model, DistributedDataParallel) and "zero_grad" not in vars(wrapped.opt)
    for (name, a), b in zip(plain.model.state_dict().items(), wrapped.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_the_injected_failure_happens_once_per_run(tmp_path, monkeypatch):
    """A restarted worker group that reaches the same epoch again (no checkpoint registered yet) must
    train on: a second injected death would exhaust --max-failures 1 and fail the resume tests."""

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr("vehicle_ray.train.callback.os._exit", exit_)
    marker = str(tmp_path / "failed")
    position = Position(history=[{"epoch": 1}, {"epoch": 2}])
    InjectedFailure(3, marker, position, rank=1).after_epoch()  # not its epoch: nothing happens
    with pytest.raises(SystemExit):
        InjectedFailure(2, marker, position, rank=1).after_epoch()  # the first worker group dies
    InjectedFailure(2, marker, position, rank=1).after_epoch()  # the restarted one returns
    assert (tmp_path / "failed").exists()
