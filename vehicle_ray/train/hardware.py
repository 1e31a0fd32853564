"""How a training worker uses its device: decided once from the plan (--gpu, the worker's CPU share), as
data, so the choices are testable on a CPU machine and recorded in model.json as what ran.

On a GPU, ResNet50 @ 299 px in mixed precision consumes several hundred to thousands of images/s, far
more than one Python thread decodes and resizes: the DataLoader gets worker processes from the worker's
CPU share (one CPU stays with the training process, which runs fastai's batch transforms on the GPU),
pinned memory for asynchronous copies, channels_last (tensor cores want NHWC convolutions) and
cudnn.benchmark (the input size is fixed, so the autotuned kernels are reused every batch).
On the CPU none of that pays: the training process already uses every CPU of its share for the
convolutions (torch threads), so the defaults keep single-process loading (num_workers=0).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from vehicle_ray.device import gpu_precision

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SHM = "/dev/shm"
# Batches each DataLoader worker keeps ready: fastai's _FakeLoader.prefetch_factor (torch's own default).
LOADER_PREFETCH = 2
# Batches in /dev/shm beyond the prefetched ones, measured with the seed recipe's fastai DataLoader on CPU: peaks
# of 6, 8 and 10 batches with 1, 2 and 3 workers (a plain torch DataLoader: 3 and 7 with 1 and 3). On a GPU the
# batch leaves /dev/shm as soon as it is copied to the device, so this is an upper bound there.
LOADER_HELD_BATCHES = 4


@dataclass(frozen=True)
class WorkerHardware:
    device: str  # "cpu" or "cuda": the plan's, never what the process can see
    precision: str  # "fp32" on the CPU; "bf16" or "fp16" mixed precision on a GPU, by capability
    loader_workers: int  # DataLoader worker processes (0: load in the training process)
    pin_memory: bool
    channels_last: bool
    cudnn_benchmark: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_hardware(
    use_gpu: bool, threads: int, capability: tuple[int, int] | None = None, loader_workers: int | None = None
) -> WorkerHardware:
    """The settings of one training worker. `threads`: its CPU share; `capability`: its GPU's compute
    capability (None on the CPU); `loader_workers`: --loader-workers (None: the default above)."""
    if not use_gpu:
        return WorkerHardware("cpu", "fp32", loader_workers or 0, False, False, False)
    if capability is None:
        raise ValueError("a GPU worker needs its GPU's compute capability")
    workers = max(0, threads - 1) if loader_workers is None else loader_workers
    return WorkerHardware("cuda", gpu_precision(capability), workers, True, True, True)


def loader_batch_bytes(bs: int, size: int) -> int:
    """Shared memory one batch takes on its way from a loader worker: `bs` uint8 RGB images of `size` px
    (the item transforms end at the resize; the float conversion and augmentation are batch transforms,
    run later in the training process). The seed recipe's 64 images at 299 px: 17.2 MB."""
    return bs * 3 * size * size


def loader_shm_bytes(workers: int, batch_bytes: int) -> int:
    """/dev/shm that `workers` DataLoader workers fill at most: LOADER_PREFETCH batches each, plus the
    LOADER_HELD_BATCHES the training process holds."""
    return (workers * LOADER_PREFETCH + LOADER_HELD_BATCHES) * batch_bytes if workers else 0


def loader_workers_for_shm(workers: int, batch_bytes: int, free_bytes: int) -> int:
    """The most DataLoader workers, up to `workers`, whose batches fit in `free_bytes` of /dev/shm (0:
    load in the training process, which needs none)."""
    return next((w for w in range(workers, 0, -1) if loader_shm_bytes(w, batch_bytes) <= free_bytes), 0)


def fit_shared_memory(hardware: WorkerHardware, batch_bytes: int, sharers: int = 1) -> WorkerHardware:
    """`hardware` with no more loader workers than this node's free /dev/shm holds, said in one line when
    that is fewer. `sharers`: the training processes on this node, which split it.

    Container runtimes give /dev/shm 64 MB unless the pod mounts a memory-backed emptyDir there (deploy/),
    and every batch a worker process hands over passes through it: with too little, the first epoch dies
    with a bus error or "unable to allocate shared memory". Fewer workers is the fallback because it is
    the one that works: torch's other sharing strategy, 'file_system', allocates in /dev/shm too (seen
    here with a plain torch DataLoader: 3 workers of 17.2 MB batches fail in a 64 MiB /dev/shm with either
    strategy; 1 worker fits)."""
    if hardware.loader_workers == 0 or not os.path.isdir(SHM):  # no /dev/shm (macOS): nothing to measure
        return hardware
    stat = os.statvfs(SHM)
    free = stat.f_bavail * stat.f_frsize // max(1, sharers)
    fit = loader_workers_for_shm(hardware.loader_workers, batch_bytes, free)
    if fit < hardware.loader_workers:
        need = loader_shm_bytes(hardware.loader_workers, batch_bytes)
        logger.warning(
            f"{SHM} has {free / 2**20:.0f} MiB free for this worker but {hardware.loader_workers} DataLoader "
            f"workers need {need / 2**20:.0f} MiB ({LOADER_PREFETCH} batches each of {batch_bytes / 2**20:.1f} MiB, "
            f"plus {LOADER_HELD_BATCHES}): using {fit}; mount a larger memory-backed {SHM}"
        )
        return replace(hardware, loader_workers=fit)
    return hardware


def use_hardware(learn, hardware: WorkerHardware) -> None:
    """fastai's own callbacks for what `hardware` asks: mixed precision (AMP, bf16 or fp16) and channels_last."""
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.fp16 import MixedPrecision

    if hardware.precision != "fp32":
        learn.add_cb(MixedPrecision(amp_mode=hardware.precision))
    if hardware.channels_last:
        learn.add_cb(ChannelsLast())


def plain_fp32(learn) -> None:
    """Undo `use_hardware` before export: no AMP or channels_last callback (export.pkl must load on a
    CPU-only machine without them) and the weights back in the default memory format, the layout
    export.pkl's and the checkpoint's users get on the CPU."""
    import torch
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.fp16 import MixedPrecision

    learn.remove_cbs([MixedPrecision, ChannelsLast])
    learn.model.to(memory_format=torch.contiguous_format)


def enter_device(
    use_gpu: bool, threads: int, loader_workers: int | None = None, gpu: Callable[[], torch.device] | None = None
) -> tuple[torch.device, WorkerHardware]:
    """Set this process up for the plan's device (a Train worker, the lr_find task) and return it with
    its `worker_hardware`: CPU work hides the GPUs first (`cpu_only`) and uses `threads` torch threads;
    GPU work gets `gpu()` (default cuda), whose capability picks the precision, and cudnn.benchmark."""
    import torch

    from vehicle_ray.device import cpu_only

    if use_gpu:
        device = gpu() if gpu is not None else torch.device("cuda")
        hardware = worker_hardware(True, threads, torch.cuda.get_device_capability(device), loader_workers)
    else:
        cpu_only()  # a CPU process on a GPU node sees the node's GPUs (Ray 2.60): never touch them
        torch.set_num_threads(threads)
        device, hardware = torch.device("cpu"), worker_hardware(False, threads, None, loader_workers)
    torch.backends.cudnn.benchmark = hardware.cudnn_benchmark
    return device, hardware
