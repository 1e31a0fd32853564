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


class Timeline:
    """Where a run's seconds go, for summary.json's `timings`: named points since the run started, the
    first and last rows to reach the driver, and the time spent committing. Start-up (everything
    before the first rows) and the steady state (first to last rows) are reported apart, because a
    nightly dump's throughput is the steady state's, while a small run's wall time is mostly start-up."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.marks: dict[str, float] = {}
        self.first_rows = self.last_rows = 0
        self.commit_seconds = 0.0

    def mark(self, name: str) -> None:
        """Seconds since the start at the point `name` (the first time it is reached)."""
        self.marks.setdefault(name, self.clock() - self.start)

    def rows(self, done: int) -> None:
        """`done` rows have reached the driver so far."""
        if "first_rows" not in self.marks:
            self.mark("first_rows")
            self.first_rows = done
        self.marks["last_rows"] = self.clock() - self.start
        self.last_rows = done

    def add_commit(self, seconds: float) -> None:
        self.commit_seconds += seconds

    def as_dict(self) -> dict[str, float | None]:
        """Seconds since the start at each point, `commit_s`, `steady_s` (first to last rows) and
        `steady_images_per_second` (rows after the first batch over that span; None without one)."""
        out: dict[str, float | None] = {f"{k}_s": round(v, 3) for k, v in self.marks.items()}
        out["commit_s"] = round(self.commit_seconds, 3)
        steady = self.marks.get("last_rows", 0.0) - self.marks.get("first_rows", 0.0)
        out["steady_s"] = round(steady, 3)
        rows = self.last_rows - self.first_rows
        out["steady_images_per_second"] = round(rows / steady, 2) if steady > 0 and rows > 0 else None
        return out
