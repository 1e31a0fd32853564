"""Connecting to Ray: an existing cluster (RAY_ADDRESS, or inside `ray job submit`) or a local one."""

from __future__ import annotations

import os

import ray

from vehicle_ray.errors import InputError
from vehicle_ray.location import is_uri

NO_API_SERVER = "http://127.0.0.1:9"  # the discard port: refuses at once, never a State API
# CPUs a GPU node keeps out of its GPU workers' and tasks' requests, for whatever else must place there:
# the job's driver (`ray job submit --entrypoint-num-cpus 1`), a scoring run's decode tasks. A worker that
# asked for all 16 CPUs of a 16-CPU 1-GPU node never placed beside a 1-CPU driver: training waited
# forever, lr-find's ray.get blocked (issue #26).
GPU_NODE_FREE_CPUS = 1
# CPUs per GPU worker/task while no GPU node is up to size them from (autoscaling from zero): 3 is the
# smallest common one-GPU shape (AWS g4dn/g5.xlarge, 4 vCPUs) less GPU_NODE_FREE_CPUS, and feeds two
# DataLoader workers. Larger GPU nodes are measured once they are up; or --cpus-per-worker.
DEFAULT_CPUS_PER_GPU = 3


def init_ray(num_cpus: int | None = None) -> dict[str, float]:
    """ray.init() that connects to RAY_ADDRESS when set and otherwise starts an embedded single-node
    cluster; returns the cluster's resources. Idempotent within a process.

    The embedded cluster lives for one command on one machine, so it runs without metrics collection
    (nothing scrapes it, and the raylet would otherwise wait ~5 s for the metrics agent before the
    first task), without Ray Train's metrics and node-preemption watcher (one more process, no spot
    nodes), and without a dashboard: about ten processes that take ~1.5 s to start and then wake up
    all the time, which on a small machine slows every epoch and every batch they share CPUs with.

    Its workers log Ray's own messages at the driver's level, ERROR (RAY_LOGGER_LEVEL; user code and
    Ray Train's LoggingConfig-governed logs are not affected). Otherwise Ray Train's placement-group
    cleaner would log a warning every second of training: it polls the State API, which the dashboard
    serves, to free the run's placement group should the Train controller die; here the whole
    cluster, placement groups included, ends with the driver anyway."""
    if not ray.is_initialized():
        kwargs = {}
        if not os.environ.get("RAY_ADDRESS"):
            # address="local": always a new embedded cluster. A bare ray.init() would join the latest
            # `ray start` cluster on this machine instead, whoever started it.
            kwargs = {
                "address": "local",
                "num_cpus": num_cpus,
                "include_dashboard": False,
                # No idle workers prestarted for the first driver: they would start without this job's
                # runtime_env (below), which no task or actor of ours can then use; two processes
                # importing Ray for nothing while the driver starts (seen in every `train` timeline).
                "_system_config": {"enable_metrics_collection": False, "prestart_worker_first_driver": False},
                # Ray Train's placement-group cleaner asks the State API whether the Train controller
                # still lives. Without an address it finds one on its own: RAY_ADDRESS, else the latest
                # `ray start` cluster on this machine (/tmp/ray/ray_current_cluster), i.e. possibly
                # somebody else's, where our controller does not exist; it then removed our placement
                # group and killed the training (seen with a `ray start --head` running beside us).
                # The embedded cluster has no dashboard, so its State API is an address that answers
                # nothing: the cleaner keeps waiting, and the whole cluster ends with the driver anyway.
                "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": NO_API_SERVER}},
            }
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
            os.environ.setdefault("RAY_LOGGER_LEVEL", "error")
        ray.init(logging_level="ERROR", log_to_driver=True, configure_logging=True, **kwargs)
    return ray.cluster_resources()


def alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def node_resources() -> list[dict[str, float]]:
    """The total resources of each live node: what one task, actor or Train worker can get at most."""
    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def largest_node_cpus(nodes: list[dict[str, float]]) -> int:
    """The most CPUs one task or worker can get (it cannot span nodes); 0 when no node is up."""
    return int(max((n.get("CPU", 0) for n in nodes), default=0))


def cpus_per_gpu(nodes: list[dict[str, float]]) -> int:
    """CPUs to request next to each GPU: the smallest CPUs-per-GPU share of the GPU nodes that are up
    once GPU_NODE_FREE_CPUS are set aside on each (CPU-only nodes' CPUs are of no use to a GPU worker),
    DEFAULT_CPUS_PER_GPU while none is. At least 1: a node with one CPU per GPU or fewer has none to
    spare when all its GPUs are busy."""
    shares = [int((n.get("CPU", 0) - GPU_NODE_FREE_CPUS) // n["GPU"]) for n in nodes if n.get("GPU", 0) >= 1]
    return max(1, min(shares)) if shares else DEFAULT_CPUS_PER_GPU


def require_shared_path(path: str | None, flag: str) -> None:
    """On a multi-node cluster every node must see `path`: a local path is refused, a URI is fine.

    (A local path that really is a shared mount, such as NFS, can be passed as file:///path.)"""
    if path is not None and not is_uri(path) and alive_nodes() > 1:
        raise InputError(
            f"{flag} {path} is a local path, but the Ray cluster has {alive_nodes()} nodes that cannot all see it; "
            "use a URI (s3://..., gs://...) or file:///path for a filesystem mounted on every node"
        )
