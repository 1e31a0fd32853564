"""Training's DataLoader workers hand their batches over through /dev/shm: with too little of it (a container
runtime's 64 MB) training uses as many loader workers as fit and says so in one line, instead of dying in the
first epoch with "unable to allocate shared memory"."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vehicle_ray.sample_data import write_sample_data
from vehicle_ray.train.hardware import (
    LOADER_PREFETCH,
    SHM,
    fit_shared_memory,
    loader_batch_bytes,
    loader_shm_bytes,
    loader_workers_for_shm,
    worker_hardware,
)

ROOT = Path(__file__).resolve().parents[2]
SEED_BATCH = loader_batch_bytes(64, 299)  # the seed recipe's batch: 64 images at 299 px
MIB = 2**20


def test_a_batch_and_what_loader_workers_hold_in_shared_memory():
    assert SEED_BATCH == 17_164_992
    assert loader_shm_bytes(0, SEED_BATCH) == 0
    assert loader_shm_bytes(3, SEED_BATCH) == 10 * SEED_BATCH  # 2 in flight per worker + 4 held by fastai


def test_prefetch_is_fastais():
    from fastai.data.load import _FakeLoader

    assert _FakeLoader.prefetch_factor == LOADER_PREFETCH


@pytest.mark.parametrize(
    "free_mib, workers",
    [(1024, 3), (164, 3), (163, 2), (131, 2), (130, 1), (99, 1), (98, 0), (64, 0)],  # 1, 2, 3 need 98.2, 131, 163.7 MiB
)
def test_loader_workers_are_cut_to_what_dev_shm_holds(free_mib, workers):
    assert loader_workers_for_shm(3, SEED_BATCH, free_mib * MIB) == workers
    assert loader_workers_for_shm(0, SEED_BATCH, free_mib * MIB) == 0


@pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm here")
def test_fit_shared_memory_reads_this_machines_dev_shm():
    stat = os.statvfs(SHM)
    free = stat.f_bavail * stat.f_frsize
    hardware = worker_hardware(False, threads=4, loader_workers=3)
    assert fit_shared_memory(hardware, batch_bytes=1) == hardware
    # one worker needs 3 batches of `free` bytes: none fits, loading moves into the training process
    assert fit_shared_memory(hardware, batch_bytes=free).loader_workers == 0
    assert fit_shared_memory(worker_hardware(False, threads=4), batch_bytes=free).loader_workers == 0  # none asked


# Real fastai DataLoaders (build_dataloaders) of the seed recipe at half its batch size (half the time), 15
# batches of 32 images at 299 px (8.6 MB), with 3 loader workers: in a container's default 64 MiB /dev/shm,
# room for 1 worker's batches (49 MiB), not for 2 (66 MiB) or 3 (82 MiB).
LOAD_EPOCH = """
import sys
from pathlib import Path
from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.log import use_cli_logging
from vehicle_ray.recipe import load_recipe
from vehicle_ray.train.hardware import fit_shared_memory, loader_batch_bytes, worker_hardware
from vehicle_ray.train.learner import build_dataloaders

use_cli_logging()
data_dir, fit = Path(sys.argv[1]), sys.argv[2] == "fit"
recipe = load_recipe("emergency_vehicles").with_overrides(bs=32)
data = read_labeled_csv(data_dir / "train.csv", data_dir / "images")
_, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
hardware = worker_hardware(False, threads=4, loader_workers=3)
if fit:
    hardware = fit_shared_memory(hardware, loader_batch_bytes(recipe.bs, recipe.size))
dls = build_dataloaders(data, recipe, valid_idx, num_workers=hardware.loader_workers)
print(f"loaded {sum(1 for _ in dls.train)} batches with {hardware.loader_workers} loader workers")
"""


def in_small_shm(*args: str) -> subprocess.CompletedProcess:
    """Run python with `args` where /dev/shm is a 64 MiB tmpfs (a container's default), private to it."""
    command = " ".join([f"mount -t tmpfs -o size=64m tmpfs {SHM} &&", "exec", sys.executable, *args])
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_training_loads_with_fewer_workers_in_a_small_dev_shm(tmp_path):
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    write_sample_data(tmp_path, train=600, test=0, size=32, seed=0)  # 480 training images: 15 batches
    script = tmp_path / "load_epoch.py"
    script.write_text(LOAD_EPOCH)

    unchecked = in_small_shm(str(script), str(tmp_path), "as-asked")
    assert unchecked.returncode != 0, unchecked.stdout  # the failure this guards against happens here
    assert "shared memory" in unchecked.stderr or "Bus error" in unchecked.stderr, unchecked.stderr[-3000:]

    checked = in_small_shm(str(script), str(tmp_path), "fit")
    assert checked.returncode == 0, checked.stderr[-3000:]
    lines = checked.stdout.splitlines()
    said = [line for line in lines if line.startswith(f"{SHM} has ")]
    assert len(said) == 1, checked.stdout
    assert "3 DataLoader workers need 82 MiB" in said[0] and "using 1;" in said[0], said[0]
    assert lines[-1] == "loaded 15 batches with 1 loader workers"
