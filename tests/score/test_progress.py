"""Progress lines for logs: the format, and one line per interval outside a terminal."""

import logging

from vehicle_ray.score.progress import Progress, Timeline, duration, progress_line


def test_line_format():
    line = progress_line(done=250, total=1000, errors=3, chunks=2, elapsed=10.0)
    assert line == "progress 250/1000 files (25.0%), 25.0 images/s, 3 errors, 2 chunks committed, ETA 30s"
    assert progress_line(1000, 1000, 0, 1, 40.0).endswith("1 chunk committed, ETA 0s")
    assert progress_line(0, 10, 0, 0, 0.0).endswith("ETA ?")


def test_durations():
    assert [duration(s) for s in (9.5, 165, 3725)] == ["10s", "2m45s", "1h02m"]


def test_one_line_per_interval_when_not_a_terminal(caplog):
    now = [0.0]
    progress = Progress(total=100, interval=30.0, tty=False, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="vehicle_ray.score.progress"):
        for step in range(1, 101):  # 100 updates over 100 s: one line per 30 s, then the closing line
            now[0] = float(step)
            progress.update(done=step, errors=0, chunks=step // 40)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # at 30 s, 60 s, 90 s, and the close
    assert lines[0].startswith("progress 30/100 files (30.0%)")
    assert lines[-1].startswith("progress 100/100 files (100.0%)") and "2 chunks committed" in lines[-1]


def test_timeline_tells_start_up_from_the_steady_state():
    now = [100.0]
    timeline = Timeline(clock=lambda: now[0])
    now[0] = 103.0
    timeline.mark("ray_ready")
    now[0] = 104.0
    timeline.mark("ray_ready")  # a point is recorded the first time it is reached
    now[0] = 110.0
    timeline.rows(64)  # the first batch: the end of start-up
    for step in range(1, 5):  # then 4 batches of 64 over 8 s
        now[0] = 110.0 + 2 * step
        timeline.rows(64 + 64 * step)
    timeline.add_commit(0.25)
    timeline.add_commit(0.5)
    assert timeline.as_dict() == {
        "ray_ready_s": 3.0,
        "first_rows_s": 10.0,
        "last_rows_s": 18.0,
        "commit_s": 0.75,
        "steady_s": 8.0,
        "steady_images_per_second": 32.0,
    }
    one_batch = Timeline(clock=lambda: 0.0)
    one_batch.rows(10)
    assert one_batch.as_dict()["steady_images_per_second"] is None
