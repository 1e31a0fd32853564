"""Which device a process uses, decided by the plan (--gpu, --gpus-per-actor), never by what it can see.

Ray 2.60 no longer hides a node's GPUs from tasks, actors and Train workers that reserved none
(CUDA_VISIBLE_DEVICES is left alone when zero GPUs are assigned), and fastai puts new tensors on its
default device, a visible GPU: `Normalize.from_stats(..., cuda=True)` alone creates a CUDA context on
GPU 0. So CPU work builds under `fastai_on_cpu`, and processes planned for the CPU call `cpu_only`
before anything touches CUDA. Scoring and training share these rules (and the precision rule below).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

# What `cpu_only` sets: CUDA then reports no device to this process (also to libraries that ask the
# driver directly), so nothing can allocate on a GPU another process reserved.
HIDDEN_GPUS = ""


def gpu_precision(capability: tuple[int, int]) -> str:
    """The mixed precision for a GPU from its compute capability: bf16 where the GPU runs it natively
    (>= 8.0: A100, A10, L4, H100, ...), else fp16 (T4 7.5, V100 7.0: bf16 there is emulated, far slower,
    if it runs at all). Not `torch.cuda.is_bf16_supported()`: it says True on those GPUs too (emulation
    counts)."""
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


@contextlib.contextmanager
def fastai_on_cpu() -> Iterator[None]:
    """fastai places new tensors on its default device, the GPU whenever one is visible. Build on the CPU
    inside this block, then move what was built to the planned device explicitly."""
    from fastai.torch_core import defaults

    before = defaults.use_cuda
    defaults.use_cuda = False
    try:
        yield
    finally:
        defaults.use_cuda = before


def cpu_only() -> None:
    """For a whole process planned for the CPU (a `--cpu` Train worker, the lr_find task): hide every GPU
    from it and make the CPU fastai's default device for the rest of its life. Call it first thing in the
    process, before anything initialises CUDA (CUDA reads CUDA_VISIBLE_DEVICES once, at its start)."""
    from fastai.torch_core import defaults

    os.environ["CUDA_VISIBLE_DEVICES"] = HIDDEN_GPUS
    defaults.use_cuda = False
