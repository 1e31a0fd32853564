"""What GPU training workers and the GPU lr_find task ask for (cluster.cpus_per_gpu): never every CPU of a
GPU node, so a job driver or a scoring run holding one CPU there cannot keep them from placing (issue #26)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cluster_script
from vehicle_ray.cluster import DEFAULT_CPUS_PER_GPU, GPU_NODE_FREE_CPUS, cpus_per_gpu
from vehicle_ray.train.lr_find import task_resources


@pytest.mark.parametrize(
    "node, share",
    [({"CPU": 16, "GPU": 1}, 15), ({"CPU": 4, "GPU": 1}, 3), ({"CPU": 96, "GPU": 8}, 11), ({"CPU": 12, "GPU": 2}, 5)],
)
def test_gpu_workers_leave_each_gpu_node_a_cpu(node, share):
    assert cpus_per_gpu([{"CPU": 8}, node]) == share  # the CPU-only node's CPUs never count
    assert node["GPU"] * share <= node["CPU"] - GPU_NODE_FREE_CPUS  # every GPU busy, a CPU still free


def test_gpu_share_is_at_least_one_cpu_and_defaults_while_no_gpu_node_is_up():
    assert cpus_per_gpu([{"CPU": 8, "GPU": 8}]) == 1  # nothing to spare there: one CPU per worker anyway
    assert cpus_per_gpu([{"CPU": 16}]) == DEFAULT_CPUS_PER_GPU == 4 - GPU_NODE_FREE_CPUS  # a 4-vCPU GPU node


def test_lr_find_task_asks_for_a_gpu_workers_share_or_a_whole_cpu_node():
    nodes = [{"CPU": 8}, {"CPU": 16, "GPU": 1}]
    assert task_resources(nodes, use_gpu=True) == {"CPU": 15.0, "GPU": 1.0}
    assert task_resources(nodes, use_gpu=False) == {"CPU": 16.0}
    assert task_resources([], use_gpu=False) == {"CPU": 1.0}


# A real Ray cluster (ray.cluster_utils.Cluster) with one node of 16 CPUs and 1 GPU, both logical (this
# machine has 2 CPUs and no GPU): a 1-CPU placement group stands for the job's driver (`ray job submit
# --entrypoint-num-cpus 1`); the Train worker group and the lr_find task must still place beside it. Ray
# Train V2 places its worker group as one placement group of `resources_per_worker` bundles, which the
# driver sets to `worker_resources` (its controller asks for no CPU). Placement groups are reserved by
# the scheduler without starting a process, so nothing is trained on the fake GPU.
SIMULATED_NODE_SCRIPT = """
import json
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, remove_placement_group

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 16, "num_gpus": 1})
ray.init(address=cluster.address)
from vehicle_ray.cluster import node_resources
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import plan_resources
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import cpus_per_worker, worker_resources
from vehicle_ray.train.lr_find import task_resources


def places(bundles, timeout=3.0):
    pg = placement_group(bundles)
    ok = pg.wait(timeout_seconds=timeout)
    remove_placement_group(pg)
    return ok


driver = placement_group([{"CPU": 1}])
assert driver.wait(timeout_seconds=30), "the driver's CPU did not place"
nodes = node_resources()
opts = TrainOptions(csv="c", images="i", out="o", workers=1, use_gpu=True)
worker = worker_resources(opts, cpus_per_worker(opts, nodes))
lr_find = task_resources(nodes, use_gpu=True)
result = {
    "nodes": [{k: v for k, v in n.items() if k in ("CPU", "GPU")} for n in nodes],
    "worker": worker,
    "lr_find": lr_find,
    "worker_places_beside_driver": places([worker] * opts.workers),
    "all_cpus_places_beside_driver": places([{"CPU": 16, "GPU": 1}], timeout=1.0),
    "lr_find_places_beside_driver": places([lr_find]),
}
remove_placement_group(driver)

plan = plan_resources(ray.cluster_resources(), ScoreOptions(gpus_per_actor=1))
actor = {"CPU": plan.cpus_per_actor, "GPU": plan.gpus_per_actor}
decodes = int((16 - plan.cpus_per_actor) // plan.decode_cpus)
result |= {
    "plan": {"threads": plan.threads, "decode_cpus": plan.decode_cpus, "actor": actor},
    "decodes": decodes,
    "actor_and_decodes_place": places([actor] + [{"CPU": plan.decode_cpus}] * decodes),
    "one_more_decode_places": places([actor] + [{"CPU": plan.decode_cpus}] * (decodes + 1), timeout=1.0),
}
print("RESULT " + json.dumps(result))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_gpu_requests_place_beside_a_driver_on_a_simulated_16_cpu_1_gpu_node():
    r = run_cluster_script(SIMULATED_NODE_SCRIPT)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-3000:]
    got = json.loads(lines[0].removeprefix("RESULT "))
    assert got["nodes"] == [{"CPU": 16.0, "GPU": 1.0}]
    # train --gpu --workers 1 and lr-find --gpu: 15 CPUs and the GPU, placed while the driver holds 1 CPU
    assert got["worker"] == {"CPU": 15, "GPU": 1} and got["worker_places_beside_driver"]
    assert got["lr_find"] == {"CPU": 15.0, "GPU": 1.0} and got["lr_find_places_beside_driver"]
    assert not got["all_cpus_places_beside_driver"]  # what they asked for before: never placed
    # score --gpus-per-actor 1: the actor (1 CPU, 1 torch thread) and at most 15 one-CPU decode tasks at once
    assert got["plan"] == {"threads": 1, "decode_cpus": 1.0, "actor": {"CPU": 1.0, "GPU": 1.0}}
    assert got["decodes"] == 15 and got["actor_and_decodes_place"] and not got["one_more_decode_places"]
