"""Every private Ray Train name vehicle_ray relies on, in one place, checked against Ray 2.60.0 (the
range pyproject.toml pins). Ray Train's public API has no equivalent for any of them:

* WORKER_GROUP_START_TIMEOUT_ENV: how long the worker group may wait for its resources before the
  controller fails (train --wait-for-resources sets it around one fit);
* RESOURCE_WAIT_FAILURES: the controller failures that mean "the resources never came", which train
  turns into exit 69 (ResourcesUnavailable) instead of a traceback;
* REPORT_LOGGER_NAME: the logger of the "Reporting training result" line Ray Train prints on every
  report, named by its module's file path, which train_worker quiets with the rest of Ray Train's INFO.

tests/train/test_ray_private.py imports this module and checks each name, so a Ray upgrade that moves
one fails there, naming it, rather than in a training run.
"""

import ray.train.v2._internal.execution.context as _train_context
from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR as WORKER_GROUP_START_TIMEOUT_ENV
from ray.train.v2._internal.exceptions import InsufficientClusterResourcesError, WorkerGroupStartupTimeoutError

CHECKED_WITH_RAY = "2.60.0"
RESOURCE_WAIT_FAILURES = (WorkerGroupStartupTimeoutError, InsufficientClusterResourcesError)
REPORT_LOGGER_NAME = _train_context.__file__

__all__ = ["CHECKED_WITH_RAY", "REPORT_LOGGER_NAME", "RESOURCE_WAIT_FAILURES", "WORKER_GROUP_START_TIMEOUT_ENV"]
