"""A training worker's device settings come from the plan (--gpu, its CPU share, its GPU's capability),
never from a GPU being visible; what `use_hardware` adds, `plain_fp32` takes off before export."""

import pytest
import torch

from tests.train.tiny import tiny_split
from vehicle_ray.train.config import TrainOptions, forwarded_env
from vehicle_ray.train.driver import cpus_per_worker
from vehicle_ray.train.hardware import WorkerHardware, plain_fp32, use_hardware, worker_hardware
from vehicle_ray.train.learner import build_dataloaders, build_learner


def test_cpu_workers_keep_single_process_loading_and_fp32():
    assert worker_hardware(False, threads=8) == WorkerHardware("cpu", "fp32", 0, False, False, False)
    assert worker_hardware(False, threads=8, loader_workers=2).loader_workers == 2


@pytest.mark.parametrize(
    "capability, precision", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_gpu_workers_get_precision_by_capability_and_loaders_from_their_cpus(capability, precision):
    hw = worker_hardware(True, threads=8, capability=capability)
    assert hw == WorkerHardware("cuda", precision, 7, True, True, True)
    assert worker_hardware(True, threads=1, capability=capability).loader_workers == 0
    assert worker_hardware(True, threads=8, capability=capability, loader_workers=3).loader_workers == 3


def test_gpu_worker_cpus_come_from_the_gpu_nodes_and_cpu_workers_fit_one_node():
    gpu, cpu = (
        TrainOptions(csv="c", images="i", out="o", workers=2, use_gpu=True),
        TrainOptions(csv="c", images="i", out="o", workers=2),
    )
    head, gpu_node, big_cpu_node = {"CPU": 16}, {"CPU": 8, "GPU": 1}, {"CPU": 32}
    # a share of all CPUs (56 / 2 = 28) would not fit the 8-CPU GPU nodes: Ray Train would wait forever;
    # one CPU of each GPU node stays out of the request (cluster.GPU_NODE_FREE_CPUS)
    assert cpus_per_worker(gpu, [head, gpu_node, gpu_node, big_cpu_node]) == 7
    assert cpus_per_worker(gpu, [head, {"CPU": 48, "GPU": 4}, gpu_node]) == 7  # the smallest share per GPU
    assert cpus_per_worker(gpu, [head]) == 3  # no GPU node up yet (autoscaling): the documented default
    assert cpus_per_worker(cpu, [{"CPU": 4}, {"CPU": 4}, {"CPU": 4}, {"CPU": 4}]) == 4  # 16 / 2 = 8 > one node
    assert cpus_per_worker(cpu, [{"CPU": 16}, {"CPU": 16}]) == 16


def test_only_nccl_settings_are_forwarded_to_the_workers():
    env = {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "INFO", "PATH": "/bin", "MY_NCCL": "x"}
    assert forwarded_env(env) == (("NCCL_DEBUG", "INFO"), ("NCCL_SOCKET_IFNAME", "eth0"))


@pytest.fixture(scope="module")
def data_and_recipe(tmp_path_factory):
    return tiny_split(tmp_path_factory.mktemp("hw"), train=20, seed=3)


def test_normalize_stats_stay_on_the_cpu_when_a_gpu_is_visible(data_and_recipe, monkeypatch):
    """A --cpu worker on a GPU node: fastai's Normalize.from_stats would put its stats on cuda:0 (on this
    CPU-only torch that call fails outright), opening a CUDA context on a GPU it never reserved."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dls = build_dataloaders(*data_and_recipe, device=torch.device("cpu"))
    normalize = dls.after_batch.fs[-1]
    assert type(normalize).__name__ == "Normalize"
    assert normalize.mean.device.type == normalize.std.device.type == "cpu"
    assert dls.device.type == "cpu"


def test_gpu_settings_are_undone_before_export(data_and_recipe):
    """plain_fp32 drops the AMP and channels_last callbacks and brings the weights back to the default
    layout, the one export.pkl and CPU scoring get. (Applied here on the CPU: the callbacks act at fit time.)"""
    data, recipe, valid_idx = data_and_recipe
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    use_hardware(learn, WorkerHardware("cuda", "bf16", 0, True, True, True))
    assert hasattr(learn, "mixed_precision") and hasattr(learn, "channels_last")
    assert learn.mixed_precision.amp_mode.value == "bf16"
    learn.model.to(memory_format=torch.channels_last)  # what ChannelsLast.before_fit does
    conv = learn.model[0][0].weight
    assert not conv.is_contiguous()
    plain_fp32(learn)
    assert not hasattr(learn, "mixed_precision") and not hasattr(learn, "channels_last")
    assert all(p.is_contiguous() for p in learn.model.parameters())
