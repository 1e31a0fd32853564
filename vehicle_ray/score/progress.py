"""Progress of a scoring run for people and for logs.

A nightly run logs to `ray job logs`, cron mail or the journal, where Ray Data's own non-TTY progress
(a 14-line block every 10 s) would drown everything else. Scoring turns that off (VEHICLE_RAY_DATA_PROGRESS=1
brings it back for debugging) and reports itself: one line per interval outside a terminal, a tqdm
bar on one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 30.0
DATA_PROGRESS_ENV = "VEHICLE_RAY_DATA_PROGRESS"


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 165 -> '2m45s', 9.5 -> '10s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def progress_line(done: int, total: int, errors: int, chunks: int, elapsed: float) -> str:
    """One self-contained line: files done/total, percent, rate, errors, chunks committed, ETA."""
    rate = done / elapsed if elapsed > 0 else 0.0
    percent = 100.0 * done / total if total else 100.0
    eta = duration((total - done) / rate) if rate > 0 and done < total else ("0s" if done >= total else "?")
    return (
        f"progress {done}/{total} files ({percent:.1f}%), {rate:.1f} images/s, {errors} errors, "
        f"{chunks} chunk{'s' if chunks != 1 else ''} committed, ETA {eta}"
    )


class Progress:
    """Call `update` as rows arrive; it prints at most once per `interval` (always on `close`)."""

    def __init__(
        self,
        total: int,
        interval: float = DEFAULT_INTERVAL_S,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.interval, self.clock = total, interval, clock
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.start = self.last = clock()
        self.state = (0, 0, 0)
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, file=sys.stdout)

    def update(self, done: int, errors: int, chunks: int) -> None:
        previous, self.state = self.state[0], (done, errors, chunks)
        if self.bar is not None:
            self.bar.update(done - previous)
            self.bar.set_postfix(errors=errors, chunks=chunks, refresh=False)
            return
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            logger.info(progress_line(done, self.total, errors, chunks, now - self.start))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        done, errors, chunks = self.state
        logger.info(progress_line(done, self.total, errors, chunks, self.clock() - self.start))
