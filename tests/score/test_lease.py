"""The output lease on a local directory: one holder, waiting, stale take-over, lost-lease detection."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from vehicle_ray.errors import LeaseLost, TryLater
from vehicle_ray.score import lease as lease_module
from vehicle_ray.score.lease import LEASE_FILE, Lease, LocalLeaseBackend, pid_space


def backend(tmp_path):
    return LocalLeaseBackend(tmp_path / LEASE_FILE)


def test_second_writer_is_told_to_try_later(tmp_path):
    with Lease(backend(tmp_path), "run-a") as first:
        first.acquire()
        held = json.loads((tmp_path / LEASE_FILE).read_text())
        assert held["run_id"] == "run-a"
        with pytest.raises(TryLater, match="another run holds the output \\(run run-a"):
            Lease(backend(tmp_path), "run-b").acquire(wait=0)
    assert not (tmp_path / LEASE_FILE).exists()  # released
    with Lease(backend(tmp_path), "run-b") as lease:
        lease.acquire()
        assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-b"


def test_waiting_writer_gets_the_lease_when_it_is_released(tmp_path):
    first = Lease(backend(tmp_path), "run-a")
    first.acquire()
    release = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    second = Lease(backend(tmp_path), "run-b")
    t0 = time.monotonic()
    release.wait()
    first.release()
    second.acquire(wait=30, poll=0.1)
    assert time.monotonic() - t0 < 10
    assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-b"
    second.release()


def _write_lease(path, holder, heartbeat, ttl=120.0, space=""):
    record = {"token": "t0", "holder": holder, "run_id": "old", "since": heartbeat, "heartbeat": heartbeat, "ttl": ttl}
    path.write_text(json.dumps({**record, "pid_space": space} if space else record))


def test_a_silent_lease_is_taken_over_after_its_ttl_of_own_observation_even_without_wait(tmp_path):
    _write_lease(tmp_path / LEASE_FILE, "another-host:1", heartbeat=time.time() - 500, ttl=1.0)
    t0 = time.monotonic()
    with Lease(backend(tmp_path), "run-b") as lease:
        lease.acquire(wait=0, poll=0.1)  # looks abandoned: watched for its TTL, then taken over
        assert time.monotonic() - t0 >= 1.0
        record = json.loads((tmp_path / LEASE_FILE).read_text())
        assert record["run_id"] == "run-b" and record["fences"] == ["t0"]
        assert lease.taken_over == ("t0",)


def test_contender_with_a_skewed_clock_never_takes_a_live_lease(tmp_path, monkeypatch):
    """The holder (another process) refreshes its lease; the contender's wall clock is 10 minutes
    ahead, so every heartbeat stamp looks 10 minutes old to it. Only its own observation counts."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from vehicle_ray.score.lease import *;"
            f"l = Lease(LocalLeaseBackend(Path({str(tmp_path / LEASE_FILE)!r})), 'live', ttl=1.0); l.acquire();"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(lease_module, "wall_clock", lambda: time.time() + 600)
        t0 = time.monotonic()
        with pytest.raises(TryLater, match="run live"):
            Lease(backend(tmp_path), "run-b").acquire(wait=0, poll=0.1)
        assert time.monotonic() - t0 >= 1.0  # it did watch the "stale-looking" lease for a TTL
        assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "live"
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone now (killed: its lease stays, with no heartbeat): a dead lease is taken over,
    # after a TTL of the contender's own observation, skewed clock or not
    _write_lease(tmp_path / LEASE_FILE, "another-host:1", heartbeat=time.time(), ttl=1.0)
    t0 = time.monotonic()
    with Lease(backend(tmp_path), "run-b") as lease:
        lease.acquire(wait=0, poll=0.1)
        assert 1.0 <= time.monotonic() - t0 < 10
        assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-b"


