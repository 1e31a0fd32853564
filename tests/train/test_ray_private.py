"""The private Ray Train names of train/ray_private.py still exist and mean what train relies on: a Ray
upgrade that moves one fails here, naming it, instead of in a training run."""

import logging
from pathlib import Path

import ray

from vehicle_ray.train import ray_private


def test_the_private_names_are_where_ray_private_says():
    assert ray.__version__.startswith(ray_private.CHECKED_WITH_RAY.rsplit(".", 1)[0]), (
        f"ray {ray.__version__}: recheck vehicle_ray/train/ray_private.py (checked with {ray_private.CHECKED_WITH_RAY})"
    )
    assert isinstance(ray_private.WORKER_GROUP_START_TIMEOUT_ENV, str) and ray_private.WORKER_GROUP_START_TIMEOUT_ENV
    assert all(issubclass(e, Exception) for e in ray_private.RESOURCE_WAIT_FAILURES)
    assert Path(ray_private.REPORT_LOGGER_NAME).is_file()


def test_the_report_line_comes_from_the_named_logger():
    """The "Reporting training result" line is logged by a logger named by its module's file path."""
    source = Path(ray_private.REPORT_LOGGER_NAME).read_text()
    assert "logging.getLogger(__file__)" in source and "Reporting training result" in source
    assert logging.getLogger(ray_private.REPORT_LOGGER_NAME).name == ray_private.REPORT_LOGGER_NAME
