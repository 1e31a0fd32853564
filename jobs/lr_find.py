"""`ray job submit -- python jobs/lr_find.py ...`: the same options as `vehicle-ray lr-find`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # an uploaded --working-dir need not pip-install

from vehicle_ray.cli import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("lr-find")
