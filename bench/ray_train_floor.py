"""The floor under `vehicle-ray train`'s fixed part: Ray Train itself with nothing to train.

The same embedded cluster as `vehicle-ray train` (vehicle_ray.cluster.init_ray), then a TorchTrainer
with N CPU workers whose train function only reports once: Ray's start, the Train controller and its
helper actors, the worker actors, the gloo process group, one report, the shutdown. No fastai, no
data, no checkpoint. bench_train.py times this whole process beside the two trainings, so that the
fixed part vehicle-ray adds on top of Ray Train (its own imports, learner, final validation, artifact,
publish) is measured apart from what any Ray Train job pays on this machine.

    ray_train_floor.py WORKERS STORAGE_DIR
"""

import sys

import ray.train
from ray.train import RunConfig, ScalingConfig

from vehicle_ray.cluster import init_ray


def report_once(config: dict) -> None:
    ray.train.report({"done": 1})


def main(workers: int, storage: str) -> None:
    resources = init_ray()
    from ray.train.torch import TorchTrainer

    cpus = max(1, int(resources["CPU"]) // workers)  # what `vehicle-ray train` asks for on one node
    TorchTrainer(
        report_once,
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name="floor", storage_path=storage),
    ).fit()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