def test_a_run_that_waited_starts_with_a_fresh_lease(tmp_path):
    """The record written at acquisition carries that moment's heartbeat, and the confirmation clock
    starts then: a run that waited longer than TTL/2 can commit at once."""
    first = Lease(backend(tmp_path), "run-a", ttl=1.0)
    first.acquire()
    second = Lease(backend(tmp_path), "run-b", ttl=1.0)
    releaser = threading.Timer(1.5, first.release)
    releaser.start()
    second.acquire(wait=10, poll=0.1)
    releaser.join()
    record = json.loads((tmp_path / LEASE_FILE).read_text())
    assert record["run_id"] == "run-b" and time.time() - record["heartbeat"] < 0.5
    assert time.time() - record["since"] < 0.5
    second.check()  # confirmed at acquisition, not when the object was built 1.5 s ago
    second.release()


def test_the_local_mutex_is_the_kernels_never_judged_stale_by_a_clock(tmp_path, monkeypatch):
    """The mutex is a POSIX record lock: a holder frozen inside keeps it (a contender waits, then
    fails loudly; it never breaks it, whatever any clock says), a holder that dies drops it at once."""
    b = backend(tmp_path)
    code = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX);"
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(b.mutex)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGSTOP)  # frozen inside the critical section
        monkeypatch.setattr(lease_module, "MUTEX_WAIT_S", 0.5)
        with pytest.raises(RuntimeError, match="held for"):
            with b._mutex():
                pass
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    with b._mutex():  # its process is gone: the kernel released the lock
        assert time.monotonic() - t0 < 0.5


def test_fresh_lease_of_another_host_is_respected(tmp_path):
    _write_lease(tmp_path / LEASE_FILE, "another-host:1", heartbeat=time.time(), ttl=60)
    with pytest.raises(TryLater, match="another-host:1"):
        Lease(backend(tmp_path), "run-b").acquire(wait=0)


def test_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"{socket.gethostname()}:{dead.pid}"
    _write_lease(tmp_path / LEASE_FILE, holder, heartbeat=time.time(), space=pid_space())
    with Lease(backend(tmp_path), "run-b") as lease:
        lease.acquire()
        assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-b"


def test_a_dead_looking_pid_in_another_pid_namespace_is_not_taken_over(tmp_path):
    """Containers on one host (--net=host) share the host name but not PIDs: wait for the TTL."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = f"{socket.gethostname()}:{dead.pid}"
    _write_lease(tmp_path / LEASE_FILE, holder, heartbeat=time.time(), space="other-boot/4026531836")
    with pytest.raises(TryLater):
        Lease(backend(tmp_path), "run-b").acquire(wait=0)


def test_a_store_hiccup_in_the_heartbeat_is_retried_but_a_silent_lease_blocks_commits(tmp_path):
    lease = Lease(backend(tmp_path), "run-a", ttl=0.4)
    lease.acquire()
    real_swap, calls = lease.backend.swap, []

    def failing_swap(record, version):
        calls.append(1)
        raise OSError("store unavailable")

    lease.backend.swap = failing_swap
    time.sleep(0.6)  # heartbeats fail, the thread keeps going, the lease is not confirmed any more
    assert len(calls) >= 2 and lease._thread.is_alive()
    with pytest.raises(LeaseLost, match="not been confirmed"):
        lease.check()
    lease.backend.swap = real_swap
    time.sleep(0.5)
    lease.check()  # confirmed again
    lease.release()


def test_heartbeat_refreshes_and_a_taken_over_lease_is_noticed(tmp_path):
    lease = Lease(backend(tmp_path), "run-a", ttl=0.4)
    lease.acquire()
    first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(0.35)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] > first
    lease.check()  # still ours
    _write_lease(tmp_path / LEASE_FILE, "thief:1", heartbeat=time.time() + 60)  # someone took it over
    deadline = time.monotonic() + 5
    while lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="took the output"):
        lease.check()
    with pytest.raises(LeaseLost):  # a run that lost its lease never ends as a success
        lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["holder"] == "thief:1"  # not deleted by the loser


def test_release_of_a_lease_taken_over_unnoticed_is_a_lost_lease(tmp_path):
    """The heartbeat has not beaten since someone took the lease over: release still finds out, so
    such a run never exits 0, and it leaves the taker's lease alone."""
    lease = Lease(backend(tmp_path), "run-a", ttl=600)
    lease.acquire()
    _write_lease(tmp_path / LEASE_FILE, "thief:1", heartbeat=time.time())
    with pytest.raises(LeaseLost):
        lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["holder"] == "thief:1"
