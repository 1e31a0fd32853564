"""One writer per output: a lease in OUT/_lease.json with a heartbeat its holder refreshes.

Scheduled scoring fires every night whether or not last night's run has finished; two writers on one
OUT would score every file twice and one's clean-up could delete the other's staged chunks. The lease
makes the second run wait (`--wait`) or stop with TryLater (exit 75, EX_TEMPFAIL). A holder that died
stops refreshing; once its heartbeat is older than the lease's TTL, the next run takes it over.

Every change of the lease file is a compare-and-swap, so two contenders can never both win:
* local paths (and shared mounts): exclusive create (O_EXCL) for a new lease; take-over and refresh
  under a short mutex (an exclusive mkdir), checking the holder's token first;
* s3://: conditional PUTs — `If-None-Match: *` to create, `If-Match: <etag>` to refresh or take over
  (S3 has honoured both since 2024; moto too), through boto3 because pyarrow exposes neither.
Other URI schemes have no such primitive here and are refused (pass --no-lease to run anyway).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

from vehicle_ray.errors import InputError, TryLater

LEASE_FILE = "_lease.json"
DEFAULT_TTL_S = 120.0  # a heartbeat every TTL/4: a live holder is never more than ~30 s behind
MUTEX_STALE_S = 30.0  # the local mutex is held for milliseconds; older means its holder died inside

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseRecord:
    token: str
    holder: str  # host:pid, for the "held by" message
    run_id: str
    since: float
    heartbeat: float
    ttl: float
    pid_space: str = ""  # boot id + PID namespace of the holder: where its pid means something

    def stale(self, now: float) -> bool:
        """Its heartbeat is older than the TTL, or its process is gone from this very machine and PID
        namespace (a run killed here a minute ago need not be waited for; a container that shares
        the host name but not the PID namespace is not mistaken for dead)."""
        pid = int(self.holder.rpartition(":")[2])
        return now - self.heartbeat > self.ttl or (self.pid_space == pid_space() != "" and not _alive(pid))

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


class LeaseBackend(Protocol):
    """Compare-and-swap on one small file. `version` is whatever identifies the current content."""

    def read(self) -> tuple[LeaseRecord, str] | None: ...
    def create(self, record: LeaseRecord) -> bool: ...
    def swap(self, record: LeaseRecord, expected_version: str) -> bool: ...
    def delete(self, expected_version: str) -> None: ...


def pid_space() -> str:
    """This machine's boot id and this process's PID namespace ("" where /proc does not tell)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _decode(data: bytes) -> LeaseRecord:
    return LeaseRecord(**json.loads(data.decode()))


class LocalLeaseBackend:
    def __init__(self, path: Path):
        self.path, self.mutex = path, path.with_suffix(".lock")

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            record = _decode(self.path.read_bytes())
        except FileNotFoundError:
            return None
        return record, record.token + str(record.heartbeat)

    def create(self, record: LeaseRecord) -> bool:
        """Written completely under a temp name, then linked into place (atomic, fails if it exists):
        a reader never sees an empty or half-written lease."""
        tmp = self.path.with_suffix(f".{record.token}.tmp")
        tmp.write_bytes(record.encode())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def swap(self, record: LeaseRecord, expected_version: str) -> bool:
        with self._mutex():
            current = self.read()
            if current is None or current[1] != expected_version:
                return False
            tmp = self.path.with_suffix(f".{record.token}.tmp")
            tmp.write_bytes(record.encode())
            os.replace(tmp, self.path)
            return True

    def delete(self, expected_version: str) -> None:
        with self._mutex():
            current = self.read()
            if current is not None and current[1] == expected_version:
                self.path.unlink()

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """An exclusive mkdir: held for the milliseconds of one read-compare-replace."""
        deadline = time.monotonic() + 2 * MUTEX_STALE_S
        while True:
            try:
                os.mkdir(self.mutex)
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - self.mutex.stat().st_mtime > MUTEX_STALE_S:
                        os.rmdir(self.mutex)  # its holder died inside the critical section
                        continue
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lease mutex {self.mutex} stuck") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            os.rmdir(self.mutex)


