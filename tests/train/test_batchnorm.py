"""Global-batch BatchNorm: two gloo ranks, each with half of a batch, train exactly as one process with
the whole batch (outputs, gradients after DDP's average, running statistics); torch's per-rank layers
do not."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vehicle_ray.train.batchnorm import per_rank_batchnorm, synced_batchnorm

WORLD = 2


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.Linear(6, 2),
    )


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g) * 3 + 1, torch.randint(0, 2, (8,), generator=g)


def one_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output, every gradient and buffer after one training forward + backward."""
    net.train()
    out = net(x)
    nn.functional.cross_entropy(out, y).backward()
    plain = net.module if isinstance(net, DistributedDataParallel) else net
    grads = {f"grad.{k}": p.grad for k, p in plain.named_parameters()}
    return {"out": out.detach(), **grads, **{f"buffer.{k}": b for k, b in plain.named_buffers()}}


def rank_step(rank: int, store: str, synced: bool, result: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    net = model()
    if synced:
        assert synced_batchnorm(net) == 2
    x, y = batch()
    half = slice(rank * 4, rank * 4 + 4)
    got = one_step(DistributedDataParallel(net), x[half], y[half])
    outs = [torch.zeros_like(got["out"]) for _ in range(WORLD)]
    dist.all_gather(outs, got["out"])
    if rank == 0:
        assert per_rank_batchnorm(net) == (2 if synced else 0)
        torch.save({**got, "out": torch.cat(outs), "classes": [type(m) for m in net.modules()]}, result)
    dist.destroy_process_group()


def two_ranks(tmp_path, synced: bool) -> dict:
    result = tmp_path / f"synced{synced}.pt"
    mp.spawn(rank_step, args=(str(tmp_path / f"store{synced}"), synced, str(result)), nprocs=WORLD)
    return torch.load(result, weights_only=False)


@pytest.mark.slow  # two spawned interpreters importing torch: ~5 s
def test_two_ranks_with_global_batch_statistics_train_as_one_process(tmp_path):
    x, y = batch()
    one = one_step(model(), x, y)
    synced = two_ranks(tmp_path, synced=True)
    for key, expected in one.items():
        torch.testing.assert_close(synced[key], expected, rtol=1e-4, atol=1e-5, msg=key)
    assert set(synced["classes"]) & {nn.BatchNorm1d, nn.BatchNorm2d} == {nn.BatchNorm1d, nn.BatchNorm2d}
    # torch's per-rank layers normalise each half with its own statistics: another function
    per_rank = two_ranks(tmp_path, synced=False)
    assert not torch.allclose(per_rank["out"], one["out"], atol=1e-3)
    assert not torch.allclose(per_rank["grad.0.weight"], one["grad.0.weight"], atol=1e-3)


def test_outside_a_process_group_the_layers_are_torchs():
    """lr_find, validation and one worker: no group, or eval mode, take torch's own forward."""
    net, reference = model(), model()
    synced_batchnorm(net)
    x, _ = batch()
    torch.testing.assert_close(net.train()(x), reference.train()(x))
    torch.testing.assert_close(net.eval()(x), reference.eval()(x))
    torch.testing.assert_close(net.state_dict(), reference.state_dict())
