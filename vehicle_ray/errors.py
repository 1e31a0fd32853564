"""The exceptions the CLI turns into one line and a documented exit code (no traceback).

InputError means "the user gave us something we cannot use".

The CLI turns it into a one-line message and exit code 2; anything else is a bug or an environment
failure and exits 1. Schedulers get their own codes, never 1 or 2 (docs/outputs.md "Exit codes").
"""

from typing import Any

EXIT_INPUT = 2
EXIT_TRY_LATER = 75  # EX_TEMPFAIL from sysexits.h: cron/systemd/KubeRay treat it as "run again later"
EXIT_DRIFT = 3  # score --fail-on-drift: the run is committed, but its data drifted; alert, do not retry
# EX_UNAVAILABLE from sysexits.h: the cluster did not provide the CPUs/GPUs within --wait-for-resources. Not 2:
# the command was right, and a schedule retries it (the systemd unit stops retrying only on 2 and 3).
EXIT_UNAVAILABLE = 69
EXIT_LEASE_LOST = 76  # EX_PROTOCOL: another run took the output over; what this run committed before stays
EXIT_PROMOTION_REFUSED = 77  # EX_NOPERM: promote's gate kept the champion (the candidate is worse)


class InputError(Exception):
    """Bad usage or bad input: reported as one line, exit code 2, no traceback."""


class TryLater(Exception):
    """Another run holds the output: one line, exit code 75, nothing was written."""


class LeaseLost(Exception):
    """This run lost the output's lease (it stalled beyond the TTL and another run took over): one
    line, exit code 76; its later commits were refused, the next run scores what it left."""


class ResourcesUnavailable(Exception):
    """Gave up waiting for the cluster's CPUs/GPUs (--wait-for-resources): one line, exit code 69, try later
    (scoring's committed chunks stay; an --incremental rerun continues)."""


class PromotionRefused(Exception):
    """`promote` kept the champion: the candidate is worse than it by more than --max-drop on the gate's
    metric. One line, exit code 77; the comparison report is written, no alias moved, nothing published."""


class DriftAlert(Exception):
    """A committed scoring run drifted beyond --fail-on-drift: one line, exit code 3. `summary` is the
    committed run's summary (what `score` would have returned), for whoever reports the run."""

    def __init__(self, message: str, summary: Any = None):
        super().__init__(message)
        self.summary = summary
