"""Connecting to Ray: an existing cluster (RAY_ADDRESS, or inside `ray job submit`) or a local one."""

from __future__ import annotations

import os

import ray


def init_ray(num_cpus: int | None = None) -> dict[str, float]:
    """ray.init() that connects to RAY_ADDRESS when set and otherwise starts an embedded single-node
    cluster; returns the cluster's resources. Idempotent within a process."""
    if not ray.is_initialized():
        kwargs = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": num_cpus}
        ray.init(logging_level="ERROR", log_to_driver=True, configure_logging=True, **kwargs)
    return ray.cluster_resources()