class S3LeaseBackend:
    def __init__(self, bucket: str, key: str):
        import boto3  # only for s3:// outputs; honours AWS_ENDPOINT_URL like pyarrow

        self.bucket, self.key, self.client = bucket, key, boto3.client("s3")

    def _precondition_failed(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "409")

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None
        return _decode(obj["Body"].read()), obj["ETag"]

    def create(self, record: LeaseRecord) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(), IfNoneMatch="*")
        except Exception as exc:
            if self._precondition_failed(exc):
                return False
            raise
        return True

    def swap(self, record: LeaseRecord, expected_version: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(), IfMatch=expected_version)
        except Exception as exc:
            if self._precondition_failed(exc):
                return False
            raise
        return True

    def delete(self, expected_version: str) -> None:
        current = self.read()  # S3 general-purpose buckets have no conditional delete: check, then delete
        if current is not None and current[1] == expected_version:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def lease_backend(output: str, base: str, local: bool) -> LeaseBackend:
    """The backend for OUT: `base` is pyarrow's path of OUT (bucket/prefix for s3://)."""
    if local:
        return LocalLeaseBackend(Path(base) / LEASE_FILE)
    if urlparse(str(output)).scheme == "s3":
        bucket, _, prefix = base.partition("/")
        return S3LeaseBackend(bucket, f"{prefix.rstrip('/')}/{LEASE_FILE}".lstrip("/"))
    raise InputError(
        f"the overlap lease needs a local path or s3:// output, not {output}; "
        "pass --no-lease if nothing else writes to it"
    )


class Lease:
    """Held for one run: acquire (wait up to `wait` seconds), heartbeat in a thread, release.

    `check()` before each commit: a holder that lost its lease (it was frozen for longer than the TTL
    and someone took over) must stop before writing anything else."""

    def __init__(self, backend: LeaseBackend, run_id: str, ttl: float = DEFAULT_TTL_S):
        self.backend, self.ttl = backend, ttl
        now = time.time()
        self.record = LeaseRecord(
            token=uuid.uuid4().hex,
            holder=f"{socket.gethostname()}:{os.getpid()}",
            run_id=run_id,
            since=now,
            heartbeat=now,
            ttl=ttl,
            pid_space=pid_space(),
        )
        self.version: str | None = None
        self.lost: str | None = None
        self._refreshed = time.monotonic()  # the last time the store confirmed the lease is ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float = 0.0, poll: float = 2.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            held = self._try_acquire()
            if held is None:
                self._thread = threading.Thread(target=self._heartbeat, name="vehicle-ray-lease", daemon=True)
                self._thread.start()
                return
            if time.monotonic() >= deadline:
                age = time.time() - held.heartbeat
                raise TryLater(
                    f"another run holds the output (run {held.run_id} on {held.holder}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(held.since))} UTC, heartbeat "
                    f"{age:.0f}s ago); try later, or pass --wait SECONDS"
                )
            time.sleep(min(poll, max(0.1, deadline - time.monotonic())))

    def _try_acquire(self) -> LeaseRecord | None:
        """None when acquired; otherwise the live holder's record."""
        if self.backend.create(self.record):
            self.version = self._version_of_mine()
            if self.version is not None:
                return None
        current = self.backend.read()
        if current is None:  # released between our create and read: try again at once
            return self._try_acquire()
        held, version = current
        if not held.stale(time.time()):
            return held
        if self.backend.swap(self._fresh(), version):
            logger.info(
                f"took over a stale lease of run {held.run_id} on {held.holder} "
                f"(heartbeat {time.time() - held.heartbeat:.0f}s ago)"
            )
            self.version = self._version_of_mine()
            if self.version is not None:
                return None
        return self._try_acquire()  # someone else changed it first: look again

    def _fresh(self) -> LeaseRecord:
        self.record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
        return self.record

    def _version_of_mine(self) -> str | None:
        current = self.backend.read()
        return current[1] if current is not None and current[0].token == self.record.token else None

    def _heartbeat(self) -> None:
        """Refresh every TTL/4. A failed refresh (a store hiccup) is retried at the next beat; a
        refused one means someone else holds the lease now."""
        while not self._stop.wait(self.ttl / 4):
            try:
                swapped = self.version is not None and self.backend.swap(self._fresh(), self.version)
                if swapped:
                    self.version = self._version_of_mine()
                    self._refreshed = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - any store error: try again at the next beat
                logger.warning(f"could not refresh the output's lease ({type(exc).__name__}: {exc}); retrying")
                continue
            if not swapped or self.version is None:
                self.lost = "the lease was taken over by another run (this run stalled beyond its TTL)"
                logger.warning(f"lease lost: {self.lost}")
                return

    def check(self) -> None:
        """Before every commit: the lease must be ours and confirmed within half its TTL, so that a
        run that stalled (or whose heartbeat could not reach the store) never commits over a run
        that took the lease over meanwhile."""
        if self.lost:
            raise RuntimeError(f"stopping before the next commit: {self.lost}")
        if self.version is None or time.monotonic() - self._refreshed > self.ttl / 2:
            raise RuntimeError(
                "stopping before the next commit: the output's lease has not been confirmed for "
                f"{time.monotonic() - self._refreshed:.0f}s (TTL {self.ttl:g}s)"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.version is not None and not self.lost:
            self.backend.delete(self.version)
        self.version = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
