"""The package logger. Library code logs through `logging.getLogger(__name__)` (under "vehicle_ray")
and never prints or touches the root logger; entry points (the CLI, and the processes Ray starts for
us: Train workers and the Train controller) call `use_cli_logging` so that those lines reach the user
as plain lines on stdout, exactly as the CLI always showed them."""

from __future__ import annotations

import logging
import sys

PACKAGE = "vehicle_ray"


class _StdoutHandler(logging.StreamHandler):
    """Marks our handler, so that configuring twice does not print every line twice."""


def use_cli_logging(level: int = logging.INFO) -> None:
    """Plain `message` lines on stdout for the package logger (idempotent; leaves the root logger alone)."""
    log = logging.getLogger(PACKAGE)
    if not any(isinstance(h, _StdoutHandler) for h in log.handlers):
        handler = _StdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
