"""The output lease on a local directory: one holder, waiting, stale take-over, lost-lease detection."""

import json
import socket
import subprocess
import sys
import time

import pytest

from vehicle_ray.errors import TryLater
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


def test_stale_heartbeat_is_taken_over(tmp_path):
    _write_lease(tmp_path / LEASE_FILE, "another-host:1", heartbeat=time.time() - 500, ttl=60)
    with Lease(backend(tmp_path), "run-b") as lease:
        lease.acquire()
        assert json.loads((tmp_path / LEASE_FILE).read_text())["run_id"] == "run-b"


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
    with pytest.raises(RuntimeError, match="not been confirmed"):
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
    with pytest.raises(RuntimeError, match="taken over"):
        lease.check()
    lease.release()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["holder"] == "thief:1"  # not deleted by the loser
