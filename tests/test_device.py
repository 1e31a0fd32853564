"""A process planned for the CPU hides the GPUs it may see and makes the CPU fastai's default device."""

import os

import torch
from fastai.torch_core import default_device, defaults

from vehicle_ray.device import HIDDEN_GPUS, cpu_only, fastai_on_cpu


def test_cpu_only_hides_gpus_and_points_fastai_at_the_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(defaults, "use_cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    cpu_only()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == HIDDEN_GPUS
    assert default_device() == torch.device("cpu")


def test_fastai_on_cpu_is_scoped(monkeypatch):
    monkeypatch.setattr(defaults, "use_cuda", None)
    with fastai_on_cpu():
        assert defaults.use_cuda is False
    assert defaults.use_cuda is None
