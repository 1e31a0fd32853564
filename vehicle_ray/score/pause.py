"""Test-only pause points: the faults that kill -9 cannot produce, made deterministic.

A writer frozen by a GC pause, a VM freeze or a suspended pod is a process that stops somewhere and
resumes later, heartbeat thread and all. With VEHICLE_RAY_TEST_PAUSE=<point>[:<n>] the process sends
itself SIGSTOP at the n-th visit (default the first) of that point; the test resumes it with SIGCONT
when it has let another run take the output over. With <point>[:<n>]@<seconds> only the calling thread
sleeps there instead (a slow step: the lease's heartbeat goes on). Unset (always, outside tests) a
point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

PAUSE_ENV = "VEHICLE_RAY_TEST_PAUSE"
BEFORE_COMMIT = "before_commit"  # after the lease check, before the chunk's commit record
IN_RECOVER = "in_recover"  # after reading the commit records, before recovery's first deletion
IN_FINISH_RUN = "in_finish_run"  # before the run record and summary.json

_visits: Counter[str] = Counter()


def pause_point(name: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    spec, _, sleep = spec.partition("@")
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _visits[name] += 1
    if _visits[name] == int(nth or 1):
        if sleep:
            time.sleep(float(sleep))
        else:
            os.kill(os.getpid(), signal.SIGSTOP)
