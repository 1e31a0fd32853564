"""Where a data-parallel training step's extra time goes on this machine: one optimizer step of the
tests' recipe (resnet18 from scratch, 64 px, global batch 32) in one process on all the CPUs, against
the same step on 2 gloo ranks (16 images each, 1 thread each), with DDP's gradient all-reduce and
without it (DDP's `no_sync`), plus a bare all-reduce of the model's gradient bytes.

bench_train.py measures vehicle-ray's epochs against plain fastai's over a whole training; this script
says how much of the difference is the all-reduce that any DDP job pays (the gradients, about 45 MB
for resnet18, cross between the ranks at every step) and how much is left for vehicle-ray's own code.
Medians over STEPS steps after a warm-up.

    .venv/bin/python bench/ddp_step_cost.py [--steps 30] [--bs 32] [--size 64] [--arch resnet18]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastai.vision.learner import create_vision_model
from torch.nn.parallel import DistributedDataParallel

from vehicle_ray.network import arch_fn
from vehicle_ray.train.batchnorm import synced_batchnorm

WARMUP = 3  # steps before timing: allocator, gloo's first buffers, DDP's bucket rebuild


def model_and_batch(arch: str, bs: int, size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = create_vision_model(arch_fn(arch), n_out=2, pretrained=False)
    return model, torch.randn(bs, 3, size, size), torch.randint(0, 2, (bs,))


def step_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, sync: bool = True) -> list[float]:
    """Seconds per forward + backward + Adam step; under DDP with `sync` False, inside no_sync()."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(WARMUP + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        context = model.no_sync() if not sync else contextlib.nullcontext()
        with context:
            loss_fn(model(x), y).backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return times


def rank_main(rank: int, world: int, store_file: str, args: argparse.Namespace, out: dict) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    model, x, y = model_and_batch(args.arch, args.bs // world, args.size)
    if args.sync_bn:
        synced_batchnorm(model)
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=args.bucket_view)
    if args.compress:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, getattr(default_hooks, f"{args.compress}_compress_hook"))
    synced = step_times(ddp, x, y, args.steps, sync=True)
    unsynced = step_times(ddp, x, y, args.steps, sync=False)
    grads = torch.zeros(sum(p.numel() for p in model.parameters()))
    reduce_times = []
    for i in range(WARMUP + args.steps):
        t0 = time.perf_counter()
        dist.all_reduce(grads)
        if i >= WARMUP:
            reduce_times.append(time.perf_counter() - t0)
    if rank == 0:
        out.update(
            ddp_step_ms=statistics.median(synced) * 1000,
            ddp_no_sync_step_ms=statistics.median(unsynced) * 1000,
            bare_allreduce_ms=statistics.median(reduce_times) * 1000,
            gradient_mb=grads.numel() * 4 / 1e6,
        )
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--bs", type=int, default=32, help="the global batch")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bucket-view", action="store_true", help="DDP(gradient_as_bucket_view=True)")
    ap.add_argument("--sync-bn", action="store_true", help="BatchNorm over the global batch (vehicle-ray's default)")
    ap.add_argument("--compress", choices=["fp16", "bf16"], help="DDP's gradient compression hook")
    ap.add_argument("--train-images", type=int, default=880, help="for the per-epoch figure")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    model, x, y = model_and_batch(args.arch, args.bs, args.size)
    one = statistics.median(step_times(model, x, y, args.steps)) * 1000

    manager = mp.Manager()
    out = manager.dict()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(rank_main, args=(args.workers, os.path.join(tmp, "store"), args, out), nprocs=args.workers)
    result = {"one_process_step_ms": one, **dict(out)}
    steps = args.train_images // args.bs
    result["allreduce_share_ms"] = result["ddp_step_ms"] - result["ddp_no_sync_step_ms"]
    result["steps_per_epoch"] = steps
    result["epoch_s_over_one_process"] = (result["ddp_step_ms"] - one) * steps / 1000
    result["epoch_s_allreduce"] = result["allreduce_share_ms"] * steps / 1000
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
