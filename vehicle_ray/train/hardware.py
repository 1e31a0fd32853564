"""How a training worker uses its device: decided once from the plan (--gpu, the worker's CPU share), as
data, so the choices are testable on a CPU machine and recorded in model.json as what ran.

On a GPU, ResNet50 @ 299 px in mixed precision consumes several hundred to thousands of images/s, far
more than one Python thread decodes and resizes: the DataLoader gets worker processes from the worker's
CPU share (one CPU stays with the training process, which runs fastai's batch transforms on the GPU),
pinned memory for asynchronous copies, channels_last (tensor cores want NHWC convolutions) and
cudnn.benchmark (the input size is fixed, so the autotuned kernels are reused every batch).
On the CPU none of that pays: the training process already uses every CPU of its share for the
convolutions (torch threads), so the defaults keep today's single-process loading (num_workers=0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from vehicle_ray.device import gpu_precision

if TYPE_CHECKING:
    import torch


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
